"""A pipeline's input names: one introspection (`iomapping.pipeline_inputs_of`) for the SDK's
check at creation and for every run, so a mapping accepted at creation can be fed at run time."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow

from prefect_pipedeploy.exceptions import SpecError
from prefect_pipedeploy.iomapping import pipeline_inputs_of
from prefect_pipedeploy.spec import build_spec


def no_inputs() -> dict[str, Any]:
    return {}


def plain(a: int, b: int = 2, *, c: str, d: str = "x") -> dict[str, Any]:
    return {}


def variadic(a: int, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {}


def only_kwargs(**kwargs: Any) -> dict[str, Any]:
    return {}


def positional_only(a: int, /, b: int = 1) -> dict[str, Any]:
    return {}


@flow
def a_flow(text: str, *rest: str, repeat: int = 1, **options: Any) -> dict[str, Any]:
    return {}


class Pipelines:
    def method(self, x: int, y: int = 0) -> dict[str, Any]:
        return {}

    @classmethod
    def klass(cls, z: int) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize(
    ("pipeline", "names", "required"),
    [
        (no_inputs, [], []),
        (plain, ["a", "b", "c", "d"], ["a", "c"]),
        (variadic, ["a"], ["a"]),  # *args and **kwargs are not inputs
        (only_kwargs, [], []),
        (positional_only, ["a", "b"], ["a"]),
        (a_flow, ["text", "repeat"], ["text"]),  # a flow is read through its function
        (Pipelines.method, ["x", "y"], ["x"]),  # `self` is not an input
        (Pipelines.klass, ["z"], ["z"]),
    ],
)
def test_pipeline_inputs_of(pipeline: Any, names: list[str], required: list[str]) -> None:
    assert pipeline_inputs_of(pipeline) == (names, required)


@pytest.mark.parametrize(
    ("pipeline", "mapped", "refused"),
    [
        (variadic, "kwargs", "no input 'kwargs'; its inputs are a"),
        (variadic, "args", "no input 'args'; its inputs are a"),
        (only_kwargs, "kwargs", "no input 'kwargs'; its inputs are none"),
        (a_flow, "options", "no input 'options'; its inputs are text, repeat"),
        (a_flow, "rest", "no input 'rest'; its inputs are text, repeat"),
        (plain, "e", "no input 'e'; its inputs are a, b, c, d"),
        (variadic, "a", None),
        (a_flow, "repeat", None),
    ],
)
def test_a_mapping_must_name_a_real_input(pipeline: Any, mapped: str, refused: str | None) -> None:
    spec = build_spec(inputs_mapping=[{"pipeline_input_name": mapped, "constant_value": 1}])
    if refused is None:
        spec.check_pipeline_inputs(*pipeline_inputs_of(pipeline))
        return
    with pytest.raises(SpecError, match="inputs_mapping") as error:
        spec.check_pipeline_inputs(*pipeline_inputs_of(pipeline))
    assert refused in str(error.value)
