"""`PipeDeploy`: the platform's verbs on a Prefect server, composed of the verb groups.

from prefect_pipedeploy import PipeDeploy
pd = PipeDeploy()                       # PREFECT_API_URL, or PipeDeploy(api_url=...)
pd.create_deployment("pipeline.py:score", "score", execution_rule="endpoint")
"""

from __future__ import annotations

import logging

from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

from prefect_pipedeploy.sdk.datastore import DataStoreVerbs
from prefect_pipedeploy.sdk.deployments import DeploymentVerbs
from prefect_pipedeploy.sdk.endpoints import GatewayVerbs
from prefect_pipedeploy.sdk.executions import ExecutionVerbs
from prefect_pipedeploy.sdk.pools import PoolVerbs
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.stack import StackRecord, find_running_stack

logger = logging.getLogger("prefect_pipedeploy.sdk")


class PipeDeploy(DeploymentVerbs, ExecutionVerbs, GatewayVerbs, DataStoreVerbs, PoolVerbs):
    """The platform's verbs on a Prefect server (PREFECT_API_URL, or `api_url`).

    `data_store` names the data store block for the data-store verbs ("<type-slug>/<name>");
    default: PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE. `gateway_url` is the endpoint
    gateway for the trigger verbs; default: PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_URL.
    With no API given or configured, a running `pipedeploy up` stack is used (`local_stack`,
    logged), with its gateway and data store where none is set; else Prefect's own rule.
    """

    def __init__(
        self,
        api_url: str | None = None,
        work_pool_name: str | None = None,
        data_store: str | None = None,
        gateway_url: str | None = None,
    ) -> None:
        settings = get_settings()
        # The API is fixed when the client is made, so every thread that uses it talks to the
        # same server (Prefect's settings context does not follow a call into a new thread).
        self.api_url = api_url or PREFECT_API_URL.value()
        self.local_stack: StackRecord | None = None
        if not self.api_url:
            self.local_stack = find_running_stack(settings.home)
        if self.local_stack is not None:
            logger.info("Using %s", self.local_stack.describe())
            self.api_url = self.local_stack.api_url
            data_store = data_store or settings.data_store or self.local_stack.data_store
            gateway_url = gateway_url or settings.gateway_url or self.local_stack.gateway_url
            if "default_pool" not in settings.model_fields_set:
                work_pool_name = work_pool_name or self.local_stack.pool
        self.data_store = data_store
        self.gateway_url = gateway_url
        self._api_key = PREFECT_API_KEY.value()
        self.work_pool_name = work_pool_name or settings.default_pool
