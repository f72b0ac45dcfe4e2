"""The example pipelines' pure parts: which stored model is the latest, and where a pipeline may
write its files (tests/e2e/test_examples.py runs both examples on a real stack)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from prefect_pipedeploy import LocalDataStore, execution_dir
from prefect_pipedeploy.examples import iris


@pytest.mark.parametrize(
    ("stored", "latest"),
    [
        (["models/iris/20260101_000000/model.pkl"], "models/iris/20260101_000000/model.pkl"),
        (
            [
                "models/iris/20261201_101010/model.pkl",
                "models/iris/20260101_000000/model.pkl",
                "models/iris/20261130_235959/model.pkl",
            ],
            "models/iris/20261201_101010/model.pkl",
        ),
        (  # other files under the prefix, and models elsewhere, are not models of this example
            [
                "models/iris/20260101_000000/model.pkl",
                "models/iris/20270101_000000/metrics.json",
                "models/iris/notes.txt",
                "models/wine/20280101_000000/model.pkl",
            ],
            "models/iris/20260101_000000/model.pkl",
        ),
    ],
)
def test_the_latest_model_is_the_greatest_date_time(
    tmp_path: Path, stored: list[str], latest: str
) -> None:
    store = LocalDataStore(root=str(tmp_path))
    for key in stored:
        store.upload(io.BytesIO(b"model"), key)
    assert iris.latest_model_key(store) == latest


def test_no_model_yet_says_to_run_the_training(tmp_path: Path) -> None:
    store = LocalDataStore(root=str(tmp_path))
    store.upload(io.BytesIO(b"x"), "models/iris/notes.txt")
    with pytest.raises(LookupError, match="run the training deployment first") as raised:
        iris.latest_model_key(store)
    assert "prefect deployment run iris-train/iris-training" in str(raised.value)


def test_execution_dir_outside_a_run_says_where_it_works() -> None:
    with pytest.raises(RuntimeError, match="outside a flow run; call it inside a pipeline"):
        execution_dir()
