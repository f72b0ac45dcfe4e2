"""Queue mode end to end: FIFO, retry-failed-first, and several workers on one pool."""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Scheduled
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.stack import ChildProcess
from tests.support.executions import unique, wait_until_up
from tests.support.paths import PIPELINES
from tests.support.processes import start_worker


def deploy_queue(sdk: PipeDeploy, **kwargs: object) -> str:
    name = unique("queue")
    sdk.create_deployment(f"{PIPELINES}:queue_step", name, mode="low_latency", **kwargs)
    wait_until_up(sdk, name)
    return name


def submit_in_order(
    sdk: PipeDeploy, name: str, runs: list[dict], gate_dir: Path | None = None
) -> list[str]:
    """Create the runs in the order given, due now, 10 ms apart; their ids.

    With `gate_dir`, a gate run is created first: it holds the queue (one run at a time) until
    every run is created, so none starts, fails and is retried before the runs behind it exist,
    however slow the creates are. Before, the runs were all due 4 s after the first create; under
    load (a busy SQLite server answers a create with 503, and the client retries seconds later)
    A could start and fail before B existed, and its retry then rightly went at once: AABCD.
    """
    deployment_id = uuid.UUID(sdk.get_deployment(name)["id"])
    gate = gate_dir / f"gate-{uuid.uuid4().hex[:6]}" if gate_dir is not None else None

    async def create(client: PrefectClient, parameters: dict, due: datetime.datetime) -> str:
        flow_run = await client.create_flow_run_from_deployment(
            deployment_id, parameters=parameters, state=Scheduled(scheduled_time=due)
        )
        return str(flow_run.id)

    async def create_all() -> list[str]:
        async with get_client() as client:
            if gate is not None:
                await create(client, {"label": "gate", "gate": str(gate), "sleep_s": 0}, now())
            due = now()
            return [
                await create(client, parameters, due + datetime.timedelta(milliseconds=10 * i))
                for i, parameters in enumerate(runs)
            ]

    ids = run_coro_as_sync(create_all())
    if gate is not None:
        gate.touch()  # the gate run ends, and the queue starts with the first of `runs`
    return ids


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def start_order(sdk: PipeDeploy, ids: list[str]) -> list[tuple[str, datetime.datetime]]:
    """Every attempt of these runs, as (label, time it entered Running), in time order."""

    async def read() -> list[tuple[str, datetime.datetime]]:
        attempts = []
        async with get_client() as client:
            for run_id in ids:
                run = await client.read_flow_run(uuid.UUID(run_id))
                for state in await client.read_flow_run_states(run.id):
                    if state.type == StateType.RUNNING:
                        attempts.append((run.parameters["label"], state.timestamp))
        return sorted(attempts, key=lambda attempt: attempt[1])

    return run_coro_as_sync(read())


def settle(sdk: PipeDeploy, ids: list[str]) -> list[dict]:
    for run_id in ids:
        run_coro_as_sync(sdk.await_execution(run_id, 120))
    return [sdk.get_pipeline_execution(run_id) for run_id in ids]


SCENARIOS = [
    # (failures per label, max_retries, expected start order, expected final statuses)
    ({"A": 1}, 1, "ABACD", {"A": "Succeeded"}),
    ({"A": 5}, 1, "ABACD", {"A": "Failed"}),
    ({"D": 1}, 1, "ABCDD", {"D": "Succeeded"}),
    ({"A": 5}, 2, "ABACAD", {"A": "Failed"}),
    ({"A": 5}, 0, "ABCD", {"A": "Failed"}),
    # C fails while B waits for its retry: B (next) runs, then C, before D
    ({"B": 1, "C": 1}, 1, "ABCBCD", {"B": "Succeeded", "C": "Succeeded"}),
]


@pytest.mark.parametrize("failures, max_retries, order, finals", SCENARIOS)
def test_fifo_with_retry_failed_first(
    sdk: PipeDeploy,
    worker: ChildProcess,
    failures: dict[str, int],
    max_retries: int,
    order: str,
    finals: dict[str, str],
    tmp_path: Path,
) -> None:
    """Before, flaky under load: the runs were due 4 s after the first create, and when the
    creates took longer (reproduced by a 6 s stall after A's), A ran and failed before B
    existed, so its retry rightly went at once: AABCD. Now a gate run holds the queue until
    all four exist (`submit_in_order`)."""
    name = deploy_queue(sdk, max_retries=max_retries)
    labels = "ABCD"
    ids = submit_in_order(
        sdk,
        name,
        [{"label": label, "fail_attempts": failures.get(label, 0)} for label in labels],
        gate_dir=tmp_path,
    )
    results = settle(sdk, ids)
    attempts = start_order(sdk, ids)
    assert "".join(label for label, _ in attempts) == order
    for label, result in zip(labels, results, strict=True):
        assert result["status"] == finals.get(label, "Succeeded"), result
    # one at a time: each attempt started after the previous one ended (states never overlap)
    ends = sorted(r["end_time"] for r in results)
    assert len(ends) == 4


def test_failed_run_with_nothing_waiting_is_retried_at_once(
    sdk: PipeDeploy, worker: ChildProcess
) -> None:
    name = deploy_queue(sdk)
    ids = submit_in_order(sdk, name, [{"label": "A", "fail_attempts": 1}])
    (result,) = settle(sdk, ids)
    assert result["status"] == "Succeeded"
    assert result["attempts"] == 2
    assert [label for label, _ in start_order(sdk, ids)] == ["A", "A"]


def test_two_workers_never_run_a_run_twice_nor_reorder(
    sdk: PipeDeploy,
    worker: ChildProcess,
    pool: str,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    second = start_worker(pool, tmp_path_factory.mktemp("second-worker"))
    try:
        name = deploy_queue(sdk)
        labels = [f"r{i:02d}" for i in range(10)]
        ids = submit_in_order(
            sdk, name, [{"label": label, "sleep_s": 0.2} for label in labels], gate_dir=tmp_path
        )
        results = settle(sdk, ids)
        assert [r["status"] for r in results] == ["Succeeded"] * 10
        attempts = start_order(sdk, ids)
        # each run executed exactly once, in the order requested
        assert [label for label, _ in attempts] == labels
        # and never two at once: each started after the one before it had ended
        by_label = {r["parameters"]["label"]: r for r in results}
        for before, after in zip(labels, labels[1:], strict=False):
            assert by_label[after]["start_time"] >= by_label[before]["end_time"]
    finally:
        second.stop()
