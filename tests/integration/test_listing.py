"""Listings past the first page, and in the order a user reads them: deployments of a pool with more
than one page holds; executions by what ran most recently."""

from __future__ import annotations

import datetime
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
from prefect.states import Completed, Running, Scheduled, State
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.exceptions import SpecError
from prefect_pipedeploy.prefect_api.deployments import read_all_deployments
from prefect_pipedeploy.sdk import executions
from tests.support.executions import unique
from tests.support.paths import PIPELINES


def test_every_page_is_read(prefect_api: str) -> None:
    pool = unique("pool-pages")
    sdk = PipeDeploy(work_pool_name=pool)
    names = {unique("paged") for _ in range(5)}
    for name in names:
        sdk.create_deployment(f"{PIPELINES}:score", name, execution_rule="endpoint")

    async def listed(page: int) -> list[str]:
        async with get_client() as client:
            found = await read_all_deployments(
                client,
                page=page,
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
            )
        return [d.name for d in found]

    for page in (2, 5, 200):  # pages of 2 (3 reads), exactly full (2 reads), one read
        assert sorted(listed_names := run_coro_as_sync(listed(page))) == sorted(names), page
        assert len(listed_names) == 5
    for name in names:
        sdk.delete_deployment(name)


def executions_listing(sdk: PipeDeploy, name: str, **kwargs: object) -> list[str]:
    return [e["parameters"]["marker"] for e in sdk.list_pipeline_executions(name, **kwargs)]


@pytest.fixture(scope="module")
def listed_deployment(sdk: PipeDeploy) -> str:
    """A deployment with runs in every phase, made through Prefect (no worker): three that
    started (a, b, c, in that order; c still runs), two due but not started (w1 due before
    w2), and three a schedule made ahead (f1 soonest)."""
    name = unique("listing")
    sdk.create_deployment(f"{PIPELINES}:counter", name)
    deployment_id = UUID(sdk.get_deployment(name)["id"])
    now = datetime.datetime.now(datetime.timezone.utc)

    async def make() -> None:
        async with get_client() as client:

            async def run(marker: str, state: State) -> UUID:
                created = await client.create_flow_run_from_deployment(
                    deployment_id, parameters={"marker": marker}, state=state
                )
                return created.id

            for marker in ("a", "b", "c"):
                run_id = await run(marker, Scheduled(scheduled_time=now))
                await client.set_flow_run_state(run_id, Running(), force=True)
                if marker != "c":
                    await client.set_flow_run_state(run_id, Completed(), force=True)
            for marker, ago_s in (("w1", 60), ("w2", 30)):
                at = now - datetime.timedelta(seconds=ago_s)
                await run(marker, Scheduled(scheduled_time=at))
            for marker, ahead_h in (("f3", 3), ("f1", 1), ("f2", 2)):
                at = now + datetime.timedelta(hours=ahead_h)
                await run(marker, Scheduled(scheduled_time=at))

    run_coro_as_sync(make())
    return name


STARTED, WAITING, AHEAD = ["c", "b", "a"], ["w2", "w1"], ["f1", "f2", "f3"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, STARTED + WAITING),
        ({"limit": 2}, STARTED[:2]),
        ({"limit": 4}, STARTED + WAITING[:1]),
        ({"include_scheduled": True}, STARTED + WAITING + AHEAD),
        ({"include_scheduled": True, "limit": 7}, STARTED + WAITING + AHEAD[:2]),
        ({"limit": 500, "include_scheduled": True}, STARTED + WAITING + AHEAD),  # above 200
    ],
)
@pytest.mark.parametrize("page", [200, 2, 1])
def test_executions_are_listed_started_first_then_waiting_then_ahead(
    sdk: PipeDeploy,
    listed_deployment: str,
    monkeypatch: pytest.MonkeyPatch,
    page: int,
    kwargs: dict,
    expected: list[str],
) -> None:
    """Before: newest expected start first, so a schedule's future runs filled the listing and
    hid every run that ran; a limit above 200 was Prefect's 422 as a traceback."""
    monkeypatch.setattr(executions, "SERVER_PAGE", page)
    assert executions_listing(sdk, listed_deployment, **kwargs) == expected


def test_a_limit_below_one_is_refused_in_one_line(sdk: PipeDeploy, listed_deployment: str) -> None:
    with pytest.raises(SpecError, match="limit must be 1 or more, got 0"):
        sdk.list_pipeline_executions(listed_deployment, limit=0)
