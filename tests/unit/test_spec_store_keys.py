"""A deployment's data-store paths checked with the data store's key rule when the spec is
built (`spec.build_spec`): each refusal names the mapping, the input or output, the path and
the rule. Table-driven; no server."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_pipedeploy.exceptions import SpecError
from prefect_pipedeploy.spec import build_spec


def inputs(path: str) -> dict[str, Any]:
    return {"inputs_mapping": [{"pipeline_input_name": "model", "datastore_path": path}]}


def outputs(path: str) -> dict[str, Any]:
    return {"outputs_mapping": [{"pipeline_output_name": "report", "datastore_path": path}]}


@pytest.mark.parametrize(
    ("settings", "phrases"),
    [
        (outputs("../escape_{execution_id}"), ("output 'report'", "`..` segment")),
        (outputs("results/{date}/../../{execution_id}"), ("output 'report'", "`..` segment")),
        (outputs("/results/{execution_id}.bin"), ("output 'report'", "absolute")),
        (outputs("results//{date_time}.bin"), ("output 'report'", "empty segment")),
        (outputs("results\\{date}.bin"), ("output 'report'", "backslash")),
        (outputs("results/{date}\x00.bin"), ("output 'report'", "control character")),
        (outputs(".pipedeploy-partial-x/{date}"), ("output 'report'", "reserved")),
        (outputs("r/" + "x" * 1100 + "/{date}"), ("output 'report'", "longer than 1024 bytes")),
        (inputs("../models/m.bin"), ("input 'model'", "`..` segment")),
        (inputs("/etc/passwd"), ("input 'model'", "absolute")),
        (inputs(""), ("input 'model'", "is empty")),
        (inputs("models/"), ("input 'model'", "empty segment")),
    ],
)
def test_paths_the_store_would_refuse_are_refused_at_creation(
    settings: dict[str, Any], phrases: tuple[str, ...]
) -> None:
    """Before: accepted; every execution then failed when it met the key."""
    with pytest.raises(SpecError) as caught:
        build_spec(**settings)
    message = str(caught.value)
    assert "datastore_path" in message and "mapping" in message
    for phrase in phrases:
        assert phrase in message, message


@pytest.mark.parametrize(
    "settings",
    [
        outputs("results/{execution_id}.bin"),
        outputs("{date}/{date_time}/{execution_id}.json"),
        outputs("./results/{date}.json"),
        inputs("models/m.bin"),
        inputs("a/./b.csv"),
    ],
)
def test_paths_the_store_takes_are_accepted(settings: dict[str, Any]) -> None:
    build_spec(**settings)
