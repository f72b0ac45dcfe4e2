"""The gateway's guards as a caller meets them: a real `pipedeploy gateway` process (uvicorn on
127.0.0.1), a real worker, the session's Prefect server, httpx as the caller.

The gateway talks to Prefect through the test proxy, which can hold its count of waiting
executions (a slow server), with a queue of 2 calls and a 2 s upload retention. It serves a pool
with a worker (executions run) and one without (executions wait).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.states import Completed
from prefect.utilities.asyncutils import run_coro_as_sync

from benchmarks.apiproxy import CountingProxy
from prefect_pipedeploy import InputSource, OutputDestination, PipeDeploy
from prefect_pipedeploy.datastore import LocalDataStore
from prefect_pipedeploy.iomapping import file_input_key
from prefect_pipedeploy.stack import ChildProcess, free_port, start_child, wait_for_http
from tests.support.eventually import eventually
from tests.support.executions import unique
from tests.support.files import local_data_store
from tests.support.paths import PIPELINES
from tests.support.processes import start_worker

pytestmark = pytest.mark.e2e

T = TypeVar("T")
DEMO = PIPELINES
HELD_S = 3.0  # how long the proxy holds the gateway's count of waiting executions when slow
SETTING = "PREFECT_INTEGRATIONS_PIPEDEPLOY_"


@pytest.fixture(scope="module")
def store(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDataStore]:
    """The data store of the gateway and the worker; `linked` in it leads out of it."""
    root = tmp_path_factory.mktemp("guarded-store-root")
    outside = tmp_path_factory.mktemp("outside-the-store")
    (root / "linked").symlink_to(outside)
    with local_data_store(root, unique("guarded")):
        yield LocalDataStore(root=str(root))


@pytest.fixture(scope="module")
def slow() -> threading.Event:
    return threading.Event()


@pytest.fixture(scope="module")
def gateway(
    pool: str,
    store: LocalDataStore,
    slow: threading.Event,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """The gateway process (behind the proxy) serving `pool` and an idle pool, and a worker."""
    from prefect.settings import PREFECT_API_URL

    idle = f"idle-{uuid.uuid4().hex[:8]}"
    proxy = CountingProxy(
        str(PREFECT_API_URL.value()).removesuffix("/api"),
        port=free_port(),
        delay=lambda method, path: (
            HELD_S if slow.is_set() and (method, path) == ("POST", "/flow_runs/count") else 0.0
        ),
    )
    proxy.start()
    logs = tmp_path_factory.mktemp("guards-logs")
    port = free_port()
    child: ChildProcess | None = None
    worker: ChildProcess | None = None
    try:
        child = start_child(
            "gateway-guards",
            [sys.executable, "-m", "prefect_pipedeploy.cli", "gateway"]
            + ["--pool", pool, "--pool", idle, "--port", str(port)],
            logs / "gateway.log",
            env={
                **os.environ,
                "PREFECT_API_URL": proxy.url("gateway"),
                SETTING + "GATEWAY_MAX_QUEUED": "2",
                SETTING + "GATEWAY_UPLOAD_RETENTION_S": "2",
            },
        )
        worker = start_worker(pool, logs)
        wait_for_http(f"http://127.0.0.1:{port}/health", 60, child)
        yield {"url": f"http://127.0.0.1:{port}", "pool": pool, "idle": idle, "log": str(logs)}
    finally:
        for process in (worker, child):
            if process is not None:
                process.stop()
        proxy.stop()


def deploy(pool: str, function: str, **kwargs: Any) -> dict[str, str]:
    created = PipeDeploy(work_pool_name=pool).create_deployment(
        f"{DEMO}:{function}",
        unique(function.replace("_", "-")),
        ram_request="256MiB",
        max_retries=0,
        **kwargs,
    )
    return {
        "path": f"/endpoints/{created['endpoint_url_path']}",
        "token": created["endpoint_token"],
        "id": created["id"],
    }


def call(
    base: str, endpoint: dict[str, str], timeout_s: float = 180, wait: bool = True, **kwargs: Any
) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=timeout_s, follow_redirects=True) as http:
        return http.post(
            endpoint["path"],
            params={} if wait else {"wait_for_completion": "false"},
            headers={"Authorization": f"EndpointToken {endpoint['token']}"},
            **kwargs,
        )


def names_of_runs(endpoint: dict[str, str]) -> list[str]:
    async def read() -> list[str]:
        async with get_client() as prefect:
            runs = await prefect.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[endpoint["id"]]))
            )
        return sorted(str((run.parameters or {}).get("name")) for run in runs)

    return run_coro_as_sync(read())


def test_a_full_queue_answers_429_and_a_caller_who_left_gets_no_execution(
    gateway: dict[str, str], slow: threading.Event
) -> None:
    """Before: no call was refused (30 concurrent calls: all 202, p50 31 s), and a caller whose
    client gave up still got an execution made and run for it."""
    endpoint = deploy(
        gateway["idle"],
        "greet",
        inputs_mapping=[
            InputSource(pipeline_input_name="name", endpoint_input_name="name", data_type="string")
        ],
    )
    call(gateway["url"], endpoint, wait=False, json={"name": "warm"})  # endpoint table loaded
    slow.set()
    try:
        with ThreadPoolExecutor(5) as pool:
            answers = list(
                pool.map(
                    lambda i: call(gateway["url"], endpoint, wait=False, json={"name": f"b{i}"}),
                    range(5),
                )
            )
        assert sorted(a.status_code for a in answers) == [202, 202, 429, 429, 429], [
            a.text for a in answers
        ]
        for answer in answers:
            if answer.status_code == 429:
                assert int(answer.headers["retry-after"]) >= 1
                assert "GATEWAY_MAX_QUEUED" in answer.json()["message"]
        with pytest.raises(httpx.TimeoutException):  # the gateway holds it in its count
            call(gateway["url"], endpoint, timeout_s=1, wait=False, json={"name": "impatient"})
        time.sleep(HELD_S + 2)
    finally:
        slow.clear()
    accepted = sorted(
        json.loads(a.request.content)["name"] for a in answers if a.status_code == 202
    )
    assert names_of_runs(endpoint) == sorted(["warm", *accepted])
    log = (Path(gateway["log"]) / "gateway.log").read_text()
    assert "the caller went away before its execution was created" in log


def test_a_callers_path_shaped_dict_comes_back_as_json_not_as_the_file(
    gateway: dict[str, str],
) -> None:
    """Before: a pipeline echoing {"o": {"path": "/etc/passwd"}} to a data-store output answered
    200 with /etc/passwd's bytes, and copied them into the store."""
    endpoint = deploy(
        gateway["pool"],
        "echo",
        inputs_mapping=[InputSource(pipeline_input_name="o", endpoint_input_name="o")],
        outputs_mapping=[
            OutputDestination(pipeline_output_name="o", datastore_path="echo/{execution_id}.bin")
        ],
    )
    response = call(gateway["url"], endpoint, json={"o": {"path": "/etc/passwd"}})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert json.loads(response.content) == {"path": "/etc/passwd"}
    assert b"root:" not in response.content


def test_failure_answers_name_the_store_but_show_no_server_path(
    gateway: dict[str, str], store: LocalDataStore
) -> None:
    """Before: both 500 answers carried the store's absolute directory."""
    missing = deploy(
        gateway["pool"],
        "score",
        inputs_mapping=[
            InputSource(pipeline_input_name="text", datastore_path="missing/words.txt")
        ],
    )
    linked = deploy(
        gateway["pool"],
        "score",
        outputs_mapping=[
            OutputDestination(pipeline_output_name="words", datastore_path="linked/{execution_id}")
        ],
    )
    answers = {
        "missing": call(gateway["url"], missing, json={}),
        "linked": call(gateway["url"], linked, json={}),
    }
    phrases = {
        "missing": "does not exist in the data store",
        "linked": "leads out of the root directory of the data store",
    }
    for name, answer in answers.items():
        assert answer.status_code == 500, (name, answer.text)
        message = answer.json()["message"]
        assert phrases[name] in message, (name, message)
        assert str(Path(store.root).parent) not in answer.text, (name, answer.text)
        assert "guarded-store-root" not in answer.text, (name, answer.text)


def test_uploads_are_removed_after_their_retention_once_no_execution_needs_them(
    gateway: dict[str, str], store: LocalDataStore
) -> None:
    """Before: uploads were kept for ever."""
    endpoint = deploy(
        gateway["idle"],
        "file_stats",
        inputs_mapping=[
            InputSource(pipeline_input_name="document", endpoint_input_name="doc", data_type="file")
        ],
    )
    orphan = f"uploads/{uuid.uuid4().hex}/orphan.bin"  # as left by a gateway that died
    store.upload(__file__, orphan)
    answer = call(
        gateway["url"], endpoint, wait=False, files={"doc": ("d.csv", b"a\n1\n", "text/csv")}
    )
    assert answer.status_code == 202, answer.text
    run_id = uuid.UUID(answer.json()["execution_id"])

    async def key_and_complete(complete: bool) -> str:
        async with get_client() as prefect:
            if complete:
                await prefect.set_flow_run_state(run_id, Completed(), force=True)
            run = await prefect.read_flow_run(run_id)
        key = file_input_key(run.parameters["document"])
        assert key is not None
        return key

    key = run_coro_as_sync(key_and_complete(False))
    eventually(lambda: not store.exists(orphan), 15, what="the orphan upload's removal")
    assert store.exists(key)  # its execution is Scheduled: it will read it
    run_coro_as_sync(key_and_complete(True))
    eventually(
        lambda: not store.exists(key), 15, what="the upload's removal once its execution ended"
    )
