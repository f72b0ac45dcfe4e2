"""The pool-wide RAM cap: a Prefect global concurrency limit in MiB shared by a pool's workers.

Real workers against a real Prefect server: two workers whose own capacities would allow twice
as much never hold more than the cap together, pods wait for the cap and start when it frees, a
dead worker's slots come back (at once when a worker starts on the same machine, by lease expiry
otherwise), the cap holds across a restart of the server, and with Prefect's in-memory lease
storage workers re-take their leases after a restart. The pure parts (does a request fit, who
holds a lease, the cap's view) are tests/unit/test_poolcap_rules.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import PipeDeploy, SpecError
from prefect_pipedeploy.prefect_api.published import read_status_variables
from prefect_pipedeploy.stack import ChildProcess, free_port, start_prefect_server
from tests.support.eventually import eventually
from tests.support.executions import awaiting_ram_messages, run_many, unique, wait_until_up
from tests.support.paths import PIPELINES
from tests.support.processes import cmdline, peaks_during, start_worker

MEMORY_LEASES = "prefect.server.concurrency.lease_storage.memory"


# ---- one pool, two workers, a cap of 1GiB -----------------------------------------------------

CAP = "1GiB"


@pytest.fixture(scope="module")
def workers(
    pool: str, sdk: PipeDeploy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ChildProcess]]:
    """Two workers of 1200MiB each (2400MiB together) on a pool capped at 1GiB."""
    sdk.set_pool_ram_cap(CAP)
    logs = tmp_path_factory.mktemp("worker-logs")
    children = [start_worker(pool, logs, "--ram-capacity", "1200MiB") for _ in range(2)]
    yield children
    for child in children:
        child.stop()
    sdk.set_pool_ram_cap(None)


def children_running(workers: list[ChildProcess], module: str) -> int:
    return sum(
        1
        for worker in workers
        for p in psutil.Process(worker.popen.pid).children(recursive=True)
        if module in cmdline(p)
    )


def held_mib(sdk: PipeDeploy) -> int:
    cap = sdk.get_pool_ram_cap()
    assert cap is not None
    return cap["held_mib"]


def wait_for_cap_message(sdk: PipeDeploy, name: str) -> None:
    """Wait until the deployment's pod says it waits for the pool's RAM cap."""
    eventually(
        lambda: sdk.get_deployment(name),
        30,
        until=lambda deployment: "pool's RAM cap" in (deployment["status_message"] or ""),
    )


def test_set_show_and_remove_the_cap_from_sdk_and_cli(prefect_api: str) -> None:
    pool = unique("capped")
    sdk = PipeDeploy(work_pool_name=pool)
    assert sdk.get_pool_ram_cap() is None
    shown = sdk.set_pool_ram_cap("2GiB")
    assert shown is not None
    assert (shown["ram_cap"], shown["held_mib"]) == ("2GiB", 0)
    assert shown["concurrency_limit"] == f"pipedeploy-ram-{pool}"

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "prefect_pipedeploy.cli", "pool", "ram-cap", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert '"ram_cap": "2GiB"' in cli("--pool", pool)
    assert '"ram_cap_mib": 3072' in cli("3GiB", "--pool", pool)
    assert sdk.get_pool_ram_cap()["ram_cap"] == "3GiB"  # type: ignore[index]
    assert "No RAM cap on pool" in cli("--remove", "--pool", pool)
    assert sdk.get_pool_ram_cap() is None
    with pytest.raises(SpecError, match="ram_cap: '12' is not a RAM size with a unit"):
        sdk.set_pool_ram_cap("12")


def test_request_larger_than_the_cap_is_refused_at_creation(
    sdk: PipeDeploy, workers: list[ChildProcess]
) -> None:
    # each worker could hold 1200MiB, but the pool's cap is 1GiB
    with pytest.raises(SpecError, match=r"larger than the pool's RAM cap of 1GiB"):
        sdk.create_deployment(f"{PIPELINES}:hog", unique("huge"), ram_request="1100MiB")


def test_burst_on_two_workers_never_exceeds_the_cap(
    sdk: PipeDeploy, workers: list[ChildProcess]
) -> None:
    """Alone, each worker would run two 512MiB runs at once (four in all); the cap allows two."""
    name = unique("burst")
    sdk.create_deployment(f"{PIPELINES}:hog", name, ram_request="512MiB")
    results, peak = peaks_during(
        {
            "runs": lambda: children_running(workers, "prefect_pipedeploy.engine.elastic"),
            "held": lambda: held_mib(sdk),
        },
        lambda: run_many(sdk, name, [{"mib": 32, "hold_s": 2} for _ in range(6)], delay_s=8),
    )
    assert [r["status"] for r in results] == ["Succeeded"] * 6
    assert peak == {"runs": 2, "held": 1024}, peak
    wait_for_held(sdk, 0, 15)  # every lease released once its run's process ended
    assert any(
        m.startswith("waiting for 512MiB of RAM: 1GiB of the pool's RAM cap of 1GiB held")
        for m in awaiting_ram_messages(results)
    )
    sdk.delete_deployment(name)


def test_pods_wait_for_the_cap_and_start_when_it_frees(
    sdk: PipeDeploy, workers: list[ChildProcess]
) -> None:
    """A low-latency deployment has a pod on each worker: 2 x 512MiB fill the cap."""
    first, second = unique("pod-a"), unique("pod-b")
    sdk.create_deployment(f"{PIPELINES}:counter", first, mode="low_latency", ram_request="512MiB")
    wait_until_up(sdk, first)
    wait_for_held(sdk, 1024, 30)
    # each worker publishes its own pod; the deployment shows both
    eventually(
        lambda: sdk.get_deployment(first)["pods"],
        30,
        until=lambda pods: [p["status"] for p in pods] == ["up", "up"],
    )
    pods = sdk.get_deployment(first)["pods"]
    assert len({p["worker"] for p in pods}) == 2
    sdk.create_deployment(f"{PIPELINES}:counter", second, mode="low_latency", ram_request="256MiB")
    wait_for_cap_message(sdk, second)
    assert sdk.get_deployment(second)["status"] == "creation_pending"
    assert children_running(workers, "prefect_pipedeploy.engine.pod") == 2
    first_id = uuid.UUID(sdk.get_deployment(first)["id"])
    sdk.delete_deployment(first)
    wait_until_up(sdk, second)
    wait_for_held(sdk, 512, 30)  # the second deployment's two pods, 256MiB each
    assert status_variables(first_id) == []  # a deleted deployment's pod statuses are gone
    assert sdk.run_deployment(second, {"marker": "m"}, timeout_s=60)["status"] == "Succeeded"
    sdk.delete_deployment(second)


# ---- dead holders and server restarts -----------------------------------------------------------


def wait_for_pod_of(sdk: PipeDeploy, name: str, worker: str, what: str, timeout_s: float) -> None:
    """Wait until `worker`'s pod of deployment `name` has status `what` ("up"), or a message
    containing it."""

    def of_worker(pods: list[dict]) -> bool:
        ours = [p for p in pods if p["worker"] == worker]
        return bool(ours) and (ours[0]["status"] == what or what in (ours[0]["message"] or ""))

    eventually(lambda: sdk.get_deployment(name)["pods"], timeout_s, until=of_worker)


def status_variables(deployment_id: uuid.UUID) -> list[str]:
    async def read() -> list[str]:
        async with get_client() as client:
            return [v.name for v in await read_status_variables(client, deployment_id)]

    return run_coro_as_sync(read())


def kill_worker(worker: ChildProcess) -> None:
    """SIGKILL a worker (its pods stop when their channel to it closes)."""
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait(10)
    worker.stop()


def wait_for_held(sdk: PipeDeploy, mib: int, timeout_s: float) -> None:
    """Wait until the cap's held total is `mib`."""

    def cap() -> dict:
        shown = sdk.get_pool_ram_cap()
        assert shown is not None, "the pool has no RAM cap"
        return shown

    eventually(
        cap, timeout_s, 0.5, until=lambda shown: shown["held_mib"] == mib, what=f"{mib}MiB held"
    )


def test_a_cap_set_later_counts_running_pods_and_a_dead_workers_slots_come_back(
    prefect_api: str, tmp_path: Path
) -> None:
    pool = unique("pool-dead")
    sdk = PipeDeploy(work_pool_name=pool)
    name = unique("pod")
    sdk.create_deployment(f"{PIPELINES}:counter", name, mode="low_latency", ram_request="512MiB")
    first = start_worker(pool, tmp_path)
    try:
        wait_until_up(sdk, name)
        # a cap set while the pod runs counts it (at the worker's next lease round, <= 15 s)
        sdk.set_pool_ram_cap("512MiB")
        wait_for_held(sdk, 512, 25)
        kill_worker(first)
        killed_at = time.monotonic()
        second = start_worker(pool, tmp_path)
        try:
            # the lease would expire only ~60 s after its last renewal: this is the reconciliation
            eventually(
                lambda: {
                    "pods": children_running([second], "prefect_pipedeploy.engine.pod"),
                    "log_tail": second.log_tail(),
                },
                40 - (time.monotonic() - killed_at),
                until=lambda seen: seen["pods"] == 1,
            )
            assert "left by a dead worker" in second.log_path.read_text()
            wait_for_held(sdk, 512, 10)  # the new pod's lease, not the dead one's as well
            assert sdk.run_deployment(name, {"marker": "m"}, timeout_s=60)["status"] == "Succeeded"
        finally:
            second.stop()
    finally:
        first.stop()
        sdk.delete_deployment(name)
        sdk.set_pool_ram_cap(None)


class OwnServer:
    """A Prefect server of one test, restartable on the same port and database."""

    def __init__(self, home: Path, env_overrides: dict[str, str] | None = None) -> None:
        self.home, self.port, self.env_overrides = home, free_port(), env_overrides
        self.child, self.api_url = self._start()

    def _start(self) -> tuple[ChildProcess, str]:
        return start_prefect_server(
            self.home, port=self.port, ui=False, env_overrides=self.env_overrides
        )

    def restart(self) -> None:
        self.child.stop()
        self.child, _ = self._start()


@contextlib.contextmanager
def a_pod_holding_the_cap(
    tmp_path: Path, cap: str, env_overrides: dict[str, str] | None = None
) -> Iterator[tuple[OwnServer, PipeDeploy, str, list[ChildProcess]]]:
    """Its own server, a pool capped at `cap`, and a worker whose 512MiB pod holds the cap.

    Yields the server, an SDK on the pool, the deployment's name and the list of workers (the
    test may add some); every worker and the server are stopped at the end."""
    server = OwnServer(tmp_path / "server", env_overrides)
    workers: list[ChildProcess] = []
    try:
        sdk = PipeDeploy(api_url=server.api_url, work_pool_name=unique("pool-own"))
        sdk.set_pool_ram_cap(cap)
        name = unique("pod")
        sdk.create_deployment(
            f"{PIPELINES}:counter", name, mode="low_latency", ram_request="512MiB"
        )
        workers.append(
            start_worker(
                sdk.work_pool_name, tmp_path / "a", env={"PREFECT_API_URL": server.api_url}
            )
        )
        wait_until_up(sdk, name)
        wait_for_held(sdk, 512, 30)
        yield server, sdk, name, workers
    finally:
        for worker in workers:
            worker.stop()
        server.child.stop()


def test_cap_holds_across_a_server_restart_and_dead_leases_expire(tmp_path: Path) -> None:
    """On its own server: restart it while a pod holds the cap, then let a dead lease expire."""
    with a_pod_holding_the_cap(tmp_path, "768MiB") as (server, sdk, name, workers):
        server.restart()
        assert held_mib(sdk) == 512  # the limit and its count are in the database
        time.sleep(20)  # at least one renewal on the restarted server
        assert held_mib(sdk) == 512
        assert "lost the RAM cap lease" not in workers[0].log_path.read_text()
        other = unique("pod")
        sdk.create_deployment(
            f"{PIPELINES}:counter", other, mode="low_latency", ram_request="512MiB"
        )
        wait_for_cap_message(sdk, other)
        sdk.delete_deployment(other)

        # A worker dies and none comes back on its machine: its lease expires, its slots return.
        # (the dead worker's last status, "up", stays among the deployment's pods: follow the
        # new worker's own)
        kill_worker(workers[0])
        workers.append(
            start_worker(
                sdk.work_pool_name,
                tmp_path / "b",
                "--name",
                "worker-b",
                env={
                    "PREFECT_API_URL": server.api_url,
                    "PREFECT_INTEGRATIONS_PIPEDEPLOY_HOME": str(tmp_path / "elsewhere"),
                },
            )
        )
        wait_for_pod_of(sdk, name, "worker-b", "pool's RAM cap", 30)
        assert held_mib(sdk) == 512  # the dead worker's lease, until it expires
        wait_for_pod_of(sdk, name, "worker-b", "up", 100)
        assert held_mib(sdk) == 512  # the new pod's lease


def test_after_a_restart_with_in_memory_leases_workers_retake_and_a_reset_recounts(
    tmp_path: Path,
) -> None:
    """Prefect's default lease storage forgets leases on a restart but keeps their count."""
    memory = {"PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": MEMORY_LEASES}
    with a_pod_holding_the_cap(tmp_path, "1GiB", memory) as (server, sdk, _, workers):
        server.restart()
        # the forgotten lease's 512MiB still count; the worker takes its pod's share again
        wait_for_held(sdk, 1024, 40)
        assert "lost the RAM cap lease" in workers[0].log_path.read_text()
        # removing the cap and setting it again drops the stale count; the worker re-takes
        sdk.set_pool_ram_cap(None)
        sdk.set_pool_ram_cap("1GiB")
        wait_for_held(sdk, 512, 40)
