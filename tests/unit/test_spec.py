"""The deployment spec: every validation rule names the field and the fix (pure, no server)."""

from __future__ import annotations

import datetime
import json

import pytest

from prefect_pipedeploy.exceptions import SpecError
from prefect_pipedeploy.sizes import format_mib, parse_ram
from prefect_pipedeploy.spec import (
    AdvancedSchedule,
    BasicSchedule,
    DeploymentSpec,
    InputSource,
    OutputDestination,
    build_spec,
    spec_from_job_variables,
)


@pytest.mark.parametrize(
    "text, mib",
    [
        ("512MiB", 512),
        ("1GiB", 1024),
        ("1.5GiB", 1536),
        ("256KiB", 1),
        ("2048KiB", 2),
        (" 64 mib ", 64),
        ("1TiB", 1024 * 1024),
        ("1000MB", 954),
    ],
)
def test_parse_ram_units(text: str, mib: int) -> None:
    assert parse_ram(text) == mib


@pytest.mark.parametrize(
    "value, says",
    [
        ("512", "with a unit"),
        (512, "has no unit"),
        ("512 bananas", "KiB, MiB, GiB"),
        ("", "with a unit"),
        ("0MiB", "ask for at least"),
        (True, "has no unit"),
    ],
)
def test_parse_ram_refuses(value: object, says: str) -> None:
    with pytest.raises(SpecError, match="ram_request") as info:
        parse_ram(value)  # type: ignore[arg-type]
    assert says in str(info.value)


@pytest.mark.parametrize("mib, text", [(512, "512MiB"), (1024, "1GiB"), (1536, "1.5GiB")])
def test_format_mib(mib: int, text: str) -> None:
    assert format_mib(mib) == text


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("every 30 seconds", BasicSchedule(every=30, unit="seconds")),
        ("every 1 minute", BasicSchedule(every=1, unit="minutes")),
        ("Every 2 hours", BasicSchedule(every=2, unit="hours")),
        (datetime.timedelta(minutes=5), BasicSchedule(every=300, unit="seconds")),
        ({"every": 3, "unit": "days"}, BasicSchedule(every=3, unit="days")),
        ("*/5 * * * *", AdvancedSchedule(cron="*/5 * * * *")),
        ({"cron": "0 3 * * 1"}, AdvancedSchedule(cron="0 3 * * 1")),
    ],
)
def test_schedule_forms(schedule: object, expected: object) -> None:
    spec = build_spec(execution_rule="periodic", schedule=schedule)
    assert spec.schedule == expected
    assert len(spec.prefect_schedules()) == 1


# Each bad spec, and words its error must contain: the field and the fix.
BAD_SPECS = [
    ({"execution_rule": "sometimes"}, ["execution_rule", "endpoint", "periodic"]),
    ({"mode": "fast"}, ["mode", "elastic", "low_latency"]),
    ({"ram_request": "512"}, ["ram_request", "MiB"]),
    ({"schedule": "every 5 minutes"}, ["schedule is only for periodic", "execution_rule"]),
    ({"execution_rule": "periodic"}, ["schedule", "needs a schedule"]),
    (
        {"execution_rule": "periodic", "schedule": "not a cron"},
        ["cron", "not a cron expression"],
    ),
    ({"enable_parallel_executions": True}, ["parallel executions need mode low_latency"]),
    ({"max_parallel_executions_per_pod": 0}, ["max_parallel_executions_per_pod"]),
    ({"execution_timeout_s": -1}, ["execution_timeout_s"]),
    (
        {
            "execution_rule": "periodic",
            "schedule": "every 1 minute",
            "inputs_mapping": [{"pipeline_input_name": "x", "endpoint_input_name": "x"}],
        },
        ["periodic deployment cannot map input 'x' to an endpoint input"],
    ),
    (
        {
            "execution_rule": "periodic",
            "schedule": "every 1 minute",
            "endpoint_url_path": "x",
        },
        ["endpoint_url_path is only for endpoint deployments"],
    ),
    ({"endpoint_url_path": "bad path!"}, ["endpoint_url_path", "not a URL path"]),
    (
        {"inputs_mapping": [{"pipeline_input_name": "x"}]},
        ["input 'x' needs exactly one source", "found none"],
    ),
    (
        {"inputs_mapping": [{"pipeline_input_name": "x", "constant_value": 1, "is_null": True}]},
        ["input 'x' needs exactly one source", "constant_value, is_null"],
    ),
    (
        {
            "inputs_mapping": [
                {"pipeline_input_name": "x", "constant_value": 1},
                {"pipeline_input_name": "x", "is_null": True},
            ]
        },
        ["input 'x' is mapped twice"],
    ),
    (
        {"inputs_mapping": [{"pipeline_input_name": "x", "constant_value": 1, "default_value": 2}]},
        ["default_value only applies to endpoint inputs"],
    ),
    (
        {
            "inputs_mapping": [
                {
                    "pipeline_input_name": "x",
                    "endpoint_input_name": "x",
                    "is_required": True,
                    "default_value": 2,
                }
            ]
        },
        ["set is_required=False or remove default_value"],
    ),
    (
        {"inputs_mapping": [{"pipeline_input_name": "1x", "is_null": True}]},
        ["not a Python parameter name"],
    ),
    (
        {"outputs_mapping": [{"pipeline_output_name": "y"}]},
        ["output 'y' needs exactly one destination"],
    ),
    (
        {"outputs_mapping": [{"pipeline_output_name": "y", "datastore_path": "out/{when}.json"}]},
        ["placeholder {when} is unknown", "{execution_id}"],
    ),
    (
        {
            "execution_rule": "periodic",
            "schedule": "every 1 minute",
            "outputs_mapping": [{"pipeline_output_name": "y", "endpoint_output_name": "y"}],
        },
        ["no caller to return output 'y' to"],
    ),
]


@pytest.mark.parametrize("values, words", BAD_SPECS)
def test_bad_specs_name_the_field_and_the_fix(values: dict, words: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        build_spec(**values)
    for word in words:
        assert word in str(info.value)


def test_defaults_and_round_trip_through_job_variables() -> None:
    spec = build_spec(
        mode="low_latency",
        enable_parallel_executions=True,
        ram_request="1GiB",
        inputs_mapping=[
            InputSource(pipeline_input_name="text", endpoint_input_name="t"),
            InputSource(pipeline_input_name="k", constant_value=None),
        ],
        outputs_mapping=[
            OutputDestination(pipeline_output_name="y", datastore_path="out/{execution_id}.json")
        ],
    )
    assert spec.parallelism == 6
    assert spec.ram_request_mib == 1024
    assert spec.max_retries == 1
    again = spec_from_job_variables({**spec.job_variables(), "env": {"A": "1"}})
    assert again == spec
    # a constant of None is still a constant source (is_null is the other way to say it)
    assert again.inputs_mapping[1].source == "constant_value"


def test_optional_endpoint_input_with_default() -> None:
    source = InputSource(pipeline_input_name="n", endpoint_input_name="n", default_value=3)
    assert source.is_required is False
    assert source.source == "endpoint_input_name"


@pytest.mark.parametrize(
    "parameters, required, mapping, rule, words",
    [
        (
            ["a"],
            ["a"],
            [{"pipeline_input_name": "b", "is_null": True}],
            "endpoint",
            ["no input 'b'"],
        ),
        (
            ["a", "b"],
            ["a", "b"],
            [{"pipeline_input_name": "a", "constant_value": 1}],
            "periodic",
            ["must map every input", "'b'"],
        ),
    ],
)
def test_mapping_checked_against_pipeline_inputs(
    parameters: list[str], required: list[str], mapping: list, rule: str, words: list[str]
) -> None:
    extra = {"schedule": "every 1 minute"} if rule == "periodic" else {}
    spec = build_spec(execution_rule=rule, inputs_mapping=mapping, **extra)
    with pytest.raises(SpecError) as info:
        spec.check_pipeline_inputs(parameters, required)
    for word in words:
        assert word in str(info.value)


def test_periodic_with_every_input_mapped_is_accepted() -> None:
    spec = build_spec(
        execution_rule="periodic",
        schedule="every 1 minute",
        inputs_mapping=[{"pipeline_input_name": "a", "environment_variable_name": "A"}],
    )
    spec.check_pipeline_inputs(["a", "b"], ["a"])  # b has a default


# -- the work pool's form: compact, and the server still takes every spec ---------------------


def _pool_variables() -> dict:
    from prefect_pipedeploy.worker import PipeDeployWorker

    return PipeDeployWorker.get_default_base_job_template()["variables"]


def _server_validates(job_variables: dict) -> None:
    """What the server runs on a flow-run create: check the schema, validate the values."""
    from prefect.utilities.schema_tools.validation import is_valid_schema, validate

    variables = _pool_variables()
    is_valid_schema(variables, preprocess=False)
    validate(
        job_variables,
        variables,
        raise_on_error=True,
        preprocess=True,
        ignore_required=False,
        allow_none_with_default=True,
    )


def _subschemas(node: dict) -> int:
    count = 1
    for key, value in node.items():
        if key in ("properties", "definitions"):
            count += sum(_subschemas(child) for child in value.values())
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            count += _subschemas(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            count += sum(_subschemas(child) for child in value)
    return count


def test_pool_form_is_compact_and_keeps_every_field_described() -> None:
    variables = _pool_variables()
    properties = variables["properties"]
    for field in DeploymentSpec.model_fields:
        assert properties[field]["description"], field
    assert properties["mode"]["enum"] == ["elastic", "low_latency"]
    assert properties["mode"]["default"] == "elastic"
    assert properties["endpoint_url_path"]["type"] == "string"
    assert "default" not in properties["endpoint_url_path"]
    for definition in ("InputSource", "OutputDestination", "BasicSchedule", "AdvancedSchedule"):
        assert all(
            p["description"] for p in variables["definitions"][definition]["properties"].values()
        )
    text = json.dumps(variables)
    assert "discriminator" not in text and "#/definitions/Mode" not in text
    # the server checks every sub-schema against the meta-schema twice per flow-run create
    # (about 0.3 ms each): 50 before the docker runtime's settings, which add 9 (runtime, and
    # docker with its image, volumes, network_mode, pull_policy, env), about 5 ms per create
    # from a deployment; direct dispatch's creates do not check them
    assert _subschemas(variables) <= 59


@pytest.mark.parametrize(
    "job_variables",
    [
        build_spec(
            mode="low_latency",
            enable_parallel_executions=True,
            execution_timeout_s=2.5,
            endpoint_url_path="a/b",
            inputs_mapping=[
                {"pipeline_input_name": "x", "endpoint_input_name": "x", "data_type": "number"},
                {"pipeline_input_name": "k", "constant_value": None},
                {"pipeline_input_name": "e", "environment_variable_name": "E", "is_secret": True},
            ],
            outputs_mapping=[{"pipeline_output_name": "y", "datastore_path": "o/{date}.json"}],
        ).job_variables(),
        build_spec(execution_rule="periodic", schedule="*/5 * * * *").job_variables(),
        build_spec(execution_rule="periodic", schedule="every 3 hours").job_variables(),
        # nulls where the models allow them, as the UI or a hand-written call may send them
        {
            "endpoint_url_path": None,
            "execution_timeout_s": None,
            "schedule": None,
            "working_dir": None,
            "env": {"A": None},
            "inputs_mapping": [{"pipeline_input_name": "x", "endpoint_input_name": None}],
        },
    ],
)
def test_server_accepts_every_spec_against_the_compact_form(job_variables: dict) -> None:
    _server_validates({**job_variables, "env": job_variables.get("env", {"A": "1"})})


@pytest.mark.parametrize(
    "job_variables",
    [
        {"mode": "fast"},
        {"max_parallel_executions_per_pod": 0},
        {"execution_timeout_s": 0},
        {"inputs_mapping": [{"pipeline_input_name": "x", "is_null": "yes"}]},
        {"schedule": {"type": "basic", "every": 0}},
    ],
)
def test_server_still_refuses_wrong_types(job_variables: dict) -> None:
    from prefect.utilities.schema_tools.validation import ValidationError

    with pytest.raises(ValidationError):
        _server_validates(job_variables)
