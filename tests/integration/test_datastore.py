"""The data stores for real: both backends through one interface (a directory under tmp_path,
and moto's S3 server in its own process, tests/support/s3_server.py), then what only each one
does: plain files under a root, prefixes, multipart uploads, integrity checks, errors that name
the endpoint and the bucket.

The pure rules (keys, blocks) are tests/unit/test_datastore_rules.py; an S3 server that dies,
tests/e2e/test_s3_outages.py.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from prefect_pipedeploy.datastore import DataStore, LocalDataStore, S3DataStore
from prefect_pipedeploy.exceptions import (
    DataStoreError,
    DataStoreIntegrityError,
    DataStoreObjectNotFound,
    InvalidDataStoreKey,
)
from tests.support.s3_server import free_port, make_store, multipart_store, s3_client
from tests.support.streams import MiB, OneWayStream, SecondPassTrap, payload, sha256

SHA256_OF_NOTHING = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


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
