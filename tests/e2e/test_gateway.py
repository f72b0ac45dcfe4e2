"""The endpoint gateway end to end: real gateway processes on 127.0.0.1, a real worker, the
session's Prefect server, httpx (and curl) as the callers.

Two gateways serve the module's pool: `main` with the default settings, and `tight` with a
1 s wait budget, a 64 KiB body limit, 2 waiting executions per deployment and 3 wrong tokens
a minute; `tight` also serves a pool no worker serves, whose executions wait forever.
Every answer of 300 and above is collected; the last test checks none leaks internals.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import InputSource, PipeDeploy
from prefect_pipedeploy.prefect_api.sealed import sealed_key
from prefect_pipedeploy.prefect_api.triggers import (
    CALLED_EVENT,
    TRIGGER_EVENT,
    TRIGGER_TAG,
    delete_endpoint_trigger,
    endpoint_resource_id,
    ensure_endpoint_trigger,
)
from prefect_pipedeploy.sdk.endpoints import GatewayVerbs
from prefect_pipedeploy.stack import wait_for_http
from tests.support.eventually import eventually
from tests.support.executions import unique
from tests.support.mappings import FILE_STATS_INPUTS, FILE_STATS_OUTPUTS
from tests.support.paths import PIPELINES
from tests.support.processes import start_gateway, start_worker

ANSWERS: list[tuple[str, int, str]] = []  # (request, status, body) of every answer >= 300


class Client(PipeDeploy, GatewayVerbs):
    """The SDK with its gateway verbs (what `PipeDeploy` is once the lead adds the mixin)."""

    def __init__(self, gateway_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gateway_url = gateway_url


def _collect(response: httpx.Response) -> None:
    response.read()
    if response.status_code >= 300:
        ANSWERS.append(
            (
                f"{response.request.method} {response.request.url}",
                response.status_code,
                response.text,
            )
        )


def http(base_url: str, **kwargs: Any) -> httpx.Client:
    return httpx.Client(
        base_url=base_url, timeout=60, event_hooks={"response": [_collect]}, **kwargs
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"EndpointToken {token}"}


# -- the stack -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idle_pool(prefect_api: str) -> str:
    """A pool no worker serves: its executions wait."""
    return f"idle-{uuid.uuid4().hex[:8]}"


TIGHT = {
    "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_WAIT_S": "1",
    "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_MAX_BODY_BYTES": str(64 * 1024),
    "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_MAX_WAITING": "2",
    "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_MAX_CREATING": "4",  # a burst's counts race
    "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_BAD_TOKEN_LIMIT": "3",
}


@pytest.fixture(scope="module")
def stack(
    pool: str, idle_pool: str, data_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The gateways (started first: they import Prefect while the worker starts) and a worker."""
    logs = tmp_path_factory.mktemp("gateway-logs")
    main, main_url = start_gateway("main", [pool], logs, {})
    tight, tight_url = start_gateway("tight", [pool, idle_pool], logs, TIGHT)
    worker = None
    try:
        worker = start_worker(pool, logs)
        for child, url in ((main, main_url), (tight, tight_url)):
            wait_for_http(f"{url}/health", 60, child)
        yield {"main": main_url, "tight": tight_url}
    finally:
        for child in (worker, tight, main):
            if child is not None:
                child.stop()


@pytest.fixture(scope="module")
def client(pool: str, stack: dict[str, str]) -> Client:
    return Client(gateway_url=stack["main"], work_pool_name=pool)


@pytest.fixture(scope="module")
def main(stack: dict[str, str]) -> Iterator[httpx.Client]:
    with http(stack["main"]) as session:
        yield session


@pytest.fixture(scope="module")
def tight(stack: dict[str, str]) -> Iterator[httpx.Client]:
    with http(stack["tight"]) as session:
        yield session


GREET_INPUTS = [
    InputSource(pipeline_input_name="name", endpoint_input_name="name", data_type="string"),
    InputSource(
        pipeline_input_name="api_key",
        endpoint_input_name="api_key",
        data_type="string",
        is_secret=True,
        default_value="",
    ),
    InputSource(
        pipeline_input_name="times",
        endpoint_input_name="times",
        data_type="number",
        default_value=1,
    ),
]


def deploy(client: Client, function: str, **kwargs: Any) -> dict[str, str]:
    name = unique(function.replace("_", "-"))
    created = client.create_deployment(
        f"{PIPELINES}:{function}", name, ram_request="256MiB", **kwargs
    )
    return {
        "name": name,
        "path": created["endpoint_url_path"],
        "token": created["endpoint_token"],
        "id": created["id"],
    }


@pytest.fixture(scope="module")
def deployed(client: Client, idle_pool: str) -> dict[str, dict[str, str]]:
    name = unique("greet")
    return {
        # a nested endpoint path that differs from the deployment's name
        "greet": deploy(
            client,
            "greet",
            inputs_mapping=GREET_INPUTS,
            endpoint_url_path=f"team/{name}",
            max_retries=0,
        ),
        "rotate": deploy(client, "greet", inputs_mapping=GREET_INPUTS),
        "counter": deploy(client, "counter", max_retries=0),
        "fails": deploy(client, "fails", max_retries=0),
        "files": deploy(
            client,
            "file_stats",
            inputs_mapping=FILE_STATS_INPUTS,
            outputs_mapping=FILE_STATS_OUTPUTS,
            max_retries=0,
        ),
        "waiting": deploy(client, "greet", inputs_mapping=GREET_INPUTS, work_pool_name=idle_pool),
    }


# -- results ---------------------------------------------------------------------------------------


def called_events(prefect_api: str, path: str) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{prefect_api}/events/filter",
        json={
            "filter": {
                "event": {"name": [CALLED_EVENT]},
                "resource": {"id": [endpoint_resource_id(path)]},
                "occurred": {"since": "2000-01-01T00:00:00Z"},
            },
            "limit": 50,
        },
    )
    response.raise_for_status()
    return list(response.json()["events"])


def test_a_call_answers_its_outputs_and_emits_an_event(
    main: httpx.Client, client: Client, deployed: dict[str, dict[str, str]], prefect_api: str
) -> None:
    greet = deployed["greet"]
    response = main.post(
        f"/endpoints/{greet['path']}",
        json={"name": "ada", "api_key": "k-123", "times": 2},
        headers=auth(greet["token"]),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outputs"] == {"greeting": "hello ada hello ada", "key_length": 5}
    execution_id = body["execution_id"]
    assert response.headers["x-execution-id"] == execution_id
    execution = client.get_pipeline_execution(execution_id)
    # the run's parameters are keyed by pipeline input name, tracked like any other run; the
    # secret input's value is sealed in a Secret block, the run holds only a reference to it
    parameters = execution["parameters"]
    assert sealed_key(parameters.pop("api_key")) is not None
    assert parameters == {"name": "ada", "times": 2}
    assert execution["status"] == "Succeeded"
    assert client.get_pipeline_execution_input(execution_id, "api_key", value_only=True) == "***"

    events = eventually(  # the server persists events in batches
        lambda: [
            e
            for e in called_events(prefect_api, greet["path"])
            if e["payload"].get("execution_id") == execution_id
        ],
        20,
        0.5,
        what="a prefect-pipedeploy.endpoint.called event recorded",
    )
    assert len(events) == 1, "no prefect-pipedeploy.endpoint.called event was recorded"
    event = events[0]
    assert event["payload"]["inputs"] == {"name": "ada", "api_key": "***", "times": 2}
    assert {
        "prefect.resource.id": f"prefect.deployment.{greet['id']}",
        "prefect.resource.role": "deployment",
    }.items() <= next(
        r for r in event["related"] if r["prefect.resource.role"] == "deployment"
    ).items()


def test_bad_inputs_name_each_field_and_create_nothing(
    main: httpx.Client, client: Client, deployed: dict[str, dict[str, str]]
) -> None:
    greet = deployed["greet"]
    before = len(client.list_pipeline_executions(greet["name"]))
    response = main.post(
        f"/endpoints/{greet['path']}",
        json={"nme": "x", "times": "two", "api_key": 5},
        headers=auth(greet["token"]),
    )
    assert response.status_code == 400
    body = response.json()
    fields = {error["field"]: error["message"] for error in body["errors"]}
    assert set(fields) == {"nme", "name", "times", "api_key"}
    assert "is required" in fields["name"]
    assert "must be a number" in fields["times"]
    for field in fields:
        assert repr(field) in body["message"]
    not_an_object = main.post(
        f"/endpoints/{greet['path']}", content=b"[1, 2]", headers=auth(greet["token"])
    )
    assert not_an_object.status_code == 400
    assert "JSON object" in not_an_object.json()["message"]
    file_as_json = main.post(
        f"/endpoints/{deployed['files']['path']}",
        json={"doc": "not a file"},
        headers=auth(deployed["files"]["token"]),
    )
    assert file_as_json.status_code == 400
    assert file_as_json.json()["errors"][0]["field"] == "doc"
    assert len(client.list_pipeline_executions(greet["name"])) == before


def test_unknown_endpoints_and_executions_are_404(
    main: httpx.Client, deployed: dict[str, dict[str, str]]
) -> None:
    greet = deployed["greet"]
    assert main.post("/endpoints/no/such/endpoint", json={}).status_code == 404
    for execution_id in (str(uuid.uuid4()), "not-an-id"):
        response = main.get(
            f"/endpoints/{greet['path']}/executions/{execution_id}", headers=auth(greet["token"])
        )
        assert response.status_code == 404
        assert "has no execution" in response.json()["message"]
    assert main.get("/nowhere").status_code == 404


def our_triggers(deployment_id: str) -> list[Any]:
    async def read() -> list[Any]:
        async with get_client() as prefect:
            related = await prefect.read_resource_related_automations(
                f"prefect.deployment.{deployment_id}"
            )
        return [a for a in related if TRIGGER_TAG in a.tags]

    return run_coro_as_sync(read())


def test_missing_wrong_and_rotated_away_tokens_are_401(
    main: httpx.Client, client: Client, deployed: dict[str, dict[str, str]]
) -> None:
    endpoint = deployed["rotate"]
    url = f"/endpoints/{endpoint['path']}?wait_for_completion=false"
    missing = main.post(url, json={"name": "x"})
    assert missing.status_code == 401
    assert "EndpointToken" in missing.json()["message"]
    assert main.post(url, json={"name": "x"}, headers=auth("pdt_wrong")).status_code == 401
    wrong_scheme = main.post(url, json={"name": "x"}, headers={"Authorization": "Bearer x"})
    assert wrong_scheme.status_code == 401

    old = endpoint["token"]
    rotated = client.generate_new_endpoint_token(endpoint["name"])
    new = rotated["endpoint_token"]
    assert new != old and rotated["endpoint_url_path"] == endpoint["path"]
    assert len(our_triggers(endpoint["id"])) == 1  # rotation also ensures the event trigger
    # the new token works at once
    accepted = main.post(url, json={"name": "x"}, headers=auth(new))
    assert accepted.status_code == 202, accepted.text
    # the old one stops working within the gateway's cache time (1.5 s), well under a long-poll
    eventually(
        lambda: main.post(url, json={"name": "x"}, headers=auth(old)).status_code,
        5,
        0.25,
        until=lambda status: status == 401,
        what="the rotated-away token refused (it still works)",
    )


def test_after_the_wait_budget_303_is_followed_to_the_result(
    tight: httpx.Client, deployed: dict[str, dict[str, str]]
) -> None:
    counter = deployed["counter"]
    response = tight.post(
        f"/endpoints/{counter['path']}",
        json={"marker": "long", "sleep_s": 3},
        headers=auth(counter["token"]),
        follow_redirects=True,
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["count"] == 1
    assert response.history, "the tight gateway (1 s budget) should have answered 303 first"
    first = response.history[0]
    assert first.status_code == 303
    execution_id = response.json()["execution_id"]
    assert first.headers["location"] == f"/endpoints/{counter['path']}/executions/{execution_id}"
    assert first.json()["execution_id"] == execution_id
    assert all(r.status_code == 303 for r in response.history)


@pytest.mark.skipif(
    shutil.which("curl") is None,
    reason="curl is not installed on this machine, so `curl -L` cannot be run (the same 303 "
    "following is checked with httpx in the test above)",
)
def test_curl_follows_the_303s(stack: dict[str, str], deployed: dict[str, dict[str, str]]) -> None:
    counter = deployed["counter"]
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-L",
            "--max-time",
            "60",
            "-w",
            "\n%{http_code} %{num_redirects}",
            "-H",
            f"Authorization: EndpointToken {counter['token']}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({"marker": "curl", "sleep_s": 3}),
            f"{stack['tight']}/endpoints/{counter['path']}",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    body, _, status_line = done.stdout.rpartition("\n")
    status, redirects = status_line.split()
    assert status == "200", done.stdout + done.stderr
    assert int(redirects) >= 1
    assert json.loads(body)["outputs"]["count"] == 1


def test_202_then_the_result_with_a_query_token(
    main: httpx.Client, client: Client, deployed: dict[str, dict[str, str]]
) -> None:
    counter = deployed["counter"]
    accepted = main.post(
        f"/endpoints/{counter['path']}?wait_for_completion=false",
        json={"marker": "later"},
        headers=auth(counter["token"]),
    )
    assert accepted.status_code == 202
    execution_id = accepted.json()["execution_id"]
    location = accepted.headers["location"]
    assert location == f"/endpoints/{counter['path']}/executions/{execution_id}"
    result = main.get(location, params={"token": counter["token"]})
    assert result.status_code == 200, result.text
    assert result.json() == {
        "execution_id": execution_id,
        "outputs": client.get_pipeline_execution(execution_id)["outputs"],
    }
    assert main.get(location, params={"token": "pdt_wrong"}).status_code == 401


def test_a_failed_execution_is_500_with_its_status(
    main: httpx.Client, deployed: dict[str, dict[str, str]]
) -> None:
    fails = deployed["fails"]
    response = main.post(
        f"/endpoints/{fails['path']}", json={"message": "bad batch"}, headers=auth(fails["token"])
    )
    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"message", "execution_id", "status"}
    assert body["status"] == "Failed"
    assert "bad batch" in body["message"]
    uuid.UUID(body["execution_id"])


def test_bodies_over_the_limit_are_413(
    tight: httpx.Client, deployed: dict[str, dict[str, str]]
) -> None:
    greet = deployed["greet"]
    url = f"/endpoints/{greet['path']}"
    big = json.dumps({"name": "x" * 100_000}).encode()
    with_length = tight.post(
        url, content=big, headers={**auth(greet["token"]), "Content-Type": "application/json"}
    )
    assert with_length.status_code == 413
    assert "64 KiB" in with_length.json()["message"]

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(6):
            yield b"y" * 16 * 1024
        yield b'"}'

    request = tight.build_request(
        "POST",
        url,
        content=chunks(),
        headers={**auth(greet["token"]), "Content-Type": "application/json"},
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    chunked = tight.send(request)
    assert chunked.status_code == 413
    assert tight.get("/health").status_code == 200


def test_too_many_waiting_executions_is_429(
    tight: httpx.Client, deployed: dict[str, dict[str, str]]
) -> None:
    waiting = deployed["waiting"]
    url = f"/endpoints/{waiting['path']}?wait_for_completion=false"
    for _ in range(2):
        assert (
            tight.post(url, json={"name": "w"}, headers=auth(waiting["token"])).status_code == 202
        )
    refused = tight.post(url, json={"name": "w"}, headers=auth(waiting["token"]))
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert "waiting" in refused.json()["message"]


def test_a_burst_of_calls_stays_within_the_waiting_limit(
    tight: httpx.Client, client: Client, idle_pool: str
) -> None:
    """Eight calls at once, four created at a time, a limit of 2 waiting: at most 2 accepted.
    Calls that each read the waiting count alone all saw 0 and all four of a turn passed."""
    waiting = deploy(client, "greet", inputs_mapping=GREET_INPUTS, work_pool_name=idle_pool)
    url = f"{tight.base_url}/endpoints/{waiting['path']}?wait_for_completion=false"

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as http:
            answers = await asyncio.gather(
                *(
                    http.post(url, json={"name": "w"}, headers=auth(waiting["token"]))
                    for _ in range(8)
                )
            )
        return [answer.status_code for answer in answers]

    statuses = asyncio.run(burst())
    assert 1 <= statuses.count(202) <= 2 and set(statuses) <= {202, 429}, statuses


def test_wrong_tokens_are_rate_limited_per_client(
    tight: httpx.Client, deployed: dict[str, dict[str, str]]
) -> None:
    greet = deployed["greet"]
    url = f"/endpoints/{greet['path']}/executions/{uuid.uuid4()}"
    attacker = {"X-Forwarded-For": "198.51.100.7"}
    for _ in range(3):
        assert tight.get(url, headers={**attacker, **auth("pdt_guess")}).status_code == 401
    blocked = tight.get(url, headers={**attacker, **auth(greet["token"])})
    assert blocked.status_code == 429
    assert 0 < int(blocked.headers["retry-after"]) <= 60
    # another client is not affected: its right token reaches the (missing) execution
    other = tight.get(url, headers={"X-Forwarded-For": "198.51.100.8", **auth(greet["token"])})
    assert other.status_code == 404


def test_a_file_goes_in_and_a_file_comes_out(
    main: httpx.Client, client: Client, deployed: dict[str, dict[str, str]]
) -> None:
    files = deployed["files"]
    content = b"a,b\n1,2\n3,4\n"
    response = main.post(
        f"/endpoints/{files['path']}",
        files={"doc": ("data.csv", content, "text/csv")},
        data={"label": "rows"},
        headers=auth(files["token"]),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == b"rows: 12 bytes, 3 lines\n"
    assert 'filename="report.txt"' in response.headers["content-disposition"]
    assert response.headers["x-output-name"] == "report"
    execution_id = response.headers["x-execution-id"]
    recorded = client.get_pipeline_execution_input(execution_id, "document", value_only=True)
    assert re.fullmatch(r"uploads/[0-9a-f]{32}/data\.csv", recorded["datastore_path"])
    assert recorded["size"] == len(content)
    stored = [obj["key"] for obj in client.list_data_store_objects("uploads/")]
    assert recorded["datastore_path"] in stored


def test_sdk_verbs(client: Client, deployed: dict[str, dict[str, str]], tmp_path: Path) -> None:
    greet = deployed["greet"]
    # by deployment name: the SDK finds the endpoint path ("team/<name>") itself
    result = client.trigger_endpoint(greet["name"], greet["token"], {"name": "sdk"})
    assert result["outputs"] == {"greeting": "hello sdk", "key_length": 0}
    accepted = client.trigger_endpoint(
        greet["path"], greet["token"], {"name": "later"}, wait_for_completion=False
    )
    assert accepted["outputs"] is None
    later = client.retrieve_endpoint_results(
        greet["path"], accepted["execution_id"], greet["token"]
    )
    assert later == {
        "execution_id": accepted["execution_id"],
        "outputs": {"greeting": "hello later", "key_length": 0},
    }
    files = deployed["files"]
    document = tmp_path / "notes.txt"
    document.write_bytes(b"one\ntwo\n")
    with_file = client.trigger_endpoint(files["path"], files["token"], {"doc": document})
    assert with_file["outputs"] == {"report": b"stats: 8 bytes, 2 lines\n"}


def test_an_event_runs_the_endpoint_deployment(
    client: Client, deployed: dict[str, dict[str, str]], prefect_api: str
) -> None:
    greet = deployed["greet"]

    async def ensure_twice() -> tuple[Any, Any]:
        async with get_client() as prefect:
            deployment = await prefect.read_deployment(uuid.UUID(greet["id"]))
            return (
                await ensure_endpoint_trigger(prefect, deployment),
                await ensure_endpoint_trigger(prefect, deployment),
            )

    first, second = run_coro_as_sync(ensure_twice())
    assert first is not None and first == second  # idempotent

    now = datetime.now(timezone.utc).isoformat()
    events = [
        {
            "id": str(uuid.uuid4()),
            "occurred": now,
            "event": TRIGGER_EVENT,
            "resource": {"prefect.resource.id": resource},
            "payload": {"inputs": {"name": marker, "times": 2}},
        }
        for resource, marker in (
            (endpoint_resource_id(greet["path"]), "by-path"),
            (f"prefect.deployment.{greet['id']}", "by-id"),
        )
    ]
    httpx.post(f"{prefect_api}/events", json=events).raise_for_status()

    found: dict[str, str] = {}

    def started_by_the_events() -> dict[str, str]:
        for execution in client.list_pipeline_executions(greet["name"]):
            marker = execution["parameters"].get("name")
            if marker in ("by-path", "by-id"):
                found[marker] = execution["execution_id"]
        return found

    eventually(
        started_by_the_events,
        30,
        until=lambda markers: len(markers) >= 2,
        what="both events started an execution",
    )
    for marker, execution_id in found.items():
        run_coro_as_sync(client.await_execution(execution_id, 60))
        execution = client.get_pipeline_execution(execution_id)
        assert execution["status"] == "Succeeded", execution
        assert execution["outputs"]["greeting"] == f"hello {marker} hello {marker}"

    async def delete() -> int:
        async with get_client() as prefect:
            deployment = await prefect.read_deployment(uuid.UUID(greet["id"]))
            return await delete_endpoint_trigger(prefect, deployment)

    assert run_coro_as_sync(delete()) == 1
    assert our_triggers(greet["id"]) == []


def test_health_and_openapi(main: httpx.Client, deployed: dict[str, dict[str, str]]) -> None:
    health = main.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert deployed["greet"]["path"] in health.json()["endpoints"]
    document = main.get("/openapi.json").json()
    greet = document["paths"][f"/endpoints/{deployed['greet']['path']}"]["post"]
    schema = greet["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"name", "api_key", "times"}
    assert schema["required"] == ["name"]
    files = document["paths"][f"/endpoints/{deployed['files']['path']}"]["post"]
    assert "multipart/form-data" in files["requestBody"]["content"]
    assert "/endpoints/{endpoint_url_path}/executions/{execution_id}" in document["paths"]
    assert main.get("/docs").status_code == 200


def test_the_cli_rotates_a_token(main: httpx.Client, deployed: dict[str, dict[str, str]]) -> None:
    from typer.testing import CliRunner

    from prefect_pipedeploy.cli import app

    endpoint = deployed["rotate"]
    result = CliRunner().invoke(app, ["endpoint", "token", endpoint["name"]])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("pdt_") and "\n" not in token  # the token alone on stdout
    assert "shown only now" in result.stderr
    url = f"/endpoints/{endpoint['path']}/executions/{uuid.uuid4()}"
    assert main.get(url, headers=auth(token)).status_code == 404  # past the token check
    unknown = CliRunner().invoke(app, ["endpoint", "token", "no-such-deployment"])
    assert unknown.exit_code == 1 and "no deployment named" in unknown.stderr


_PYTHON_PATH = re.compile(r"[\\/][^\s\"']+\.py\b")


def test_no_answer_leaks_a_traceback_or_a_path() -> None:
    """Every error (and redirect) answered in this module is a JSON {"message": ...}."""
    errors = [(request, status, body) for request, status, body in ANSWERS if status >= 400]
    statuses = {status for _, status, _ in errors}
    assert {400, 401, 404, 413, 429, 500} <= statuses, statuses
    for request, status, body in ANSWERS:
        assert "Traceback" not in body, (request, status, body)
        assert not _PYTHON_PATH.search(body), (request, status, body)
    for request, status, body in errors:
        assert isinstance(json.loads(body).get("message"), str), (request, status, body)


def test_back_to_back_calls_to_a_parallel_pod_run_together(
    main: httpx.Client, client: Client
) -> None:
    """Issue 14: six non-waiting calls made one after the other to a parallel pod were answered
    over 16 s (each a 2 s back-off of Prefect's client on a 503), so six "parallel" 1 s
    executions ran one after another. Each is accepted, all six succeed, and they run at the
    same time (their Running intervals overlap), as parallel mode promises."""
    sleeper = deploy(
        client,
        "async_sleeper",
        mode="low_latency",
        enable_parallel_executions=True,
        max_parallel_executions_per_pod=6,
        max_retries=0,
    )
    eventually(
        lambda: client.get_deployment(sleeper["name"]),
        90,
        until=lambda d: d["status"] == "up",
        what="the pod is up",
    )
    ids = []
    for i in range(6):
        accepted = main.post(
            f"/endpoints/{sleeper['path']}?wait_for_completion=false",
            json={"marker": f"b2b{i}", "sleep_s": 1.0},
            headers=auth(sleeper["token"]),
        )
        assert accepted.status_code == 202, accepted.text
        ids.append(accepted.json()["execution_id"])
    for execution_id in ids:
        result = main.get(
            f"/endpoints/{sleeper['path']}/executions/{execution_id}",
            headers=auth(sleeper["token"]),
            follow_redirects=True,
        )
        assert result.status_code == 200, result.text

    async def intervals() -> list[tuple[datetime, datetime]]:
        async with get_client() as prefect:
            runs = [await prefect.read_flow_run(uuid.UUID(i)) for i in ids]
        assert all(r.start_time and r.end_time for r in runs), runs
        return [(r.start_time, r.end_time) for r in runs]  # type: ignore[misc]

    spans = run_coro_as_sync(intervals())
    overlapping = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert overlapping >= 2, spans
