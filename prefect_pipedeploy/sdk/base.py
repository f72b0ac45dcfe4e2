"""What every verb group of the SDK shares: the Prefect client, and finding deployments and runs.

For: `Verbs`, the base of the verb groups: `_client()` (the one place a Prefect client is made:
the API fixed at construction, else Prefect's current settings), `_deployment(name)` and
`_flow_run(id)` with errors that say how to list what exists. Not for: any verb.
"""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    WorkPoolFilter,
    WorkPoolFilterType,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse

from prefect_pipedeploy.exceptions import (
    DeploymentNotFound,
    ExecutionNotFound,
)
from prefect_pipedeploy.settings import WORKER_TYPE

TAG = "pipedeploy"


class Verbs:
    """The state a verb group reads; `PipeDeploy` sets it."""

    api_url: str | None = None
    _api_key: str | None = None
    work_pool_name: str = ""
    data_store: str | None = None
    gateway_url: str | None = None

    def _client(self) -> PrefectClient:
        if self.api_url:
            return PrefectClient(self.api_url, api_key=self._api_key)
        return get_client()  # Prefect's ephemeral mode, when no API is configured

    def _remember_endpoint_token(self, deployment_name: str, path: str | None, token: str) -> None:
        """Keep a token this client was shown, for calls that give no `endpoint_token`."""
        known: dict[str, str] = self.__dict__.setdefault("_endpoint_tokens", {})
        known[deployment_name] = token
        if path:
            known[path] = token

    def _known_token(self, endpoint_name: str) -> str | None:
        return self.__dict__.get("_endpoint_tokens", {}).get(endpoint_name.strip("/"))

    @staticmethod
    async def _find_deployment(client: PrefectClient, name: str) -> DeploymentResponse | None:
        found = await client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])),
            work_pool_filter=pipedeploy_pools(),
            limit=2,
        )
        return found[0] if found else None

    async def _deployment(self, client: PrefectClient, name: str) -> DeploymentResponse:
        deployment = await self._find_deployment(client, name)
        if deployment is None:
            raise DeploymentNotFound(
                f"no deployment named {name!r}; list them with `pipedeploy deployment ls`"
            )
        return deployment

    @staticmethod
    async def _flow_run(client: PrefectClient, execution_id: str | UUID) -> FlowRun:
        try:
            run_id = UUID(str(execution_id))
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])), limit=1
            )
        except ValueError:
            runs = []
        if not runs:
            raise ExecutionNotFound(
                f"no execution with id {execution_id!r}; list them with `pipedeploy executions ls`"
            )
        return runs[0]


def pipedeploy_pools() -> WorkPoolFilter:
    return WorkPoolFilter(type=WorkPoolFilterType(any_=[WORKER_TYPE]))
