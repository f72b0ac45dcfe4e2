"""`PipeDeploy`: the platform's verbs on a Prefect server, composed of the verb groups.

from prefect_pipedeploy import PipeDeploy
pd = PipeDeploy()                       # PREFECT_API_URL, or PipeDeploy(api_url=...)
pd.create_deployment("pipeline.py:score", "score", execution_rule="endpoint")
"""

from __future__ import annotations

from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

from prefect_pipedeploy.sdk.datastore import DataStoreVerbs
from prefect_pipedeploy.sdk.deployments import DeploymentVerbs
from prefect_pipedeploy.sdk.endpoints import GatewayVerbs
from prefect_pipedeploy.sdk.executions import ExecutionVerbs
from prefect_pipedeploy.sdk.pools import PoolVerbs
from prefect_pipedeploy.settings import get_settings


class PipeDeploy(DeploymentVerbs, ExecutionVerbs, GatewayVerbs, DataStoreVerbs, PoolVerbs):
    """The platform's verbs on a Prefect server (PREFECT_API_URL, or `api_url`).

    `data_store` names the data store block for the data-store verbs ("<type-slug>/<name>");
    default: PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE. `gateway_url` is the endpoint
    gateway for the trigger verbs; default: PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_URL.
    """

    def __init__(
        self,
        api_url: str | None = None,
        work_pool_name: str | None = None,
        data_store: str | None = None,
        gateway_url: str | None = None,
    ) -> None:
        self.data_store = data_store
        self.gateway_url = gateway_url
        # The API is fixed when the client is made, so every thread that uses it talks to the
        # same server (Prefect's settings context does not follow a call into a new thread).
        self.api_url = api_url or PREFECT_API_URL.value()
        self._api_key = PREFECT_API_KEY.value()
        self.work_pool_name = work_pool_name or get_settings().default_pool
