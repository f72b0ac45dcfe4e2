"""Tests of the data stores: the key rules, both backends through one interface, S3 integrity.

Key validation is pure and tested with tables. The backends run for real: a directory under
tmp_path, and moto's S3 server in its own process (tests/s3_server.py).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import os
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import SecretStr, ValidationError

from prefect_pipedeploy.datastore import (
    DataStore,
    LocalDataStore,
    ObjectInfo,
    S3DataStore,
    aregister_datastore_blocks,
    register_datastore_blocks,
    validate_key,
)
from prefect_pipedeploy.exceptions import (
    DataStoreError,
    DataStoreIntegrityError,
    DataStoreObjectNotFound,
    InvalidDataStoreKey,
    PipeDeployError,
)
from tests.s3_server import (
    free_port,
    make_bucket,
    make_store,
    running_moto_server,
    s3_client,
)

# The shared fixtures, imported under other names so that test parameters named like them do
# not redefine an import (ruff F811); pytest registers them under their declared names.
from tests.s3_server import s3_bucket as s3_bucket_fixture  # noqa: F401
from tests.s3_server import s3_server as s3_server_fixture  # noqa: F401
from tests.s3_server import s3_store as s3_store_fixture  # noqa: F401

MiB = 1024 * 1024
SHA256_OF_NOTHING = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class OneWayStream:
    """A stream that cannot seek and gives short reads, like a pipe or an HTTP body."""

    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        self._data = io.BytesIO(data)
        self._fail_at = fail_at

    def read(self, size: int = -1) -> bytes:
        if self._fail_at is not None and self._data.tell() >= self._fail_at:
            raise OSError("the source device went away")
        return self._data.read(min(size, 100_000) if size >= 0 else -1)


class SecondPassTrap(io.BytesIO):
    """A seekable stream that springs `trap` once a read after a rewind passes `offset`.

    S3DataStore reads a seekable source twice: once to hash it, then, rewound, to upload it.
    """

    def __init__(self, data: bytes, offset: int, trap: Callable[[SecondPassTrap], None]) -> None:
        super().__init__(data)
        self.offset = offset
        self.trap = trap
        self.rewound = False

    def seek(self, position: int, whence: int = 0) -> int:
        self.rewound = True
        return super().seek(position, whence)

    def read(self, size: int | None = -1) -> bytes:
        if self.rewound and self.tell() >= self.offset:
            self.trap(self)
        return super().read(size)


# -- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "normalized"),
    [
        ("data.csv", "data.csv"),
        ("inputs/2024/data.csv", "inputs/2024/data.csv"),
        ("./inputs/data.csv", "inputs/data.csv"),
        ("a/./b", "a/b"),
        ("runs/2024-05-01T12:30:00/out.json", "runs/2024-05-01T12:30:00/out.json"),
        ("données/été.csv", "données/été.csv"),
        ("with space/x y.txt", "with space/x y.txt"),
        ("..hidden/.env", "..hidden/.env"),
        ("k" * 1024, "k" * 1024),
    ],
)
def test_validate_key_accepts_relative_keys(key: str, normalized: str) -> None:
    assert validate_key(key) == normalized


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "is empty"),
        (".", "is empty"),
        ("/etc/passwd", "is absolute"),
        ("../x", "`..` segment"),
        ("a/../../x", "`..` segment"),
        ("a/..", "`..` segment"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("a\\b", "backslash"),
        ("..\\x", "backslash"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("x/.pipedeploy-partial-1", "reserved for the store"),
        ("k" * 1025, "longer than 1024 bytes"),
        ("é" * 513, "longer than 1024 bytes"),
        (123, "not a string"),
    ],
)
def test_validate_key_refuses_unsafe_keys(key: Any, reason: str) -> None:
    with pytest.raises(InvalidDataStoreKey) as caught:
        validate_key(key)
    message = str(caught.value)
    assert repr(key) in message
    assert reason in message
    assert "use a relative key" in message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, PipeDeployError)


# -- blocks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "slug", "fields"),
    [
        (LocalDataStore, "pipedeploy-local-data-store", {"root"}),
        (
            S3DataStore,
            "pipedeploy-s3-data-store",
            {
                "bucket",
                "prefix",
                "endpoint_url",
                "region_name",
                "aws_access_key_id",
                "aws_secret_access_key",
                "aws_session_token",
                "addressing_style",
                "multipart_threshold_mib",
                "multipart_part_size_mib",
            },
        ),
    ],
)
def test_block_type_and_schema_build_without_a_server(
    block: type[DataStore], slug: str, fields: set[str]
) -> None:
    block_type = block._to_block_type()
    assert (block_type.slug, block_type.description) == (slug, block.get_description())
    assert block_type.description and block_type.code_example
    properties = block._to_block_schema().fields["properties"]
    assert set(properties) == fields
    assert all(properties[name].get("description") for name in fields)


def test_s3_block_keeps_credentials_secret() -> None:
    store = S3DataStore(
        bucket="ml-data",
        aws_access_key_id=SecretStr("AKIDEXAMPLE"),
        aws_secret_access_key=SecretStr("very-secret"),
    )
    schema = S3DataStore._to_block_schema().fields
    assert set(schema["secret_fields"]) == {
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
    }
    assert "very-secret" not in repr(store)
    assert "very-secret" not in store.model_dump_json()


def test_local_block_dumps_its_root(tmp_path: Path) -> None:
    assert LocalDataStore(root=str(tmp_path)).model_dump()["root"] == str(tmp_path)


def test_data_store_is_an_interface() -> None:
    with pytest.raises(TypeError):
        DataStore()  # type: ignore[abstract]


def test_block_delete_is_not_shadowed() -> None:
    # `delete`/`adelete` stay Prefect's (delete a saved block document); objects have their own.
    from prefect.blocks.core import Block

    for store_type in (LocalDataStore, S3DataStore):
        assert store_type.delete.__func__ is Block.delete.__func__  # type: ignore[attr-defined]
        assert store_type.adelete.__func__ is Block.adelete.__func__  # type: ignore[attr-defined]


def test_registration_has_sync_and_async_forms() -> None:
    assert callable(register_datastore_blocks)
    assert inspect.iscoroutinefunction(aregister_datastore_blocks)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bucket": "s3://ml-data"}, "bucket 's3://ml-data' is not a bucket name"),
        ({"bucket": "ml-data/folder"}, "put folders in `prefix`"),
        ({"prefix": "../other"}, "prefix '../other' is not a safe folder"),
        ({"endpoint_url": "127.0.0.1:9000"}, "endpoint_url '127.0.0.1:9000' is not an http(s)"),
        ({"aws_access_key_id": "AKID"}, "aws_access_key_id and aws_secret_access_key go together"),
        ({"aws_session_token": "token"}, "aws_session_token needs aws_access_key_id"),
        ({"multipart_part_size_mib": 1}, "multipart_part_size_mib"),
    ],
)
def test_s3_block_fields_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        S3DataStore(**{"bucket": "ml-data", **fields})
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("prefix", "normalized"), [("", ""), ("/team/ml/", "team/ml"), ("./a/b", "a/b")]
)
def test_s3_prefix_is_normalized(prefix: str, normalized: str) -> None:
    assert S3DataStore(bucket="ml-data", prefix=prefix).prefix == normalized


# -- both backends ------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> DataStore:
    if request.param == "local":
        return LocalDataStore(root=str(tmp_path / "store"))
    return request.getfixturevalue("s3_store")


def test_upload_and_download_with_paths(store: DataStore, tmp_path: Path) -> None:
    data = payload(300_000)
    source = tmp_path / "source.bin"
    source.write_bytes(data)

    stored = store.upload(source, "inputs/data.bin")
    destination = tmp_path / "out" / "nested" / "copy.bin"
    fetched = store.download("inputs/data.bin", destination)

    assert destination.read_bytes() == data
    assert (stored.key, stored.size, stored.sha256) == ("inputs/data.bin", len(data), sha256(data))
    assert (fetched.size, fetched.sha256) == (len(data), sha256(data))
    assert not [p for p in destination.parent.iterdir() if p.name != "copy.bin"]


def test_upload_and_download_with_buffers(store: DataStore) -> None:
    data = payload(5000, seed=1)
    source = io.BytesIO(b"header" + data)
    source.seek(len(b"header"))  # a stream is read from where it stands

    store.upload(source, "buffers/data.bin")
    destination = io.BytesIO()
    store.download("buffers/data.bin", destination)

    assert destination.getvalue() == data


def test_upload_from_a_stream_that_cannot_seek(store: DataStore) -> None:
    data = payload(1_500_000, seed=2)
    info = store.upload(OneWayStream(data), "stream.bin")
    destination = io.BytesIO()
    store.download("stream.bin", destination)
    assert destination.getvalue() == data
    assert info.sha256 == sha256(data)


def test_upload_replaces_an_object_and_handles_empty_ones(store: DataStore) -> None:
    store.upload(io.BytesIO(b"first"), "object")
    info = store.upload(io.BytesIO(b""), "object")
    destination = io.BytesIO()
    store.download("object", destination)
    assert destination.getvalue() == b""
    assert (info.size, info.sha256) == (0, SHA256_OF_NOTHING)


def test_list_filters_by_prefix(store: DataStore) -> None:
    keys = ["in/a.csv", "in/b.csv", "in/sub/c.csv", "inbox/d.csv", "out/e.csv"]
    for key in keys:
        store.upload(io.BytesIO(key.encode()), key)

    def listed(prefix: str) -> list[str]:
        return [info.key for info in store.list(prefix)]

    assert listed("") == keys
    assert listed("in/") == ["in/a.csv", "in/b.csv", "in/sub/c.csv"]
    assert listed("in") == ["in/a.csv", "in/b.csv", "in/sub/c.csv", "inbox/d.csv"]
    assert listed("in/sub/") == ["in/sub/c.csv"]
    assert listed("in/b") == ["in/b.csv"]
    assert listed("nothing/") == []
    assert [info.size for info in store.list("out/")] == [len(b"out/e.csv")]


def test_list_reads_every_page(store: DataStore) -> None:
    keys = [f"many/{number:03d}.txt" for number in range(23)]
    for key in keys:
        store.upload(io.BytesIO(b"x"), key)
    assert [info.key for info in store.list("many/", page_size=10)] == keys


def test_list_refuses_an_unsafe_prefix(store: DataStore) -> None:
    with pytest.raises(InvalidDataStoreKey, match=r"'\.\./'"):
        store.list("../")
    with pytest.raises(ValueError, match="page_size"):
        store.list("", page_size=0)


def test_info_describes_an_object(store: DataStore) -> None:
    data = payload(1234, seed=3)
    before = datetime.now(timezone.utc)
    store.upload(io.BytesIO(data), "described.bin")

    info = store.info("described.bin")

    assert (info.key, info.size, info.sha256) == ("described.bin", 1234, sha256(data))
    assert info.last_modified.tzinfo == timezone.utc
    slack = timedelta(seconds=5)
    assert before - slack <= info.last_modified <= datetime.now(timezone.utc) + slack
    assert store.list()[0].model_dump(exclude={"sha256"}) == info.model_dump(exclude={"sha256"})


def test_delete_removes_an_object(store: DataStore) -> None:
    store.upload(io.BytesIO(b"x"), "gone/soon.txt")
    assert store.exists("gone/soon.txt")

    store.delete_object("gone/soon.txt")

    assert not store.exists("gone/soon.txt")
    assert store.list() == []
    with pytest.raises(DataStoreObjectNotFound, match="'gone/soon.txt'"):
        store.delete_object("gone/soon.txt")
    store.delete_object("gone/soon.txt", missing_ok=True)


def test_a_missing_object_is_reported_by_key(store: DataStore, tmp_path: Path) -> None:
    destination = tmp_path / "out" / "missing.bin"
    with pytest.raises(DataStoreObjectNotFound, match="no object 'no/such.bin'"):
        store.download("no/such.bin", destination)
    assert not destination.exists()
    assert list(destination.parent.iterdir()) == []

    buffer = io.BytesIO()
    with pytest.raises(DataStoreObjectNotFound):
        store.download("no/such.bin", buffer)
    assert buffer.getvalue() == b""
    with pytest.raises(DataStoreObjectNotFound, match="'no/such.bin'"):
        store.info("no/such.bin")
    assert not store.exists("no/such.bin")


@pytest.mark.parametrize("key", ["../escape.txt", "/tmp/escape.txt", "a/../../escape.txt"])
def test_keys_leaving_the_store_are_refused(store: DataStore, tmp_path: Path, key: str) -> None:
    operations: list[Callable[[], object]] = [
        lambda: store.upload(io.BytesIO(b"x"), key),
        lambda: store.download(key, tmp_path / "out.bin"),
        lambda: store.info(key),
        lambda: store.exists(key),
        lambda: store.delete_object(key),
    ]
    for operation in operations:
        with pytest.raises(InvalidDataStoreKey, match=repr(key).replace(".", r"\.")):
            operation()
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "out.bin").exists()


def test_async_forms(store: DataStore, tmp_path: Path) -> None:
    async def scenario() -> None:
        stored = await store.aupload(io.BytesIO(b"async"), "async/a.txt")
        assert await store.aexists("async/a.txt")
        assert await store.ainfo("async/a.txt") == stored
        assert [info.key for info in await store.alist("async/")] == ["async/a.txt"]
        await store.adownload("async/a.txt", tmp_path / "a.txt")
        assert (tmp_path / "a.txt").read_bytes() == b"async"
        await store.adelete_object("async/a.txt")
        assert not await store.aexists("async/a.txt")

    anyio.run(scenario)


# -- local directory ----------------------------------------------------------------------------


def test_local_objects_are_plain_files_under_the_root(tmp_path: Path) -> None:
    store = LocalDataStore(root=str(tmp_path / "root"))
    store.upload(io.BytesIO(b"plain"), "a/b.txt")
    path = tmp_path / "root" / "a" / "b.txt"
    assert path.read_bytes() == b"plain"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_local_failed_upload_leaves_nothing(tmp_path: Path) -> None:
    store = LocalDataStore(root=str(tmp_path / "root"))
    store.upload(io.BytesIO(b"old"), "data.bin")

    with pytest.raises(DataStoreError, match="cannot read the source of 'data.bin'"):
        store.upload(OneWayStream(payload(3 * MiB), fail_at=2 * MiB), "data.bin")

    assert [p.name for p in (tmp_path / "root").iterdir()] == ["data.bin"]
    assert (tmp_path / "root" / "data.bin").read_bytes() == b"old"


def test_local_listing_hides_unfinished_writes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = LocalDataStore(root=str(root))
    store.upload(io.BytesIO(b"x"), "done.txt")
    (root / ".pipedeploy-partial-0123").write_bytes(b"half")
    assert [info.key for info in store.list()] == ["done.txt"]


def test_local_symbolic_link_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    store = LocalDataStore(root=str(root))

    with pytest.raises(InvalidDataStoreKey, match="symbolic link"):
        store.upload(io.BytesIO(b"x"), "link/escape.txt")
    assert list(outside.iterdir()) == []


def test_local_key_cannot_be_an_object_and_a_folder(tmp_path: Path) -> None:
    store = LocalDataStore(root=str(tmp_path / "root"))
    store.upload(io.BytesIO(b"x"), "a")
    store.upload(io.BytesIO(b"x"), "c/d")
    with pytest.raises(DataStoreError, match="both an object and a folder"):
        store.upload(io.BytesIO(b"x"), "a/b")
    with pytest.raises(DataStoreError, match="both an object and a folder"):
        store.upload(io.BytesIO(b"x"), "c")
    with pytest.raises(DataStoreObjectNotFound):
        store.info("a/b")


def test_local_relative_root_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    LocalDataStore(root="relative").upload(io.BytesIO(b"x"), "k.txt")
    assert (tmp_path / "relative" / "k.txt").read_bytes() == b"x"


def test_local_unreadable_source_file_is_reported(tmp_path: Path) -> None:
    store = LocalDataStore(root=str(tmp_path / "root"))
    with pytest.raises(DataStoreError, match="source file .*missing.bin.* cannot be read"):
        store.upload(tmp_path / "missing.bin", "k")


# -- S3 -----------------------------------------------------------------------------------------


def raw_keys(endpoint: str, bucket: str) -> list[str]:
    contents = s3_client(endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])
    return [item["Key"] for item in contents]


def open_multipart_uploads(endpoint: str, bucket: str) -> list[Any]:
    return s3_client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def multipart_store(endpoint: str, bucket: str) -> S3DataStore:
    return make_store(endpoint, bucket, multipart_threshold_mib=5, multipart_part_size_mib=5)


def test_s3_prefix_holds_the_store(s3_server: str, s3_bucket: str) -> None:
    s3_client(s3_server).put_object(Bucket=s3_bucket, Key="elsewhere.csv", Body=b"x")
    store = make_store(s3_server, s3_bucket, prefix="/team/ml/")

    store.upload(io.BytesIO(b"x"), "inputs/x.csv")

    assert raw_keys(s3_server, s3_bucket) == ["elsewhere.csv", "team/ml/inputs/x.csv"]
    assert [info.key for info in store.list()] == ["inputs/x.csv"]
    assert not store.exists("elsewhere.csv")


def test_s3_small_upload_is_one_put_with_its_sha256(s3_server: str, s3_bucket: str) -> None:
    store = make_store(s3_server, s3_bucket)
    data = payload(1000, seed=4)
    store.upload(io.BytesIO(data), "small.bin")
    head = s3_client(s3_server).head_object(Bucket=s3_bucket, Key="small.bin")
    assert head["Metadata"] == {"sha256": sha256(data)}
    assert "-" not in head["ETag"]


@pytest.mark.parametrize("source_kind", ["path", "stream"])
def test_s3_large_upload_goes_in_parts(
    s3_server: str, s3_bucket: str, tmp_path: Path, source_kind: str
) -> None:
    store = multipart_store(s3_server, s3_bucket)
    data = payload(11 * MiB, seed=5)
    source_path = tmp_path / "big.bin"
    source_path.write_bytes(data)
    source = source_path if source_kind == "path" else OneWayStream(data)

    info = store.upload(source, "big.bin")

    head = s3_client(s3_server).head_object(Bucket=s3_bucket, Key="big.bin")
    assert head["ETag"].endswith('-3"')  # three parts of 5, 5 and 1 MiB
    assert head["Metadata"] == {"sha256": sha256(data)}
    assert (info.size, info.sha256) == (len(data), sha256(data))
    destination = tmp_path / "copy.bin"
    store.download("big.bin", destination)
    assert destination.read_bytes() == data
    assert open_multipart_uploads(s3_server, s3_bucket) == []


def test_s3_corrupted_object_is_detected(s3_store: S3DataStore, tmp_path: Path) -> None:
    data = payload(2000, seed=6)
    store = s3_store
    store.upload(io.BytesIO(data), "models/model.bin")
    client = s3_client(store.endpoint_url or "")
    recorded = client.head_object(Bucket=store.bucket, Key="models/model.bin")["Metadata"]
    client.put_object(
        Bucket=store.bucket, Key="models/model.bin", Body=b"tampered" + data, Metadata=recorded
    )

    destination = tmp_path / "out" / "model.bin"
    with pytest.raises(DataStoreIntegrityError, match="object 'models/model.bin' .* is corrupt"):
        store.download("models/model.bin", destination)
    assert list(destination.parent.iterdir()) == []

    buffer = io.BytesIO()
    with pytest.raises(DataStoreIntegrityError):
        store.download("models/model.bin", buffer)
    assert buffer.getvalue() == b""


def test_s3_object_from_another_tool_downloads_unverified(s3_store: S3DataStore) -> None:
    client = s3_client(s3_store.endpoint_url or "")
    client.put_object(Bucket=s3_store.bucket, Key="external.csv", Body=b"a,b\n")

    assert s3_store.info("external.csv").sha256 is None
    buffer = io.BytesIO()
    assert s3_store.download("external.csv", buffer).sha256 == sha256(b"a,b\n")
    assert buffer.getvalue() == b"a,b\n"


def fail_reading(stream: SecondPassTrap) -> None:
    raise OSError("the source device went away")


def change_the_rest(stream: SecondPassTrap) -> None:
    with stream.getbuffer() as view:
        view[-1] ^= 0xFF


@pytest.mark.parametrize(
    ("trap", "message"),
    [
        (fail_reading, "cannot read the source of 'big.bin': the source device went away"),
        (change_the_rest, "the source changed while it was being uploaded"),
    ],
)
def test_s3_interrupted_upload_is_aborted(
    s3_server: str, s3_bucket: str, trap: Callable[[SecondPassTrap], None], message: str
) -> None:
    store = multipart_store(s3_server, s3_bucket)
    source = SecondPassTrap(payload(11 * MiB, seed=7), offset=6 * MiB, trap=trap)

    with pytest.raises(DataStoreError, match=message):
        store.upload(source, "big.bin")

    assert not store.exists("big.bin")
    assert raw_keys(s3_server, s3_bucket) == []
    assert open_multipart_uploads(s3_server, s3_bucket) == []


def test_s3_upload_to_a_server_that_dies(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with running_moto_server(tmp_path) as server:
        store = multipart_store(server.endpoint_url, make_bucket(server.endpoint_url))

        def kill_the_server(stream: SecondPassTrap) -> None:
            server.process.kill()
            server.process.wait()

        source = SecondPassTrap(payload(11 * MiB, seed=8), offset=6 * MiB, trap=kill_the_server)
        with caplog.at_level(logging.WARNING, logger="prefect_pipedeploy.datastore"):
            with pytest.raises(DataStoreError) as caught:
                store.upload(source, "big.bin")

    message = str(caught.value)
    assert f"cannot upload object 'big.bin' in {store.location()}" in message
    assert f"the S3 endpoint {server.endpoint_url} is unreachable" in message
    assert "check that the server is running" in message
    assert "Could not abort the unfinished multipart upload" in caplog.text


def test_s3_unreachable_endpoint_is_named(s3_bucket: str) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = make_store(endpoint, s3_bucket)
    with pytest.raises(DataStoreError, match=f"the S3 endpoint {endpoint} is unreachable"):
        store.exists("anything")


def test_s3_missing_bucket_is_named(s3_server: str) -> None:
    store = make_store(s3_server, "no-such-bucket")
    with pytest.raises(DataStoreError, match="the bucket 'no-such-bucket' does not exist"):
        store.upload(io.BytesIO(b"x"), "k")
    with pytest.raises(DataStoreError, match="the bucket 'no-such-bucket' does not exist"):
        store.list()


def test_object_info_is_kept_in_utc() -> None:
    local_time = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    info = ObjectInfo(key="k", size=1, last_modified=local_time)
    assert info.last_modified == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert info.last_modified.tzinfo == timezone.utc
    with pytest.raises(ValidationError, match="time zone"):
        ObjectInfo(key="k", size=1, last_modified=datetime(2024, 5, 1))
