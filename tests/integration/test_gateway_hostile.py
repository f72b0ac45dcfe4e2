"""Hostile bodies through the whole gateway: the real `Gateway` on the session's Prefect server,
driven in-process through httpx's ASGI transport. Each gets a 4xx that names the problem and,
where it is a size, the real limit; none gets a 500, and none makes an execution."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.settings import PREFECT_SERVER_API_MAX_PARAMETER_SIZE, temporary_settings

from prefect_pipedeploy import InputSource, PipeDeploy
from prefect_pipedeploy.exceptions import SpecError
from prefect_pipedeploy.gateway import create_app
from prefect_pipedeploy.gateway.service import Gateway
from tests.support.paths import PIPELINES

pytestmark = pytest.mark.anyio

DEMO = PIPELINES


@pytest.fixture(scope="module")
def endpoint(pool: str) -> dict[str, str]:
    """`greet` with a string, a number and a JSON input; no worker serves the pool, so calls
    use ?wait_for_completion=false and their executions stay Scheduled."""
    created = PipeDeploy(work_pool_name=pool).create_deployment(
        f"{DEMO}:greet",
        f"hostile-{uuid.uuid4().hex[:6]}",
        ram_request="256MiB",
        inputs_mapping=[
            InputSource(pipeline_input_name="name", endpoint_input_name="name", data_type="string"),
            InputSource(
                pipeline_input_name="times", endpoint_input_name="times", data_type="number"
            ),
            InputSource(
                pipeline_input_name="api_key",
                endpoint_input_name="extra",
                data_type="json",
                default_value=None,
            ),
        ],
        max_retries=0,
    )
    return {
        "url": f"/endpoints/{created['endpoint_url_path']}?wait_for_completion=false",
        "token": created["endpoint_token"],
        "pool": pool,
        "id": created["id"],
    }


@contextlib.asynccontextmanager
async def gateway(pool: str) -> AsyncIterator[httpx.AsyncClient]:
    async with get_client() as prefect:
        served = Gateway([pool], prefect)
        app = create_app([pool], gateway=served)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                yield http
        finally:
            await served.close()


async def executions(endpoint: dict[str, str]) -> int:
    async with get_client() as prefect:
        return await prefect.count_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[endpoint["id"]]))
        )


async def send(endpoint: dict[str, str], body: bytes) -> httpx.Response:
    """POST raw JSON bytes; the answer, checked to be no 5xx and no traceback, and no run made."""
    before = await executions(endpoint)
    async with gateway(endpoint["pool"]) as http:
        response = await http.post(
            endpoint["url"],
            content=body,
            headers={
                "Authorization": f"EndpointToken {endpoint['token']}",
                "Content-Type": "application/json",
            },
        )
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    assert await executions(endpoint) == before, "an execution was created"
    return response


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


BIG_INTEGER = "9" * 400


@pytest.mark.parametrize(
    ("body", "status", "phrases"),
    [
        # before: RecursionError, 500
        (nested(1000).encode(), 400, ("nested deeper than 100 levels",)),
        (b'{"name": "a", "times": 1, "extra": ' + nested(1000).encode() + b"}", 400, ("nested",)),
        # before: accepted; Prefect's client and server recurse through such values
        (
            b'{"name": "a", "times": 1, "extra": ' + nested(150).encode() + b"}",
            400,
            ("input 'extra'", "nested deeper than 100 levels"),
        ),
        # before: UnicodeEncodeError at run creation, 500
        (b'{"name": "\\ud800", "times": 1}', 400, ("input 'name'", "lone surrogate '\\ud800'")),
        (b'{"\\udfff": 1, "name": "a", "times": 1}', 400, ("the body has a key", "surrogate")),
        (
            b'{"name": "a", "times": 1, "extra": {"k": ["ok", "\\ud83d"]}}',
            400,
            ("input 'extra' (at 'extra'['k'][1])", "lone surrogate"),
        ),
        # before: an execution was created and failed; the caller got 500
        (b'{"name": "a", "times": 1e400}', 400, ("input 'times'", "64-bit float")),
        (b'{"name": "a", "times": -1e400}', 400, ("input 'times'", "64-bit float")),
        (
            b'{"name": "a", "times": ' + BIG_INTEGER.encode() + b"}",
            400,
            ("input 'times'", "integer of 400 digits", "64-bit float"),
        ),
        # before: Prefect's server replaced the object when it created the run: a caller read a
        # workspace variable, or had a template rendered, through any pipeline echoing an input
        (
            b'{"name": "a", "times": 1, "extra": {"__prefect_kind": "workspace_variable", '
            b'"variable_name": "team-secret"}}',
            400,
            ("input 'extra'", "'__prefect_kind', which Prefect reserves", "rename the key"),
        ),
    ],
    ids=[
        "1000 nested arrays",
        "1000 nested in an input",
        "150 nested in an input",
        "lone surrogate",
        "lone surrogate in a key",
        "lone surrogate deep inside",
        "1e400",
        "-1e400",
        "400-digit integer",
        "an object Prefect's server would hydrate",
    ],
)
async def test_hostile_values_are_refused_by_name(
    endpoint: dict[str, str], body: bytes, status: int, phrases: tuple[str, ...]
) -> None:
    """Before: 500 for deep nesting (RecursionError) and lone surrogates (UnicodeEncodeError
    when the run was created); `1e400` and a 400-digit number were accepted (202), and the
    execution made for them failed (500 for a waiting caller); 150 levels were accepted."""
    response = await send(endpoint, body)
    assert response.status_code == status, response.text
    message = response.json()["message"]
    for phrase in phrases:
        assert phrase in message, message


async def test_surrogate_pairs_and_large_finite_numbers_are_fine(endpoint: dict[str, str]) -> None:
    # `extra` feeds greet's `api_key: str`: a string (an array is now a 400, not a run that fails)
    body = json.dumps({"name": "\U0001f600 ok", "times": 1.7e308, "extra": "\U0001f600 key"})
    async with gateway(endpoint["pool"]) as http:
        response = await http.post(
            endpoint["url"],
            content=body.encode(),
            headers={"Authorization": f"EndpointToken {endpoint['token']}"},
        )
    assert response.status_code == 202, response.text


async def test_inputs_over_the_parameter_limit_get_413_with_the_real_limit(
    endpoint: dict[str, str],
) -> None:
    """Before: 400 "the pipeline refused the inputs: null" (Prefect's 422 text sat in
    `exception_detail`), while the gateway advertised a 10 MiB body limit."""
    response = await send(endpoint, json.dumps({"name": "x" * 600_000, "times": 1}).encode())
    assert response.status_code == 413, response.text
    message = response.json()["message"]
    assert "524,288 bytes" in message and "PREFECT_SERVER_API_MAX_PARAMETER_SIZE" in message
    assert "the largest is 'name'" in message and "file input" in message


async def test_the_servers_own_size_refusal_is_a_413_with_its_text(
    endpoint: dict[str, str],
) -> None:
    """When only the server knows its limit (the gateway's setting says none), its 422 is
    translated: before, the caller read "the pipeline refused the inputs: null"."""
    with temporary_settings(updates={PREFECT_SERVER_API_MAX_PARAMETER_SIZE: 0}):
        response = await send(endpoint, json.dumps({"name": "y" * 600_000, "times": 1}).encode())
    assert response.status_code == 413, response.text
    message = response.json()["message"]
    assert "must be less than 524,288 bytes" in message, message
    assert "null" not in message and "request_body" not in message


async def test_the_body_limit_message_says_the_inputs_limit_too(
    endpoint: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_MAX_BODY_BYTES", "1024")
    response = await send(endpoint, json.dumps({"name": "z" * 2000, "times": 1}).encode())
    assert response.status_code == 413
    message = response.json()["message"]
    assert "1 KiB" in message and "files included" in message and "512 KiB" in message


async def test_openapi_says_the_real_limits(endpoint: dict[str, str]) -> None:
    async with gateway(endpoint["pool"]) as http:
        document = (await http.get("/openapi.json")).json()
    path = endpoint["url"].split("?")[0]
    operation = document["paths"][path]["post"]
    assert "10 MiB, files included" in operation["description"]
    assert "512 KiB once encoded as JSON" in operation["description"]
    assert "PREFECT_SERVER_API_MAX_PARAMETER_SIZE" in operation["responses"]["413"]["description"]
    assert "GATEWAY_MAX_QUEUED" in operation["responses"]["429"]["description"]


@pytest.mark.parametrize(
    ("mapping", "phrases"),
    [
        (
            {
                "outputs_mapping": [
                    {"pipeline_output_name": "g", "datastore_path": "../escape_{execution_id}"}
                ]
            },
            ("outputs_mapping", "output 'g'", "'../escape_{execution_id}'", "`..` segment"),
        ),
        (
            {"inputs_mapping": [{"pipeline_input_name": "name", "datastore_path": "/etc/passwd"}]},
            ("inputs_mapping", "input 'name'", "'/etc/passwd'", "absolute"),
        ),
    ],
    ids=["output template leaving the store", "absolute input path"],
)
def test_creation_refuses_a_datastore_path_the_store_would_refuse(
    pool: str, mapping: dict[str, Any], phrases: tuple[str, ...]
) -> None:
    """Before: accepted at creation, then every execution failed on the key."""
    sdk = PipeDeploy(work_pool_name=pool)
    name = f"bad-key-{uuid.uuid4().hex[:6]}"
    with pytest.raises(SpecError) as caught:
        sdk.create_deployment(f"{DEMO}:greet", name, **mapping)
    for phrase in phrases:
        assert phrase in str(caught.value), str(caught.value)
    assert name not in [d["name"] for d in sdk.list_deployments()]
