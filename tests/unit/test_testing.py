"""The shipped fakes: `InMemoryDataStore` behaves like `LocalDataStore`, `temporary_settings`
overrides settings for a block.

The data store scenarios are tables of operations run, in the same order, on a LocalDataStore
in a temporary directory and on an InMemoryDataStore, through the sync verbs and through the
async ones; every outcome (value or error type) must be the same on both.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prefect_pipedeploy.datastore import DataStore, LocalDataStore, ObjectInfo
from prefect_pipedeploy.exceptions import InvalidSettings
from prefect_pipedeploy.settings import env_name, get_settings
from prefect_pipedeploy.testing import InMemoryDataStore, temporary_settings

BIG = bytes(range(256)) * 9000  # over 2 MiB: more than one chunk of the copies

Op = tuple[Any, ...]

SCENARIOS: dict[str, list[Op]] = {
    "round trip": [
        ("upload", "inputs/data.csv", b"a,b\n1,2\n"),
        ("info", "inputs/data.csv"),
        ("download", "inputs/data.csv"),
        ("download_path", "inputs/data.csv"),
        ("exists", "inputs/data.csv"),
        ("exists", "inputs"),
        ("list", ""),
        ("list", "inputs/"),
        ("delete", "inputs/data.csv"),
        ("exists", "inputs/data.csv"),
        ("list", ""),
    ],
    "upload from a file path": [
        ("upload_path", "models/model.pkl", b"weights"),
        ("download", "models/model.pkl"),
        ("info", "models/model.pkl"),
    ],
    "replace, empty and large objects": [
        ("upload", "object", b"first"),
        ("upload", "object", b"second, longer"),
        ("info", "object"),
        ("download", "object"),
        ("upload", "empty", b""),
        ("info", "empty"),
        ("download", "empty"),
        ("upload", "big.bin", BIG),
        ("info", "big.bin"),
        ("download", "big.bin"),
    ],
    "keys are normalized": [
        ("upload", "./a/./b.txt", b"x"),
        ("exists", "a/b.txt"),
        ("info", "a/./b.txt"),
        ("list", "./a/"),
    ],
    "unsafe keys are refused": [
        ("upload", "../escape.txt", b"x"),
        ("upload", "/tmp/escape.txt", b"x"),
        ("upload", "a//b", b"x"),
        ("upload", "a/", b"x"),
        ("upload", "", b"x"),
        ("upload", "a\\b", b"x"),
        ("upload", "nul\x00.txt", b"x"),
        ("upload", ".pipedeploy-partial-1/x", b"x"),
        ("upload", "k" * 1025, b"x"),
        ("info", "a/../../b"),
        ("download", "../x"),
        ("exists", "/x"),
        ("delete", ".."),
        ("list", "../"),
        ("list", "/abs"),
        ("list", ""),
    ],
    "missing objects": [
        ("info", "nope"),
        ("download", "nope"),
        ("download_path", "nope"),
        ("delete", "nope"),
        ("delete_missing_ok", "nope"),
        ("exists", "nope"),
        ("list", "nope"),
    ],
    "a key is an object or a folder, not both": [
        ("upload", "a/b", b"x"),
        ("upload", "a", b"y"),
        ("upload", "a/b/c", b"z"),
        ("info", "a"),
        ("list", ""),
        ("delete", "a"),
    ],
    "listing is sorted and filtered by prefix": [
        ("upload", "b", b"1"),
        ("upload", "a/c", b"22"),
        ("upload", "a/b", b"333"),
        ("upload", "ab", b"4444"),
        ("upload", "a/d/e", b"55555"),
        ("list", ""),
        ("list", "a"),
        ("list", "a/"),
        ("list", "a/d/"),
        ("list", "c"),
        ("list_page", "", 0),
        ("list_page", "", 1001),
        ("list_page", "", 1),
    ],
}


def outcome(value: Any) -> Any:
    """What may be compared across stores: no modification times, no store locations."""
    if isinstance(value, ObjectInfo):
        return ("info", value.key, value.size, value.sha256)
    if isinstance(value, list):
        return [outcome(item) for item in value]
    return value


def sync_step(store: DataStore, op: Op, tmp_path: Path) -> Any:
    verb, key, *rest = op
    if verb == "upload":
        return store.upload(io.BytesIO(rest[0]), key)
    if verb == "upload_path":
        source = tmp_path / "source.bin"
        source.write_bytes(rest[0])
        return store.upload(source, key)
    if verb == "download":
        out = io.BytesIO()
        info = store.download(key, out)
        return (outcome(info), out.getvalue())
    if verb == "download_path":
        destination = tmp_path / "downloads" / "copy.bin"
        info = store.download(key, destination)
        return (outcome(info), destination.read_bytes())
    if verb == "info":
        return store.info(key)
    if verb == "exists":
        return store.exists(key)
    if verb == "list":
        return store.list(key)
    if verb == "list_page":
        return store.list(key, page_size=rest[0])
    if verb == "delete":
        return store.delete_object(key)
    if verb == "delete_missing_ok":
        return store.delete_object(key, missing_ok=True)
    raise AssertionError(verb)


async def async_step(store: DataStore, op: Op, tmp_path: Path) -> Any:
    verb, key, *rest = op
    if verb == "upload":
        return await store.aupload(io.BytesIO(rest[0]), key)
    if verb == "upload_path":
        source = tmp_path / "source.bin"
        source.write_bytes(rest[0])
        return await store.aupload(source, key)
    if verb == "download":
        out = io.BytesIO()
        info = await store.adownload(key, out)
        return (outcome(info), out.getvalue())
    if verb == "download_path":
        destination = tmp_path / "downloads" / "copy.bin"
        info = await store.adownload(key, destination)
        return (outcome(info), destination.read_bytes())
    if verb == "info":
        return await store.ainfo(key)
    if verb == "exists":
        return await store.aexists(key)
    if verb == "list":
        return await store.alist(key)
    if verb == "list_page":
        return await store.alist(key, page_size=rest[0])
    if verb == "delete":
        return await store.adelete_object(key)
    if verb == "delete_missing_ok":
        return await store.adelete_object(key, missing_ok=True)
    raise AssertionError(verb)


def run(store: DataStore, ops: list[Op], tmp_path: Path, asynchronous: bool) -> list[Any]:
    """Every operation's outcome; an error counts as its type and whether it names the key."""
    results: list[Any] = []
    for op in ops:
        try:
            if asynchronous:
                value = asyncio.run(async_step(store, op, tmp_path))
            else:
                value = sync_step(store, op, tmp_path)
            results.append((op[0], op[1][:40], outcome(value)))
        except Exception as exc:
            names_key = repr(op[1]) in str(exc) or op[1] == ""
            results.append((op[0], op[1][:40], type(exc).__name__, names_key))
    return results


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_in_memory_store_behaves_like_the_local_one(
    scenario: str, asynchronous: bool, tmp_path: Path
) -> None:
    ops = SCENARIOS[scenario]
    (tmp_path / "local-work").mkdir()
    (tmp_path / "memory-work").mkdir()
    local = run(
        LocalDataStore(root=str(tmp_path / "store")), ops, tmp_path / "local-work", asynchronous
    )
    memory = run(InMemoryDataStore(), ops, tmp_path / "memory-work", asynchronous)
    assert memory == local
    assert len(memory) == len(ops)


def test_scenarios_cover_every_outcome_kind(tmp_path: Path) -> None:
    """The table exercises successes, each error type, and errors that name their key."""
    kinds = set()
    for ops in SCENARIOS.values():
        for result in run(InMemoryDataStore(), ops, tmp_path, asynchronous=False):
            kinds.add(result[2] if len(result) == 4 else "ok")
    assert {
        "ok",
        "InvalidDataStoreKey",
        "DataStoreObjectNotFound",
        "DataStoreError",
        "ValueError",
    } <= kinds


def test_sha256_and_infos_are_the_content_s() -> None:
    store = InMemoryDataStore()
    stored = store.upload(io.BytesIO(b"hello"), "k")
    assert stored.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert store.info("k") == stored
    assert store.list() == [stored.model_copy(update={"sha256": None})]
    assert stored.last_modified.tzinfo is not None


def test_stores_are_separate_and_copies_share_their_objects() -> None:
    store = InMemoryDataStore()
    store.upload(io.BytesIO(b"x"), "k")
    assert not InMemoryDataStore().exists("k")
    assert copy.deepcopy(store).exists("k") and store.model_copy().exists("k")
    assert store.location().startswith("memory://")
    assert InMemoryDataStore().location() != store.location()


def test_is_a_data_store_block_of_its_own_type() -> None:
    assert isinstance(InMemoryDataStore(), DataStore)
    assert InMemoryDataStore.get_block_type_slug() == "pipedeploy-in-memory-data-store"


def test_concurrent_writers_lose_nothing() -> None:
    store = InMemoryDataStore()

    def write(worker: int) -> None:
        for i in range(50):
            store.upload(io.BytesIO(f"{worker}-{i}".encode()), f"w{worker}/{i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.list()) == 200


def test_the_module_docstring_example() -> None:
    def publish(store: DataStore, scores: list[int]) -> None:
        store.upload(io.BytesIO(",".join(map(str, scores)).encode()), "scores/latest.csv")

    store = InMemoryDataStore()
    publish(store, [1, 2])
    assert store.info("scores/latest.csv").size == 3
    assert [o.key for o in store.list("scores/")] == ["scores/latest.csv"]
    with temporary_settings(default_pool="test-pool", poll_seconds=0.5):
        assert get_settings().default_pool == "test-pool"


# -- temporary_settings ------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], None]:
    def set_variable(setting: str, value: str) -> None:
        monkeypatch.setenv(env_name(setting), value)

    return set_variable


def test_overrides_win_over_the_environment_and_are_restored(
    env: Callable[[str, str], None],
) -> None:
    env("poll_seconds", "7")
    env("data_store", "pipedeploy-local-data-store/env")
    with temporary_settings(poll_seconds=0.5, data_store=None) as settings:
        assert (settings.poll_seconds, settings.data_store) == (0.5, None)
        assert get_settings() == settings
    assert get_settings().poll_seconds == 7.0
    assert get_settings().data_store == "pipedeploy-local-data-store/env"


def test_nested_blocks_add_to_the_outer_ones() -> None:
    before = get_settings()
    with temporary_settings(poll_seconds=0.5, default_pool="outer"):
        with temporary_settings(default_pool="inner"):
            settings = get_settings()
            assert (settings.poll_seconds, settings.default_pool) == (0.5, "inner")
        assert get_settings().default_pool == "outer"
    assert get_settings() == before


def test_restored_when_the_block_raises() -> None:
    before = get_settings()
    with pytest.raises(RuntimeError):
        with temporary_settings(default_pool="inside"):
            raise RuntimeError("boom")
    assert get_settings() == before


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ({"pol_seconds": 1}, ValueError, "no prefect-pipedeploy setting 'pol_seconds'"),
        ({"poll_seconds": 0}, InvalidSettings, "poll_seconds"),
        ({"gateway_max_waiting": "many"}, InvalidSettings, "gateway_max_waiting"),
    ],
)
def test_bad_overrides_raise_before_the_block(
    values: dict[str, Any], error: type[Exception], message: str
) -> None:
    before, ran = get_settings(), False
    with pytest.raises(error, match=message):
        with temporary_settings(**values):
            ran = True
    assert not ran
    assert get_settings() == before


def test_overrides_belong_to_their_task() -> None:
    async def read_in(pool: str, gate: asyncio.Event, seen: list[str]) -> None:
        with temporary_settings(default_pool=pool):
            await gate.wait()  # both tasks are inside their block now
            seen.append(get_settings().default_pool)

    async def main() -> list[str]:
        gate, seen = asyncio.Event(), []
        tasks = [asyncio.create_task(read_in(p, gate, seen)) for p in ("a", "b")]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        return sorted(seen)

    assert asyncio.run(main()) == ["a", "b"]


def test_overrides_reach_a_child_process_only_through_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in [v for v in os.environ if v.startswith("PREFECT_INTEGRATIONS_PIPEDEPLOY_")]:
        monkeypatch.delenv(variable)  # the test session sets some (its home)
    with temporary_settings(gateway_url="http://127.0.0.1:9", default_pool="p") as settings:
        assert settings.to_environment_variables(exclude_unset=True) == {
            env_name("gateway_url"): "http://127.0.0.1:9",
            env_name("default_pool"): "p",
        }
