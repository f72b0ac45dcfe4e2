"""The reference platform's own client, `craft-ai-sdk` 0.74.7 unchanged, driving our endpoints
through a real gateway (issue 16, item 2): its endpoint verbs (trigger waiting and not, JSON
and file inputs, JSON and file outputs, results, token rotation, get and list deployments),
with an SDK token made by `pipedeploy sdk-token create`; and the security of the two kinds of
token (an SDK token opens no endpoint, an endpoint token gets no access token, a revoked SDK
token and an expired access token are refused, wrong SDK tokens are rate-limited).

Two gateways serve the module's pool: `main` with the default settings, and `short` whose
calls wait 0.5 s before a 303, whose access tokens last 1 s and which takes 3 wrong tokens a
minute. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from craft_ai_sdk import CraftAiSdk
from craft_ai_sdk.exceptions import SdkException

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.stack import wait_for_http
from tests.support.executions import unique
from tests.support.mappings import FILE_STATS_INPUTS, FILE_STATS_OUTPUTS
from tests.support.paths import PIPELINES
from tests.support.processes import start_gateway, start_worker

SHORT = {
    "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_WAIT_S": "0.5",
    "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_ACCESS_TOKEN_TTL_S": "1",
    "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_BAD_TOKEN_LIMIT": "3",
}


@pytest.fixture(scope="module")
def stack(
    pool: str, data_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    logs = tmp_path_factory.mktemp("platform-logs")
    main, main_url = start_gateway("main", [pool], logs, {})
    short, short_url = start_gateway("short", [pool], logs, SHORT)
    worker = None
    try:
        worker = start_worker(pool, logs)
        for child, url in ((main, main_url), (short, short_url)):
            wait_for_http(f"{url}/health", 60, child)
        yield {"main": main_url, "short": short_url}
    finally:
        for child in (worker, main, short):
            if child is not None:
                child.stop()


def sdk_token_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect_pipedeploy.cli", "sdk-token", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def sdk_token() -> str:
    made = sdk_token_cli("create", f"tests-{uuid.uuid4().hex[:8]}")
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]  # the token alone on the last line


def craft(url: str, token: str) -> CraftAiSdk:
    return CraftAiSdk(sdk_token=token, environment_url=url, control_url=url, verbose_log=False)


@pytest.fixture(scope="module")
def deployed(sdk: PipeDeploy, stack: dict[str, str]) -> dict[str, dict[str, Any]]:
    """An endpoint of `score` (JSON in and out), one of `file_stats` (a file and a string in,
    a file out), and one of `counter` (runs as long as asked)."""
    score = sdk.create_deployment(f"{PIPELINES}:score", unique("craft-score"), max_retries=0)
    files = sdk.create_deployment(
        f"{PIPELINES}:file_stats",
        unique("craft-files"),
        inputs_mapping=FILE_STATS_INPUTS,
        outputs_mapping=FILE_STATS_OUTPUTS,
        max_retries=0,
    )
    slow = sdk.create_deployment(f"{PIPELINES}:counter", unique("craft-slow"), max_retries=0)
    return {"score": score, "files": files, "slow": slow}


def test_the_platform_client_triggers_an_endpoint_and_waits_for_its_outputs(
    stack: dict[str, str], sdk_token: str, deployed: dict[str, dict[str, Any]]
) -> None:
    score = deployed["score"]
    client = craft(stack["main"], sdk_token)
    result = client.trigger_endpoint(
        score["name"], score["endpoint_token"], {"text": "hello from the platform"}
    )
    assert result["outputs"] == {"words": 4, "score": 5.0}
    assert uuid.UUID(result["execution_id"])


def test_the_platform_client_starts_without_waiting_then_retrieves(
    stack: dict[str, str], sdk_token: str, deployed: dict[str, dict[str, Any]]
) -> None:
    score = deployed["score"]
    client = craft(stack["main"], sdk_token)
    started = client.trigger_endpoint(
        score["name"], score["endpoint_token"], {"text": "a b"}, wait_for_completion=False
    )
    assert set(started) == {"execution_id"}
    results = client.retrieve_endpoint_results(
        score["name"], started["execution_id"], score["endpoint_token"]
    )
    assert results == {
        "outputs": {"words": 2, "score": 1.0},
        "execution_id": started["execution_id"],
    }


def test_file_inputs_and_outputs_through_the_platform_client(
    stack: dict[str, str], sdk_token: str, deployed: dict[str, dict[str, Any]]
) -> None:
    files = deployed["files"]
    client = craft(stack["main"], sdk_token)
    document = io.BytesIO(b"one\ntwo\nthree\n")
    # the client sends `label` as the JSON string '"mine"' in its multipart body
    result = client.trigger_endpoint(
        files["name"], files["endpoint_token"], {"doc": document, "label": "mine"}
    )
    assert result["outputs"] == {"report": b"mine: 14 bytes, 3 lines\n"}  # downloaded by the client


def test_a_long_execution_is_waited_for_with_growing_waits(
    stack: dict[str, str], sdk_token: str, deployed: dict[str, dict[str, Any]]
) -> None:
    slow = deployed["slow"]
    client = craft(stack["short"], sdk_token)
    started = client.trigger_endpoint(
        slow["name"], slow["endpoint_token"], {"sleep_s": 5}, wait_for_completion=False
    )
    execution_id = started["execution_id"]
    path = slow["endpoint_url_path"]
    url = f"{stack['short']}/endpoints/v1/{path}/executions/{execution_id}"
    answer = httpx.get(
        url, params={"token": slow["endpoint_token"]}, follow_redirects=True, timeout=120
    )
    assert answer.status_code == 200, answer.text
    waits = [float(httpx.URL(r.headers["location"]).params["wait"]) for r in answer.history]
    assert waits[:3] == [1.0, 2.0, 4.0]  # 0.5 s first, then twice as long each time
    assert len(answer.history) <= 5  # a 5 s run; 30 redirects would last hours
    assert answer.json()["outputs"]["count"] == {"value": 1}  # every output as {"value": ...}
    # and the client itself, unchanged, gets the same
    again = client.retrieve_endpoint_results(slow["name"], execution_id, slow["endpoint_token"])
    assert again["outputs"]["count"] == 1


def test_token_rotation_and_deployments_through_the_platform_client(
    stack: dict[str, str], sdk: PipeDeploy, sdk_token: str
) -> None:
    name = unique("craft-rotate")
    created = sdk.create_deployment(f"{PIPELINES}:score", name, description="rotated by craft")
    client = craft(stack["main"], sdk_token)
    rotated = client.generate_new_endpoint_token(name)
    assert (
        set(rotated) == {"endpoint_token"}
        and rotated["endpoint_token"] != created["endpoint_token"]
    )
    with pytest.raises(SdkException) as refused:
        client.trigger_endpoint(name, created["endpoint_token"], {"text": "old"})
    assert refused.value.status_code == 401
    assert client.trigger_endpoint(name, rotated["endpoint_token"], {"text": "new"})["outputs"]
    chosen = f"chosen-{uuid.uuid4().hex}"
    assert client.generate_new_endpoint_token(name, chosen) == {"endpoint_token": chosen}
    assert client.trigger_endpoint(name, chosen, {"text": "chosen"})["outputs"]

    deployment = client.get_deployment(name)
    assert deployment["name"] == name
    assert deployment["execution_rule"] == "endpoint"
    assert deployment["endpoint_url_path"] == created["endpoint_url_path"]
    assert deployment["description"] == "rotated by craft"
    assert deployment["is_enabled"] is True
    assert deployment["status"] == "standby"
    assert deployment["created_at"] and deployment["updated_at"]
    assert deployment["last_execution_id"]  # the call just made
    assert "endpoint_token" not in deployment  # stored hashed: never shown again
    listed = {d["name"]: d for d in client.list_deployments()}
    assert listed[name]["execution_rule"] == "endpoint" and listed[name]["is_enabled"] is True
    assert set(listed[name]) == {
        "name",
        "pipeline_name",
        "execution_rule",
        "mode",
        "is_enabled",
        "created_at",
    }


def test_sdk_and_endpoint_tokens_open_only_their_own_doors(
    stack: dict[str, str], sdk_token: str, deployed: dict[str, dict[str, Any]]
) -> None:
    score = deployed["score"]
    main = stack["main"]
    # an SDK token is no endpoint token
    called = httpx.post(
        f"{main}/endpoints/{score['endpoint_url_path']}",
        json={"text": "x"},
        headers={"Authorization": f"EndpointToken {sdk_token}"},
        timeout=60,
    )
    assert called.status_code == 401
    # an endpoint token gets no access token, and is no access token
    refreshed = httpx.post(
        f"{main}/api/v1/auth/refresh", json={"refresh_token": score["endpoint_token"]}, timeout=60
    )
    assert refreshed.status_code == 401 and "sdk-token create" in refreshed.json()["message"]
    listed = httpx.get(
        f"{main}/api/v1/deployments",
        headers={"Authorization": f"Bearer {score['endpoint_token']}"},
        timeout=60,
    )
    assert listed.status_code == 401
    # an access token opens no endpoint
    access = httpx.post(
        f"{main}/api/v1/auth/refresh", json={"refresh_token": sdk_token}, timeout=60
    ).json()["access_token"]
    with_access = httpx.post(
        f"{main}/endpoints/{score['endpoint_url_path']}",
        json={"text": "x"},
        headers={"Authorization": f"Bearer {access}"},
        timeout=60,
    )
    assert with_access.status_code == 401


def test_a_revoked_sdk_token_and_an_expired_access_token_are_refused(
    stack: dict[str, str], deployed: dict[str, dict[str, Any]]
) -> None:
    name = f"revoked-{uuid.uuid4().hex[:8]}"
    made = sdk_token_cli("create", name)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    listed = sdk_token_cli("ls")
    assert name in listed.stdout and token not in listed.stdout  # names, never tokens
    short = stack["short"]
    access = httpx.post(f"{short}/api/v1/auth/refresh", json={"refresh_token": token}, timeout=60)
    assert access.status_code == 200
    bearer = {"Authorization": f"Bearer {access.json()['access_token']}"}
    assert httpx.get(f"{short}/api/v1/deployments", headers=bearer, timeout=60).status_code == 200
    time.sleep(3.5)  # a 1 s token, checked with 2 s of leeway
    expired = httpx.get(f"{short}/api/v1/deployments", headers=bearer, timeout=60)
    assert expired.status_code == 401 and "expired" in expired.json()["message"]

    revoked = sdk_token_cli("revoke", name)
    assert revoked.returncode == 0, revoked.stderr
    assert name not in sdk_token_cli("ls").stdout
    with pytest.raises(SdkException) as refused:
        craft(stack["main"], token).list_deployments()
    assert refused.value.status_code == 401
    again = sdk_token_cli("revoke", name)
    assert again.returncode != 0 and f"no SDK token named {name!r}" in again.stderr


def test_wrong_sdk_tokens_are_rate_limited_like_endpoint_tokens(stack: dict[str, str]) -> None:
    short = stack["short"]
    answers = [
        httpx.post(
            f"{short}/api/v1/auth/refresh",
            json={"refresh_token": f"pds_wrong-{i}"},
            timeout=60,
        ).status_code
        for i in range(5)
    ]
    assert answers[:3] == [401, 401, 401]
    assert answers[3:] == [429, 429]
