"""The Prefect server stopped and restarted while executions wait and run: nothing lost.

The module starts its own Prefect server (its own home and SQLite database in a temporary
directory, a free 127.0.0.1 port), so it can stop it (SIGTERM, then SIGKILL if it lingers), keep
it down for a while, and start it again on the same port and database. One worker serves the
module's pool; each test ends with the pool's ledger (tests/support/ledger.py).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.states import Scheduled
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.prefect_api.published import read_capacities
from prefect_pipedeploy.stack import (
    ChildProcess,
    free_port,
    start_prefect_server,
    wait_for_http,
)
from tests.support.eventually import eventually
from tests.support.executions import deploy, unique, wait_until_up
from tests.support.ledger import check_ledger
from tests.support.paths import PIPELINES
from tests.support.processes import (
    api_switched,
    cmdline,
    pod_processes,
    start_gateway,
    start_worker,
)

#: How long the server stays down: longer than a worker's poll and a pod's heartbeat timeout.
SERVER_DOWN_S = 12
DRAIN_GRACE_S = 5
#: A caller's patience: a gateway call must be answered well within it, server or not.
CALL_TIMEOUT_S = 20
AFTER_TIMEOUT_S = 120  # a call that waits for an execution, on a loaded machine


class RestartableServer:
    """A Prefect server of this module's own: stopped and started again on one port and DB."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.child: ChildProcess | None = None

    def start(self) -> None:
        self.child, api_url = start_prefect_server(self.home, port=self.port, ui=False)
        assert api_url == self.api_url

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within a few seconds."""
        if self.child is not None:
            self.child.stop(grace_s=5)
            self.child = None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server is stopped in the block, and started again (same port and DB) after it,
        whatever happens in it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def down_for(self, seconds: float) -> None:
        """Stop the server, keep it down `seconds`, start it again on the same port and DB."""
        with self.down():
            time.sleep(seconds)  # the outage itself: the test lets it last


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableServer]:
    server = RestartableServer(tmp_path_factory.mktemp("restartable-server"))
    server.start()
    try:
        with api_switched(server.api_url):
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pool(server: RestartableServer) -> str:
    return unique("restart")


@pytest.fixture(scope="module")
def sdk(server: RestartableServer, pool: str) -> PipeDeploy:
    return PipeDeploy(api_url=server.api_url, work_pool_name=pool)


@pytest.fixture(scope="module")
def worker(
    server: RestartableServer, pool: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChildProcess]:
    env = {
        "PREFECT_API_URL": server.api_url,
        "PREFECT_INTEGRATIONS_PIPEDEPLOY_DRAIN_GRACE_S": str(DRAIN_GRACE_S),
    }
    child = start_worker(pool, tmp_path_factory.mktemp("worker-logs"), env=env)
    yield child
    child.stop()


def start(sdk: PipeDeploy, name: str, inputs: dict) -> str:
    return sdk.run_deployment(name, inputs, wait_for_completion=False)["execution_id"]


def schedule(
    server: RestartableServer, sdk: PipeDeploy, name: str, inputs: dict, in_s: float
) -> str:
    """An execution of `name` that waits (Scheduled) until `in_s` seconds from now."""
    deployment_id = uuid.UUID(sdk.get_deployment(name)["id"])
    due = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=in_s)

    async def create() -> str:
        async with PrefectClient(server.api_url) as client:
            run = await client.create_flow_run_from_deployment(
                deployment_id, parameters=inputs, state=Scheduled(scheduled_time=due)
            )
        return str(run.id)

    return run_coro_as_sync(create())


def pods_of(worker: ChildProcess, sdk: PipeDeploy, name: str) -> list[psutil.Process]:
    deployment_id = sdk.get_deployment(name)["id"]
    return [p for p in pod_processes(worker) if deployment_id in cmdline(p)]


def status_of(sdk: PipeDeploy, execution_id: str) -> str:
    return str(sdk.get_pipeline_execution(execution_id)["status"])


def test_a_server_restart_loses_no_execution(
    server: RestartableServer, sdk: PipeDeploy, worker: ChildProcess, pool: str
) -> None:
    """Fault: the Prefect server stopped for 12 s and started again (same port, same DB) while
    an elastic execution and a pod execution ran, and others waited (one queued behind the
    pod's, others due while the server was away).

    Before: the elastic execution due while the server was away (the worker claims runs due
    within its prefetch) had its process started as the server stopped, and it crashed at once
    ("The execution's process exited with code 1": Prefect's client retries a refused
    connection only once it has connected). Held before for the runs in flight and the others
    waiting: Prefect's clients in the worker, the pod and a running execution retry. Now every
    execution succeeds, the worker lives through the outage, the same pod serves on, and new
    runs work after it."""
    elastic = deploy(sdk, "counter", max_retries=0)
    low_latency = deploy(sdk, "counter", mode="low_latency", max_retries=0)
    wait_until_up(sdk, low_latency)
    pod_pid = eventually(lambda: pod_processes(worker), 30)[0].pid
    running = [start(sdk, elastic, {"marker": "elastic-running", "sleep_s": 10})]
    eventually(lambda: status_of(sdk, running[0]), 60, until=lambda s: s == "Running")
    running.append(start(sdk, low_latency, {"marker": "pod-running", "sleep_s": 6}))
    eventually(lambda: status_of(sdk, running[1]), 30, until=lambda s: s == "Running")
    waiting = [
        start(sdk, low_latency, {"marker": "pod-queued"}),  # behind the running one
        schedule(server, sdk, elastic, {"marker": "elastic-due-while-down"}, in_s=4),
        schedule(server, sdk, low_latency, {"marker": "pod-due-while-down"}, in_s=4),
    ]
    server.down_for(SERVER_DOWN_S)
    ledger = check_ledger(pool, max_attempts=1, settle_s=120)
    ended = {str(r.id): r for r in ledger.runs}
    for execution_id in running + waiting:
        state = ended[execution_id].state
        assert state is not None and state.is_completed(), (execution_id, state)
    assert worker.alive(), worker.log_tail()
    wait_until_up(sdk, low_latency)
    assert [p.pid for p in pod_processes(worker)] == [pod_pid]  # the same pod served on
    after = [
        sdk.run_deployment(elastic, {"marker": "after"}, timeout_s=90),
        sdk.run_deployment(low_latency, {"marker": "after"}, timeout_s=90),
    ]
    assert [a["status"] for a in after] == ["Succeeded", "Succeeded"], after
    check_ledger(pool, max_attempts=1)


def test_a_pod_killed_while_the_server_is_down_ends_its_run_once_it_is_back(
    server: RestartableServer, sdk: PipeDeploy, worker: ChildProcess, pool: str
) -> None:
    """Fault: SIGKILL of a pod holding a running execution while the Prefect server is down.

    Before: the worker could not mark the run Crashed (the API refused the connection), its pod
    supervisor gave up on the pod there: the run stayed Running after the server came back, the
    pod was never re-created and the deployment's later runs waited behind the stuck one; and
    the run's temporary directory (pipedeploy-exec-*) was left behind. Now the worker ends the
    run Crashed, with the reason, once the API answers, removes the directory, and re-creates
    the pod."""
    name = deploy(sdk, "counter", mode="low_latency", max_retries=0)
    wait_until_up(sdk, name)
    victim = eventually(lambda: pods_of(worker, sdk, name), 30)[0]
    stuck = start(sdk, name, {"marker": "killed-while-down", "sleep_s": 60})
    eventually(lambda: status_of(sdk, stuck), 60, until=lambda s: s == "Running")
    with server.down():
        os.kill(victim.pid, signal.SIGKILL)
        time.sleep(SERVER_DOWN_S)  # the outage: the worker sees the pod die while the API is away
    ended = eventually(
        lambda: sdk.get_pipeline_execution(stuck),
        90,
        until=lambda e: e["status"] not in ("Pending", "Running"),
    )
    assert ended["status"] == "Error" and "SIGKILL" in ended["message"], ended
    # the killed pod could not remove the run's temporary directory: the worker did
    assert not list(Path(tempfile.gettempdir()).glob(f"pipedeploy-exec-{stuck}-*"))
    wait_until_up(sdk, name, timeout_s=90)
    after = sdk.run_deployment(name, {"marker": "after"}, timeout_s=90)
    assert after["status"] == "Succeeded" and after["outputs"]["pid"] != victim.pid, after
    assert worker.alive(), worker.log_tail()
    check_ledger(pool, max_attempts=1)


def runs_of(server: RestartableServer, deployment_id: str) -> list[str]:
    async def read() -> list[str]:
        async with PrefectClient(server.api_url) as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
        return [str(r.id) for r in runs]

    return run_coro_as_sync(read())


def test_gateway_calls_while_the_server_is_down_get_503_and_create_nothing(
    server: RestartableServer,
    sdk: PipeDeploy,
    worker: ChildProcess,
    pool: str,
    tmp_path: Path,
) -> None:
    """Fault: calls to the gateway's endpoint while the Prefect server is down (stopped for
    12 s, then started again).

    Before: a call waited on Prefect's client, which retries a refused connection for about a
    minute (2 + 4 + 8 + ... s), so callers timed out with no answer, and their executions
    were created once the server was back, for callers who had gone. Now each call is answered
    at once 503 with Retry-After and a message (never a traceback), no execution is created for
    it, and calls work again once the server is back."""
    created = sdk.create_deployment(
        f"{PIPELINES}:greet", unique("greet-restart"), execution_rule="endpoint", max_retries=0
    )
    path = f"/endpoints/{created['endpoint_url_path']}"
    headers = {"Authorization": f"EndpointToken {created['endpoint_token']}"}
    gateway, url = start_gateway("restart", [pool], tmp_path, {"PREFECT_API_URL": server.api_url})
    try:
        wait_for_http(f"{url}/health", 60, gateway)
        with httpx.Client(base_url=url, timeout=CALL_TIMEOUT_S) as http:
            first = http.post(path, headers=headers, json={"name": "before"})
            assert first.status_code == 200, first.text
            with server.down():
                answers = [
                    http.post(path, headers=headers, json={"name": f"down-{i}"}, params=params)
                    for i, params in enumerate([{}, {"wait_for_completion": "false"}, {}])
                ]
            for answer in answers:
                assert answer.status_code == 503, (answer.status_code, answer.text)
                assert int(answer.headers["Retry-After"]) > 0
                assert "Prefect API" in answer.json()["message"]
                assert "Traceback" not in answer.text
            # once the server is back, a call runs again: 200 with its result, or, when its
            # execution takes longer than the gateway waits (25 s; under load, the worker's
            # reconnection and a fresh process took over 20 s in CI), 303 to its status
            after = eventually(
                lambda: http.post(
                    path, headers=headers, json={"name": "after"}, timeout=AFTER_TIMEOUT_S
                ),
                60,
                until=lambda a: a.status_code != 503,
            )
            assert after.status_code in (200, 303), after.text
        assert "Traceback" not in gateway.log_path.read_text(errors="replace")
    finally:
        gateway.stop()
    assert len(runs_of(server, created["id"])) == 2  # before and after: none for the 503s
    check_ledger(pool, max_attempts=1)


def capacities(server: RestartableServer, pool: str) -> dict[str, int]:
    """The RAM capacities the workers of `pool` published (a worker's first round does it)."""

    async def read() -> dict[str, int]:
        async with PrefectClient(server.api_url) as client:
            return await read_capacities(client, pool)

    return run_coro_as_sync(read())


def test_a_worker_adopts_only_the_orphans_of_its_own_server(
    server: RestartableServer, tmp_path: Path
) -> None:
    """Fault: a pod process left by a dead worker of another Prefect server (another stack on
    the machine, or the server this machine used before) when a worker starts.

    Before: the worker adopted every orphaned pod on the machine: one whose deployment its own
    API did not know was taken as "a deleted deployment's", and its RAM request was held
    against this worker's capacity for as long as it ran. Now a worker adopts only processes
    started for its own API (PREFECT_API_URL in their environment)."""
    pool = unique("adopt")
    foreign = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"]
        + ["-m", "prefect_pipedeploy.engine.pod", "--deployment-id", str(uuid.uuid4())],
        env={**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        worker = start_worker(pool, tmp_path, env={"PREFECT_API_URL": server.api_url})
        try:
            # its first round looks for orphans, then publishes its capacity
            eventually(lambda: capacities(server, pool), 30)
            log = worker.log_path.read_text(errors="replace")
        finally:
            worker.stop()
    finally:
        foreign.kill()
        foreign.wait(10)
    assert f"process {foreign.pid}" not in log, log
    check_ledger(pool)
