"""The SDK's endpoint verbs, as a mixin of `PipeDeploy`: endpoint calls and endpoint tokens.

For: `trigger_endpoint` and `retrieve_endpoint_results`, which call the gateway over HTTP as
any caller would (endpoint token, 303s followed until the result), and
`generate_new_endpoint_token`, which rotates a deployment's token through the Prefect API (the
new token's hash goes into the deployment's job variables; the token is returned once). Each
verb has an async core (`atrigger_endpoint`) and a thin sync twin.
Not for: the gateway itself (`gateway`), or starting a deployment through Prefect without
the gateway (`run_deployment`, `executions`).

    from prefect_pipedeploy import PipeDeploy
    pd = PipeDeploy(gateway_url="http://127.0.0.1:8080")   # or PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_URL
    token = pd.generate_new_endpoint_token("score")["endpoint_token"]
    pd.trigger_endpoint("score", token, {"text": "hello"})  # {"execution_id": ..., "outputs": {...}}

Inputs that are files (a `pathlib.Path`, bytes, or a binary file-like object) are sent as
multipart/form-data; the other inputs then go as text fields (strings as they are, other values
as JSON), which the gateway reads back with their types. A single file output comes back as
{"<output name>": b"<its bytes>"}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin
from uuid import UUID

import anyio
import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
)
from prefect.client.schemas.responses import DeploymentResponse
from prefect.logging import get_logger
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy.exceptions import (
    DeploymentNotFound,
    EndpointCallError,
    EndpointExecutionFailed,
    GatewayUnavailable,
    PipeDeployError,
    SpecError,
)
from prefect_pipedeploy.prefect_api.deployments import read_all_deployments
from prefect_pipedeploy.prefect_api.triggers import (
    endpoint_path_of,
    ensure_endpoint_trigger,
)
from prefect_pipedeploy.sdk.base import Verbs, pipedeploy_pools
from prefect_pipedeploy.settings import env_name, get_settings
from prefect_pipedeploy.spec import (
    spec_from_job_variables,
)
from prefect_pipedeploy.tokens import hash_token, new_token

logger = get_logger("prefect_pipedeploy.sdk_gateway")


def _is_file(value: Any) -> bool:
    return isinstance(value, (os.PathLike, bytes, bytearray)) or hasattr(value, "read")


async def _file_part(name: str, value: Any) -> tuple[str, bytes]:
    """(file name, bytes) of a file input."""
    if isinstance(value, os.PathLike):
        path = Path(value)
        return path.name, await anyio.Path(path).read_bytes()
    if isinstance(value, (bytes, bytearray)):
        return name, bytes(value)
    # a binary file-like object: read in a thread, it may be a real file
    data = await anyio.to_thread.run_sync(value.read)
    if isinstance(data, str):
        data = data.encode()
    return Path(str(getattr(value, "name", name))).name or name, data


async def _request_body(inputs: dict[str, Any]) -> dict[str, Any]:
    """httpx keyword arguments sending `inputs`: JSON, or multipart when a file is among them."""
    if not any(_is_file(value) for value in inputs.values()):
        return {"json": inputs}
    files: dict[str, tuple[str, bytes, str]] = {}
    data: dict[str, str] = {}
    for name, value in inputs.items():
        if _is_file(value):
            filename, content = await _file_part(name, value)
            files[name] = (filename, content, "application/octet-stream")
        else:
            data[name] = value if isinstance(value, str) else json.dumps(value)
    return {"files": files, "data": data}


def _message_of(response: httpx.Response) -> tuple[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase, None
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or response.reason_phrase), body


async def _ensure_trigger(client: PrefectClient, deployment: DeploymentResponse) -> None:
    """The event trigger is a convenience: a server that refuses automations must not stop a
    token rotation, so a failure is logged, not raised."""
    try:
        await ensure_endpoint_trigger(client, deployment)
    except Exception as exc:
        logger.warning(
            "Could not create the event trigger of deployment %r: %s", deployment.name, exc
        )


def _chosen_token(token: str) -> str:
    """A token the caller chose (as create_deployment takes one): any text, not blank."""
    if not isinstance(token, str) or not token.strip() or token != token.strip():
        raise SpecError(
            f"endpoint_token {token!r}: give text without surrounding spaces, or none for a "
            "random token"
        )
    return token


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"EndpointToken {token}"} if token else {}


async def _endpoint_deployment(client: PrefectClient, name: str) -> DeploymentResponse:
    """The pipedeploy deployment named `name`, else the one whose endpoint path is `name`."""
    pools = pipedeploy_pools()
    found = await client.read_deployments(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])),
        work_pool_filter=pools,
        limit=1,
    )
    if found:
        return found[0]
    for deployment in await read_all_deployments(client, work_pool_filter=pools):
        if endpoint_path_of(deployment) == name.strip("/"):
            return deployment
    raise DeploymentNotFound(
        f"no deployment named {name!r}, and no endpoint at that path; list them with "
        "`pipedeploy deployment ls`"
    )


class GatewayVerbs(Verbs):
    """Endpoint verbs; mixed into `PipeDeploy`."""

    async def agenerate_new_endpoint_token(
        self, endpoint_name: str, endpoint_token: str | None = None
    ) -> dict[str, str]:
        """Rotate the endpoint token of a deployment (by name, or by endpoint path): to
        `endpoint_token` when given (the platform's way), else to a new random one.

        Returns {"deployment_name", "endpoint_url_path", "endpoint_token"}: the token is shown
        here and nowhere else; the previous one stops working (within the gateway's cache time,
        1.5 s). Also makes sure the deployment's event trigger exists (`prefect_api.triggers`), so a
        deployment made with `prefect deploy` gets both from this one call.
        """
        async with self._client() as client:
            deployment = await _endpoint_deployment(client, endpoint_name)
            path = endpoint_path_of(deployment)
            if path is None:
                spec = spec_from_job_variables(deployment.job_variables)
                raise SpecError(
                    f"deployment {deployment.name!r} is a {spec.execution_rule} deployment; only "
                    "endpoint deployments have endpoint tokens"
                )
            token = _chosen_token(endpoint_token) if endpoint_token is not None else new_token()
            job_variables = {
                **(deployment.job_variables or {}),
                "endpoint_token_hash": hash_token(token),
            }
            await client.update_deployment(
                deployment.id, DeploymentUpdate(job_variables=job_variables)
            )
            await _ensure_trigger(client, deployment)
        self._remember_endpoint_token(deployment.name, path, token)
        return {
            "deployment_name": deployment.name,
            "endpoint_url_path": path,
            "endpoint_token": token,
        }

    async def atrigger_endpoint(
        self,
        endpoint_name: str,
        endpoint_token: str | None = None,
        inputs: dict[str, Any] | None = None,
        wait_for_completion: bool = True,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Call an endpoint (its path, or its deployment's name) through the gateway.

        Returns {"execution_id", "outputs"}: the outputs once the execution succeeded (the
        gateway's 303s are followed, however long it runs, up to `timeout_s` if given), or None
        with `wait_for_completion=False`. Without `endpoint_token`, a token this client created
        or rotated is used. Raises `EndpointExecutionFailed` when the execution fails,
        `EndpointCallError` when the gateway refuses the call.
        """
        token = endpoint_token or self._known_token(endpoint_name)
        body = await _request_body(dict(inputs or {}))
        query = {} if wait_for_completion else {"wait_for_completion": "false"}
        with anyio.fail_after(timeout_s):
            async with self._http() as http:

                async def post(path: str) -> httpx.Response:
                    return await http.post(
                        f"/endpoints/{quote(path)}", params=query, headers=_auth(token), **body
                    )

                response = await self._on_path(endpoint_name, post)
                return await self._result(http, response, token)

    async def aretrieve_endpoint_results(
        self,
        endpoint_name: str,
        execution_id: str | UUID,
        endpoint_token: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """The result of an execution of an endpoint, waiting for it (303s followed): returns
        {"execution_id", "outputs"}; raises like `trigger_endpoint`."""
        token = endpoint_token or self._known_token(endpoint_name)
        with anyio.fail_after(timeout_s):
            async with self._http() as http:

                async def get(path: str) -> httpx.Response:
                    return await http.get(
                        f"/endpoints/{quote(path)}/executions/{execution_id}", headers=_auth(token)
                    )

                response = await self._on_path(endpoint_name, get)
                return await self._result(http, response, token)

    def _gateway_base_url(self) -> str:
        url = self.gateway_url or get_settings().gateway_url
        if not url:
            raise GatewayUnavailable(
                "no gateway URL: pass PipeDeploy(gateway_url='http://127.0.0.1:8080') or set "
                f"{env_name('gateway_url')}"
            )
        return url.rstrip("/")

    def _http(self) -> httpx.AsyncClient:
        # No read timeout: the gateway answers within its wait budget (a 303 after it).
        return httpx.AsyncClient(
            base_url=self._gateway_base_url(), timeout=httpx.Timeout(30.0, read=None)
        )

    async def _on_path(self, endpoint_name: str, send: Any) -> httpx.Response:
        """`send(path)` with `endpoint_name` as the endpoint path; on a 404, again with the
        endpoint path of the deployment of that name, when there is one."""
        path = endpoint_name.strip("/")
        response = await self._send(send, path)
        if response.status_code == 404:
            try:
                async with self._client() as client:
                    deployment = await _endpoint_deployment(client, endpoint_name)
                other = endpoint_path_of(deployment)
            except (PipeDeployError, httpx.HTTPError):
                other = None
            if other and other != path:
                response = await self._send(send, other)
        return response

    async def _send(self, send: Any, *args: Any, **kwargs: Any) -> httpx.Response:
        try:
            response: httpx.Response = await send(*args, **kwargs)
        except httpx.TransportError as exc:
            raise GatewayUnavailable(
                f"the gateway at {self._gateway_base_url()} cannot be reached ({exc}); start it "
                "with `pipedeploy up` or `pipedeploy gateway --pool NAME`"
            ) from exc
        return response

    async def _result(
        self, http: httpx.AsyncClient, response: httpx.Response, token: str | None
    ) -> dict[str, Any]:
        """Follow 303s to the final answer and read it."""
        while response.status_code == 303:
            location = urljoin(str(response.url), response.headers["location"])
            response = await self._send(http.get, location, headers=_auth(token))
        if response.status_code == 202:
            return {"execution_id": response.json()["execution_id"], "outputs": None}
        if response.status_code == 200:
            if response.headers.get("content-type", "").startswith("application/octet-stream"):
                name = response.headers.get("x-output-name", "result")
                return {
                    "execution_id": response.headers.get("x-execution-id"),
                    "outputs": {name: response.content},
                }
            payload = response.json()
            return {"execution_id": payload["execution_id"], "outputs": payload["outputs"]}
        message, body = _message_of(response)
        if response.status_code == 500 and isinstance(body, dict) and "execution_id" in body:
            raise EndpointExecutionFailed(
                f"execution {body['execution_id']} ended {body.get('status')}: {message}",
                str(body["execution_id"]),
                str(body.get("status")),
                body,
            )
        if response.status_code == 401 and token is None:
            message += "; pass endpoint_token=..."
        raise EndpointCallError(
            f"the gateway answered {response.status_code}: {message}", response.status_code, body
        )

    def trigger_endpoint(
        self,
        endpoint_name: str,
        endpoint_token: str | None = None,
        inputs: dict[str, Any] | None = None,
        wait_for_completion: bool = True,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        return run_coro_as_sync(
            self.atrigger_endpoint(
                endpoint_name, endpoint_token, inputs, wait_for_completion, timeout_s
            )
        )

    def retrieve_endpoint_results(
        self,
        endpoint_name: str,
        execution_id: str | UUID,
        endpoint_token: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        return run_coro_as_sync(
            self.aretrieve_endpoint_results(endpoint_name, execution_id, endpoint_token, timeout_s)
        )

    def generate_new_endpoint_token(
        self, endpoint_name: str, endpoint_token: str | None = None
    ) -> dict[str, str]:
        return run_coro_as_sync(self.agenerate_new_endpoint_token(endpoint_name, endpoint_token))
