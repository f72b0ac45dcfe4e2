"""Request bodies through the whole gateway: the real `Gateway` on the session's Prefect server,
driven in-process through httpx's ASGI transport. Each body limit (fields, files, a text
field's size, the body's size declared or chunked), malformed bodies, a file that reaches the
data store byte for byte, and no temporary file left once a request is answered."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.datastore import LocalDataStore
from prefect_pipedeploy.gateway import bodies, create_app
from prefect_pipedeploy.gateway.service import Gateway
from prefect_pipedeploy.iomapping import file_input_key
from tests.support.files import leftovers, local_data_store
from tests.support.mappings import FILE_STATS_INPUTS
from tests.support.paths import PIPELINES

pytestmark = pytest.mark.anyio

DEMO = PIPELINES

SETTING = "PREFECT_INTEGRATIONS_PIPEDEPLOY_"

MiB = 1024 * 1024

# -- an endpoint with a file input, and the gateway serving it -------------------------------------


@pytest.fixture(scope="module")
def store_root(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local data store, the one the gateway stores uploads in."""
    root = tmp_path_factory.mktemp("bodies-store")
    with local_data_store(root, f"bodies-{uuid.uuid4().hex[:6]}"):
        yield root


@pytest.fixture(scope="module")
def endpoint(pool: str, store_root: Path) -> dict[str, str]:
    """`file_stats` (a file input `doc`, a string input `label`) as an endpoint; no worker
    serves the pool, so calls use ?wait_for_completion=false."""
    created = PipeDeploy(work_pool_name=pool).create_deployment(
        f"{DEMO}:file_stats",
        f"bodies-{uuid.uuid4().hex[:6]}",
        ram_request="256MiB",
        inputs_mapping=FILE_STATS_INPUTS,
        max_retries=0,
    )
    return {
        "url": f"/endpoints/{created['endpoint_url_path']}?wait_for_completion=false",
        "token": created["endpoint_token"],
        "pool": pool,
    }


@contextlib.asynccontextmanager
async def gateway(endpoint: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the gateway app, which uses a real `Gateway` on the Prefect server."""
    async with get_client() as prefect:
        served = Gateway([endpoint["pool"]], prefect)
        app = create_app([endpoint["pool"]], gateway=served)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                yield http
        finally:
            await served.close()


async def call(endpoint: dict[str, str], **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"EndpointToken {endpoint['token']}", **kwargs.pop("headers", {})}
    async with gateway(endpoint) as http:
        response = await http.post(endpoint["url"], headers=headers, **kwargs)
    assert "Traceback" not in response.text and ".py" not in response.text
    return response


def refused(response: httpx.Response, status: int, *phrases: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["message"]
    for phrase in phrases:
        assert phrase in message


def doc(size: int, name: str = "data.bin") -> tuple[str, bytes, str]:
    return (name, b"d" * size, "application/octet-stream")


# -- a file byte for byte --------------------------------------------------------------------------


async def test_a_file_reaches_the_data_store_byte_for_byte(
    endpoint: dict[str, str], store_root: Path, tmp_path: Path
) -> None:
    boundary = "gw-boundary-7f3a"
    near_misses = [b"\r\n--gw-boundary-7f3", b"--gw-boundary-7f3a", b"\r\n\r\n", b"\r\r\n--\n"]
    blob = b"".join(os.urandom(300 * 1024) + miss for miss in near_misses * 3)  # ~3.5 MiB
    response = await call(
        endpoint,
        files={"doc": ("données brutes.bin", blob, "application/octet-stream")},
        data={"label": "42"},  # a string input keeps its text
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 202, response.text
    async with get_client() as prefect:
        run = await prefect.read_flow_run(uuid.UUID(response.json()["execution_id"]))
    assert run.parameters["label"] == "42"
    key = file_input_key(run.parameters["document"])
    assert key is not None and key.endswith("/donn_es_brutes.bin")
    LocalDataStore(root=str(store_root)).download(key, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == blob


async def test_a_chunked_body_within_the_limit_is_read_whole(endpoint: dict[str, str]) -> None:
    request = httpx.Request("POST", "http://x/", files={"doc": doc(200 * 1024)})
    body, content_type = request.read(), request.headers["content-type"]

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 10_000):
            yield body[start : start + 10_000]

    response = await call(endpoint, content=chunks(), headers={"Content-Type": content_type})
    assert response.status_code == 202, response.text


# -- limits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "request_", "status", "phrases"),
    [
        (
            {"GATEWAY_MAX_FIELDS": "1"},
            {"data": {"label": "a", "other": "b"}, "files": {"doc": doc(10)}},
            400,
            ("more than 1 fields", SETTING + "GATEWAY_MAX_FIELDS"),
        ),
        (
            {"GATEWAY_MAX_FIELDS": "1"},
            {"json": {"label": "a", "other": "b"}},
            400,
            ("more than 1 fields", SETTING + "GATEWAY_MAX_FIELDS"),
        ),
        (
            {"GATEWAY_MAX_FILES": "1"},
            {"files": [("doc", doc(10)), ("doc", doc(10))]},
            400,
            ("more than 1 file parts", SETTING + "GATEWAY_MAX_FILES"),
        ),
        (
            {"GATEWAY_MAX_PART_BYTES": "1024"},
            {"data": {"label": "x" * 1025}, "files": {"doc": doc(10)}},
            413,
            ("'label'", "1 KiB", SETTING + "GATEWAY_MAX_PART_BYTES"),
        ),
        (
            {"GATEWAY_MAX_PART_BYTES": "1024"},
            {"data": {"label": "x" * 1025}},  # urlencoded
            413,
            ("'label'", SETTING + "GATEWAY_MAX_PART_BYTES"),
        ),
        (
            {"GATEWAY_MAX_BODY_BYTES": str(64 * 1024)},
            {"files": {"doc": doc(64 * 1024)}},
            413,
            ("64 KiB", SETTING + "GATEWAY_MAX_BODY_BYTES"),
        ),
    ],
    ids=["form fields", "json fields", "files", "text field", "urlencoded field", "body"],
)
async def test_each_limit(
    endpoint: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, str],
    request_: dict[str, Any],
    status: int,
    phrases: tuple[str, ...],
) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(SETTING + name, value)
    refused(await call(endpoint, **request_), status, *phrases)


async def test_a_chunked_body_over_the_limit_is_413(
    endpoint: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SETTING + "GATEWAY_MAX_BODY_BYTES", str(64 * 1024))
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"label": "'
        for i in range(64):
            sent.append(i)
            yield b"y" * 16 * 1024
        yield b'"}'

    response = await call(endpoint, content=chunks(), headers={"Content-Type": "application/json"})
    refused(response, 413, "64 KiB", SETTING + "GATEWAY_MAX_BODY_BYTES")
    assert len(sent) < 64  # refused while the body was still coming


# -- malformed bodies ------------------------------------------------------------------------------


def _part(disposition: str, content: bytes) -> bytes:
    return b"--b\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + content + b"\r\n"


@pytest.mark.parametrize(
    ("content_type", "body", "phrase"),
    [
        ("multipart/form-data", b"--b\r\n", "no boundary"),
        ("multipart/form-data; boundary=b", _part('form-data; name="label"', b"x"), "cut short"),
        ("multipart/form-data; boundary=b", _part("form-data", b"x") + b"--b--", "no field name"),
        ("multipart/form-data; boundary=b", b"", "has no parts"),
        ("multipart/form-data; boundary=b", b"garbage", "not well formed"),
        ("application/json", b"[1]", "must be a JSON object"),
        ("text/csv", b"a,b", "is not accepted"),
        # a form's empty file input counts as not given: `doc` is required
        (
            "multipart/form-data; boundary=b",
            _part('form-data; name="doc"; filename=""', b"") + b"--b--",
            "'doc' is required",
        ),
        (
            "multipart/form-data; boundary=b",
            _part('form-data; name="label"; filename="l.txt"', b"x") + b"--b--",
            "this input is not a file",
        ),
    ],
)
async def test_malformed_bodies_are_400(
    endpoint: dict[str, str], content_type: str, body: bytes, phrase: str
) -> None:
    response = await call(endpoint, content=body, headers={"Content-Type": content_type})
    refused(response, 415 if content_type == "text/csv" else 400, phrase)


# -- temporary files -------------------------------------------------------------------------------


async def test_no_temporary_file_stays_after_a_request(
    endpoint: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to see open file descriptors")
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where Starlette spools uploads
    # Keep each parsed upload alive, so that only the gateway closing it closes its file.
    uploads: list[bodies.UploadedFile] = []
    parsed = bodies._uploaded
    monkeypatch.setattr(
        bodies, "_uploaded", lambda upload: uploads.append(parsed(upload)) or uploads[-1]
    )
    big = doc(2 * MiB)  # over Starlette's 1 MiB in memory: spooled to disk
    two = httpx.Request("POST", "http://x/", files=[("doc", big), ("doc", big)])
    body, content_type = two.read(), two.headers["content-type"]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: read until over the limit
        for start in range(0, len(body), MiB):
            yield body[start : start + MiB]

    answers = [
        await call(endpoint, files={"doc": big}),  # stored, execution created
        await call(endpoint, files={"doc": big}, data={"other": "x"}),  # bad input
        await call(endpoint, content=body[:-100], headers={"Content-Type": content_type}),  # cut
    ]
    monkeypatch.setenv(SETTING + "GATEWAY_MAX_BODY_BYTES", str(3 * MiB))
    answers.append(await call(endpoint, content=chunked(), headers={"Content-Type": content_type}))
    assert [a.status_code for a in answers] == [202, 400, 400, 413], [a.text for a in answers]
    assert len(uploads) == 2 and all(upload.content.closed for upload in uploads)  # type: ignore[union-attr]
    assert leftovers(spool) == []
