"""Messages of the local data store name the store, never its directory: they reach callers
(an execution's failure is an endpoint's answer). No server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prefect_pipedeploy.datastore import LocalDataStore
from prefect_pipedeploy.exceptions import DataStoreError
from prefect_pipedeploy.iomapping import resolve_inputs
from prefect_pipedeploy.spec import build_spec


@pytest.fixture
def store(tmp_path: Path) -> LocalDataStore:
    root = tmp_path / "secret-root-dir"
    root.mkdir()
    return LocalDataStore(root=str(root))


def refusal(action: object) -> str:
    with pytest.raises(DataStoreError) as caught:
        action()  # type: ignore[operator]
    return str(caught.value)


def test_messages_do_not_show_the_root(store: LocalDataStore, tmp_path: Path) -> None:
    """Before: each of these named the store's absolute directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (Path(store.root) / "linked").symlink_to(outside)
    (Path(store.root) / "folder").mkdir()
    (Path(store.root) / "folder" / "x").write_bytes(b"x")
    messages = {
        "missing": refusal(lambda: store.download("missing.bin", tmp_path / "m")),
        "symlink": refusal(lambda: store.upload(__file__, "linked/x.bin")),
        "folder": refusal(lambda: store.upload(__file__, "folder")),
    }
    if os.geteuid() != 0:  # root reads anything
        locked = Path(store.root) / "locked.bin"
        locked.write_bytes(b"x")
        locked.chmod(0)
        messages["unreadable"] = refusal(lambda: store.download("locked.bin", tmp_path / "l"))
    for name, message in messages.items():
        assert "secret-root-dir" not in message and str(tmp_path) not in message, (name, message)
        assert "local data store" in message, (name, message)


def test_a_missing_input_names_the_store_not_its_directory(
    store: LocalDataStore, tmp_path: Path
) -> None:
    """Before: "... does not exist in /tmp/.../secret-root-dir", shown in the 500 answer."""
    spec = build_spec(inputs_mapping=[{"pipeline_input_name": "m", "datastore_path": "no/m.bin"}])
    with pytest.raises(Exception) as caught:
        resolve_inputs(spec, {}, ["m"], ["m"], "run-1", tmp_path / "work", store, {})
    assert "does not exist in the local data store" in str(caught.value)
    assert "secret-root-dir" not in str(caught.value)
