"""The SDK refuses, at creation and against the real server, a mapping that feeds `*args` or
`**kwargs`: run time would never feed them (one introspection, `iomapping.pipeline_inputs_of`)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from prefect_pipedeploy import DeploymentNotFound, PipeDeploy, SpecError

PIPELINE = """
def takes_options(text: str, *args, **kwargs) -> dict:
    return {"text": text, "options": kwargs}
"""


@pytest.mark.parametrize("mapped", ["kwargs", "args"])
def test_a_mapping_to_variadic_parameters_is_refused_at_creation(
    prefect_api: str, sdk: PipeDeploy, tmp_path: Path, mapped: str
) -> None:
    source = tmp_path / "options_pipeline.py"
    source.write_text(PIPELINE)
    name = f"variadic-{uuid.uuid4().hex[:6]}"
    with pytest.raises(SpecError) as error:
        sdk.create_deployment(
            f"{source}:takes_options",
            name,
            inputs_mapping=[
                {"pipeline_input_name": mapped, "endpoint_input_name": "o", "data_type": "json"}
            ],
        )
    message = str(error.value)
    assert f"the pipeline has no input {mapped!r}" in message
    assert "its inputs are text" in message
    with pytest.raises(DeploymentNotFound):
        sdk.get_deployment(name)  # nothing was created
    # the same pipeline with its real input mapped is accepted
    created = sdk.create_deployment(
        f"{source}:takes_options",
        name,
        inputs_mapping=[
            {"pipeline_input_name": "text", "endpoint_input_name": "t", "data_type": "string"}
        ],
    )
    assert created["inputs_mapping"][0]["pipeline_input_name"] == "text"
