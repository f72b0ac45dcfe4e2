"""The gateway's body parser (`gateway.bodies`) on its own: each limit at and past its value,
malformed bodies, field and file names, urlencoded decoding, and the temporary files Starlette
spools uploads to (open while the request needs them, gone once closed or on any error).
No server; bodies built by httpx as a client would send them, or written out byte by byte."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefect_pipedeploy.gateway.answers import GatewayError
from prefect_pipedeploy.gateway.bodies import BodyLimits, UploadedFile, close_files, parse_body
from tests.support.files import leftovers

pytestmark = pytest.mark.anyio

LIMITS = BodyLimits(body_bytes=64 * 1024, fields=3, files=2, part_bytes=100)

MULTIPART_B = "multipart/form-data; boundary=b"
URLENCODED = "application/x-www-form-urlencoded"


def multipart(
    data: dict[str, str] | None = None, files: list[tuple[str, Any]] | None = None
) -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart request as httpx writes it (text fields only: with
    boundary "b", as httpx would send them urlencoded)."""
    if not files:
        text = [part(f'form-data; name="{name}"', value.encode()) for name, value in data.items()]
        return MULTIPART_B, b"".join(text) + b"--b--\r\n"
    request = httpx.Request("POST", "http://x/", data=data or {}, files=files)
    return request.headers["content-type"], request.read()


def part(disposition: str, content: bytes = b"x") -> bytes:
    return b"--b\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + content + b"\r\n"


def fields(n: int) -> dict[str, str]:
    return {f"f{i}": "v" for i in range(n)}


def files(n: int, size: int = 10) -> list[tuple[str, Any]]:
    return [(f"doc{i}", (f"d{i}.bin", b"z" * size, "application/octet-stream")) for i in range(n)]


# -- limits ----------------------------------------------------------------------------------------


def _limit_cases() -> Iterator[Any]:
    """(content type, body, status or None for accepted, phrase); LIMITS apply."""
    yield pytest.param(*multipart(fields(3)), None, "", id="multipart fields at the limit")
    yield pytest.param(
        *multipart(fields(4)), 400, "GATEWAY_MAX_FIELDS", id="multipart fields past it"
    )
    yield pytest.param(URLENCODED, b"a=1&b=2&c=3", None, "", id="urlencoded fields at the limit")
    yield pytest.param(
        URLENCODED, b"a=1&b=2&c=3&d=4", 400, "GATEWAY_MAX_FIELDS", id="urlencoded fields past it"
    )
    yield pytest.param(
        "application/json", b'{"a": 1, "b": 2, "c": 3}', None, "", id="json keys at the limit"
    )
    yield pytest.param(
        "application/json",
        b'{"a": 1, "b": 2, "c": 3, "d": 4}',
        400,
        "GATEWAY_MAX_FIELDS",
        id="json keys past it",
    )
    yield pytest.param(*multipart(files=files(2)), None, "", id="files at the limit")
    yield pytest.param(*multipart(files=files(3)), 400, "GATEWAY_MAX_FILES", id="files past it")
    yield pytest.param(
        *multipart({"f": "x" * 100}), None, "", id="multipart text field at the limit"
    )
    yield pytest.param(
        *multipart({"f": "x" * 101}), 413, "GATEWAY_MAX_PART_BYTES", id="multipart text past it"
    )
    yield pytest.param(
        URLENCODED, b"f=" + b"x" * 99, None, "", id="urlencoded field (name and value) at it"
    )
    yield pytest.param(
        URLENCODED, b"f=" + b"x" * 100, 413, "GATEWAY_MAX_PART_BYTES", id="urlencoded past it"
    )
    yield pytest.param(
        *multipart(files=files(1, size=10_000)), None, "", id="a file part is not a text field"
    )
    yield pytest.param(
        "application/json",
        b'{"a": "' + b"x" * (64 * 1024 - 9) + b'"}',
        None,
        "",
        id="body at the limit",
    )
    yield pytest.param(
        "application/json",
        b'{"a": "' + b"x" * (64 * 1024 - 8) + b'"}',
        413,
        "GATEWAY_MAX_BODY_BYTES",
        id="json body past it",
    )
    yield pytest.param(
        *multipart(files=files(1, size=64 * 1024)),
        413,
        "GATEWAY_MAX_BODY_BYTES",
        id="multipart body past it",
    )
    yield pytest.param(
        URLENCODED, b"a=" + b"x" * 64 * 1024, 413, "GATEWAY_MAX_BODY_BYTES", id="form past it"
    )
    yield pytest.param(
        "text/plain", b"x" * 100 * 1024, 415, "is not accepted", id="another type is not read"
    )


@pytest.mark.parametrize(("content_type", "body", "status", "phrase"), list(_limit_cases()))
async def test_limits(content_type: str, body: bytes, status: int | None, phrase: str) -> None:
    if status is None:
        items, _ = await parse_body(content_type, body, LIMITS)
        assert items
        close_files(items)
        return
    with pytest.raises(GatewayError) as caught:
        await parse_body(content_type, body, LIMITS)
    assert caught.value.status_code == status
    assert phrase in caught.value.message
    if phrase.startswith("GATEWAY_"):
        assert f"PREFECT_INTEGRATIONS_PIPEDEPLOY_{phrase}" in caught.value.message


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_a_streamed_body_is_refused_as_soon_as_it_is_over_the_limit() -> None:
    read: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a": "'
        for i in range(100):
            read.append(i)
            yield b"y" * 16 * 1024
        yield b'"}'

    with pytest.raises(GatewayError) as caught:
        await parse_body("application/json", chunks(), LIMITS)
    assert caught.value.status_code == 413
    assert "64 KiB" in caught.value.message
    assert len(read) == 4  # the chunk that went over was the last one read


def test_the_limits_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_MAX_"
    for name, value in (("BODY_BYTES", "5"), ("FIELDS", "6"), ("FILES", "7"), ("PART_BYTES", "8")):
        monkeypatch.setenv(prefix + name, value)
    assert BodyLimits.from_settings() == BodyLimits(5, 6, 7, 8)


# -- malformed bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "phrase"),
    [
        ("multipart/form-data", part('form-data; name="a"') + b"--b--", "no boundary"),
        (MULTIPART_B, b"", "has no parts"),
        (MULTIPART_B, part('form-data; name="a"', b"1"), "cut short"),
        (MULTIPART_B, part('form-data; name="a"', b"1")[:-20], "cut short"),
        (MULTIPART_B, part("form-data") + b"--b--", "no field name"),
        (MULTIPART_B, part('form-data; filename="a.txt"') + b"--b--", "no field name"),
        (MULTIPART_B, b"--b\r\n\r\n1\r\n--b--", "no field name"),
        (MULTIPART_B, b"hello", "not well formed"),
        (MULTIPART_B, b"--b\r\nbad header\r\n\r\n1\r\n--b--", "not well formed"),
        (MULTIPART_B, b"--b\r\nContent-Disposition form-data\r\n\r\n1\r\n--b--", "not well formed"),
        ("multipart/form-data; boundary=" + "b" * 300, b"--b", "not well formed"),
    ],
)
async def test_malformed_multipart_bodies(content_type: str, body: bytes, phrase: str) -> None:
    with pytest.raises(GatewayError) as caught:
        await parse_body(content_type, body, LIMITS)
    assert caught.value.status_code == 400
    assert phrase in caught.value.message
    assert "Traceback" not in caught.value.message


async def test_an_empty_multipart_body_with_its_closing_boundary_has_no_fields() -> None:
    assert await parse_body(MULTIPART_B, b"--b--\r\n", LIMITS) == ([], True)


# -- names and content -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("disposition", "name", "filename"),
    [
        ('form-data; name="doc"; filename="data.csv"', "doc", "data.csv"),
        ("form-data; name=doc; filename=data.csv", "doc", "data.csv"),
        ("form-data; name=\"doc\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt", "doc", "résumé.txt"),
        ('form-data; name="doc"; filename="résumé.txt"', "doc", "résumé.txt"),  # raw UTF-8
        ("form-data; name*=UTF-8''n%C3%A9; filename=\"a\"", "né", "a"),
        # both: the plain value counts (RFC 7578), as the e-mail parser reads it
        (
            'form-data; name="doc"; filename="cv.txt"; filename*=UTF-8\'\'cv%C3%A9.txt',
            "doc",
            "cv.txt",
        ),
        ('form-data; name="doc"; filename="a\\"b;c.txt"', "doc", 'a"b;c.txt'),
        ('form-data; name="doc"; filename=""', "doc", ""),  # a form's empty file input
    ],
)
async def test_field_and_file_names(disposition: str, name: str, filename: str) -> None:
    items, form = await parse_body(MULTIPART_B, part(disposition, b"\x00\xff") + b"--b--", LIMITS)
    assert form
    [(got_name, upload)] = items
    assert got_name == name
    assert isinstance(upload, UploadedFile)
    assert upload.filename == filename
    assert upload.content_type == "application/octet-stream"  # no Content-Type header
    assert upload.read() == b"\x00\xff"
    close_files(items)


async def test_a_multipart_body_streamed_in_small_chunks() -> None:
    blob = bytes(range(256)) * 40 + b"\r\n--b\r\n--" + bytes(range(256))
    content_type, body = multipart(
        {"text": "héllo", "times": "2"}, [("doc", ("r.bin", blob, "image/png"))]
    )
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    items, form = await parse_body(
        content_type, _chunks(*chunks), LIMITS.__class__(10**6, 3, 2, 100)
    )
    assert form and [name for name, _ in items] == ["text", "times", "doc"]
    assert items[0][1] == "héllo" and items[1][1] == "2"
    upload = items[2][1]
    assert upload.read() == blob and upload.size == len(blob)
    assert upload.content_type == "image/png"
    close_files(items)


@pytest.mark.parametrize(
    ("body", "items"),
    [
        (b"a=1&b=x+y", [("a", "1"), ("b", "x y")]),
        (b"a&b=&&c=%C3%A9", [("a", ""), ("b", ""), ("c", "é")]),
        ("t=héllo".encode(), [("t", "héllo")]),  # `curl -d` sends UTF-8 unencoded
        (b"t=%ZZ%2", [("t", "%ZZ%2")]),
        (b"", []),
    ],
)
async def test_urlencoded_forms(body: bytes, items: list[tuple[str, str]]) -> None:
    assert await parse_body(URLENCODED, body, LIMITS) == (items, True)


# -- temporary files -------------------------------------------------------------------------------


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory Starlette spools uploads to, for this test only."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to see open file descriptors")
    directory = tmp_path / "spool"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


BIG = 2 * 1024 * 1024  # over Starlette's 1 MiB in memory: spooled to disk


async def test_uploads_spool_to_disk_until_closed(spool: Path) -> None:
    content_type, body = multipart(files=files(2, size=BIG))
    items, _ = await parse_body(content_type, body, BodyLimits(10 * BIG, 3, 2, 100))
    assert len(leftovers(spool)) == 2  # on disk while the request uses them
    assert all(upload.size == BIG for _, upload in items)
    close_files(items)
    assert leftovers(spool) == []


def _spooling_failures() -> Iterator[Any]:
    """(content type, body, limit of the body's size, status): each fails after a file was
    spooled to disk."""
    content_type, body = multipart({"f": "v"}, files(2, size=BIG))
    yield pytest.param(content_type, body[:-10], 5 * BIG, 400, id="cut short")
    yield pytest.param(content_type, body[:-BIG], 5 * BIG, 400, id="cut short in a file")
    spooled = part('form-data; name="doc"; filename="d.bin"', b"z" * BIG)
    yield pytest.param(
        MULTIPART_B, spooled + b"--b\r\nbad header\r\n\r\n1\r\n--b--", 5 * BIG, 400, id="malformed"
    )
    yield pytest.param(content_type, body, BIG * 3 // 2, 413, id="over the body limit")
    yield pytest.param(*multipart(files=files(3, size=BIG)), 5 * BIG, 400, id="too many files")
    too_large = spooled + part('form-data; name="f"', b"x" * 101) + b"--b--\r\n"
    yield pytest.param(MULTIPART_B, too_large, 5 * BIG, 413, id="a text field too large")


@pytest.mark.parametrize(
    ("content_type", "body", "body_bytes", "status"), list(_spooling_failures())
)
async def test_a_refused_body_leaves_no_temporary_file(
    spool: Path, content_type: str, body: bytes, body_bytes: int, status: int
) -> None:
    limits = BodyLimits(body_bytes=body_bytes, fields=3, files=2, part_bytes=100)
    chunks = [body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024)]
    with pytest.raises(GatewayError) as caught:
        await parse_body(content_type, _chunks(*chunks), limits)
    assert caught.value.status_code == status
    assert leftovers(spool) == []
