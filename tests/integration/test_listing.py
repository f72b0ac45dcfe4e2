"""Listings past the first page: a pool with more deployments than one page holds."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.prefect_api.deployments import read_all_deployments
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
