"""Uploads of endpoint files are removed after their retention, unless an execution that may
still read them refers to them: the real `Gateway` on the session's Prefect server (in-process,
httpx's ASGI transport), a local data store, and `Gateway.sweep_uploads`, which the gateway
runs periodically while it serves."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.states import Completed, Failed

from prefect_pipedeploy import InputSource, PipeDeploy
from prefect_pipedeploy.datastore import LocalDataStore
from prefect_pipedeploy.datastore.configured import DATA_STORE_VARIABLE
from prefect_pipedeploy.gateway import create_app
from prefect_pipedeploy.gateway.service import Gateway
from prefect_pipedeploy.iomapping import file_input_key
from tests.support.files import local_data_store
from tests.support.paths import PIPELINES

pytestmark = pytest.mark.anyio

DEMO = PIPELINES

RETENTION = "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_UPLOAD_RETENTION_S"


@pytest.fixture(scope="module")
def store(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDataStore]:
    root = tmp_path_factory.mktemp("retention-store")
    with local_data_store(root, f"retention-{uuid.uuid4().hex[:6]}"):
        yield LocalDataStore(root=str(root))


@pytest.fixture(scope="module")
def endpoint(pool: str, store: LocalDataStore) -> dict[str, str]:
    """`file_stats` as an endpoint with a file input; no worker: executions stay Scheduled."""
    created = PipeDeploy(work_pool_name=pool).create_deployment(
        f"{DEMO}:file_stats",
        f"retention-{uuid.uuid4().hex[:6]}",
        ram_request="256MiB",
        inputs_mapping=[
            InputSource(pipeline_input_name="document", endpoint_input_name="doc", data_type="file")
        ],
        max_retries=0,
    )
    return {
        "url": f"/endpoints/{created['endpoint_url_path']}?wait_for_completion=false",
        "token": created["endpoint_token"],
        "pool": pool,
    }


@pytest.fixture
async def gateway(endpoint: dict[str, str]) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    async with get_client() as prefect:
        served = Gateway([endpoint["pool"]], prefect)
        transport = httpx.ASGITransport(
            app=create_app([endpoint["pool"]], gateway=served), raise_app_exceptions=False
        )
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                yield served, http
        finally:
            await served.close()


async def upload(http: httpx.AsyncClient, endpoint: dict[str, str]) -> tuple[uuid.UUID, str]:
    """Call the endpoint with a file: the execution's id and its upload's key."""
    response = await http.post(
        endpoint["url"],
        files={"doc": ("data.csv", b"a,b\n1,2\n", "text/csv")},
        headers={"Authorization": f"EndpointToken {endpoint['token']}"},
    )
    assert response.status_code == 202, response.text
    run_id = uuid.UUID(response.json()["execution_id"])
    async with get_client() as prefect:
        run = await prefect.read_flow_run(run_id)
    key = file_input_key(run.parameters["document"])
    assert key is not None and key.startswith("uploads/")
    return run_id, key


async def test_uploads_go_after_their_retention_unless_an_execution_may_read_them(
    gateway: tuple[Gateway, httpx.AsyncClient],
    endpoint: dict[str, str],
    store: LocalDataStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: uploads were kept for ever (no retention, nothing removed them)."""
    served, http = gateway
    _, waiting_key = await upload(http, endpoint)  # Scheduled: not read yet
    failed_run, failed_key = await upload(http, endpoint)
    done_run, done_key = await upload(http, endpoint)
    orphan = f"uploads/{uuid.uuid4().hex}/orphan.bin"  # its execution was never made
    store.upload(__file__, orphan)
    async with get_client() as prefect:
        await prefect.set_flow_run_state(failed_run, Failed(message="x"), force=True)
        await prefect.set_flow_run_state(done_run, Completed(), force=True)

    assert await served.sweep_uploads() == []  # the default retention is a day
    monkeypatch.setenv(RETENTION, "1")
    await asyncio.sleep(1.5)
    removed = await served.sweep_uploads()

    assert sorted(removed) == sorted([orphan, done_key])
    assert store.exists(waiting_key)  # its execution has yet to download it
    assert store.exists(failed_key)  # it failed just now: a retry may read it again
    assert not store.exists(orphan) and not store.exists(done_key)


async def test_no_data_store_means_nothing_to_sweep(
    gateway: tuple[Gateway, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    served, _ = gateway
    monkeypatch.setenv(DATA_STORE_VARIABLE, "pipedeploy-local-data-store/no-such-store")
    monkeypatch.setenv(RETENTION, "1")
    assert await served.sweep_uploads() == []
