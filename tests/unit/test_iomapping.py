"""Tests of the io mapping: inputs resolved before a run, outputs routed after it.

Pure decisions are tested with tables; data-store inputs and outputs go through a real
`LocalDataStore` under tmp_path. No server here: the same through moto's S3 server is
tests/integration/test_iomapping_s3.py, an S3 server that is gone tests/e2e/test_s3_outages.py.
"""

from __future__ import annotations

import io
import json
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from prefect_pipedeploy.datastore import DataStore, LocalDataStore
from prefect_pipedeploy.datastore.configured import (
    DATA_STORE_VARIABLE,
    data_store_reference,
    load_data_store,
)
from prefect_pipedeploy.exceptions import DataStoreError, PipeDeployError
from prefect_pipedeploy.iomapping import (
    DataStoreNotConfigured,
    InputResolutionError,
    OutputRoutingError,
    ResolvedInputs,
    RoutedOutputs,
    cleanup_execution_files,
    execution_inputs_dir,
    file_output_path,
    make_execution_dir,
    pipeline_inputs_of,
    remove_execution_dirs,
    render_output_path,
    resolve_inputs,
    route_outputs,
    stored_bytes,
    uses_data_store,
)
from prefect_pipedeploy.spec import DeploymentSpec, build_spec

EXECUTION = "0b7d3a5e-1111-4222-8333-444455556666"
NOW = datetime(2024, 3, 9, 7, 5, 2, tzinfo=timezone.utc)


Mapping = list[dict[str, Any]]


def endpoint_spec(inputs: Mapping | None = None, outputs: Mapping | None = None) -> DeploymentSpec:
    return build_spec(
        execution_rule="endpoint", inputs_mapping=inputs or [], outputs_mapping=outputs or []
    )


def _with_output_path(spec: DeploymentSpec, path: str) -> DeploymentSpec:
    spec.outputs_mapping[0].datastore_path = path  # past the spec's validation
    return spec


def periodic_spec(inputs: Mapping | None = None, outputs: Mapping | None = None) -> DeploymentSpec:
    return build_spec(
        execution_rule="periodic",
        schedule="every 10 minutes",
        inputs_mapping=inputs or [],
        outputs_mapping=outputs or [],
    )


@pytest.fixture
def store(tmp_path: Path) -> LocalDataStore:
    return LocalDataStore(root=str(tmp_path / "store"))


def resolve(
    spec: DeploymentSpec,
    parameters: dict[str, Any],
    inputs: tuple[list[str], list[str]] = (["x"], ["x"]),
    *,
    workdir: Path | None = None,
    store: DataStore | None = None,
    environ: dict[str, str] | None = None,
    execution_id: str = EXECUTION,
) -> ResolvedInputs:
    return resolve_inputs(
        spec,
        parameters,
        inputs[0],
        inputs[1],
        execution_id,
        workdir or Path("/nonexistent-workdir"),
        store,
        environ or {},
    )


# -- render_output_path -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "now", "expected"),
    [
        ("out/result.json", NOW, "out/result.json"),
        ("out/{execution_id}.json", NOW, f"out/{EXECUTION}.json"),
        ("daily/{date}/scores.csv", NOW, "daily/20240309/scores.csv"),
        ("runs/{date_time}.json", NOW, "runs/20240309_070502.json"),
        (
            "{date}/{date_time}/{execution_id}/{execution_id}.bin",
            NOW,
            f"20240309/20240309_070502/{EXECUTION}/{EXECUTION}.bin",
        ),
        # Times are taken in UTC: 01:30 at +02:00 is 23:30 the day before.
        (
            "{date_time}",
            datetime(2024, 3, 10, 1, 30, tzinfo=timezone(timedelta(hours=2))),
            "20240309_233000",
        ),
        ("{date_time}", datetime(2024, 12, 31, 23, 59, 59), "20241231_235959"),  # naive = UTC
    ],
)
def test_render_output_path(template: str, now: datetime, expected: str) -> None:
    assert render_output_path(template, EXECUTION, now) == expected


def test_render_output_path_refuses_unknown_placeholders() -> None:
    with pytest.raises(ValueError, match=r"placeholder \{when\} .* unknown; use \{execution_id\}"):
        render_output_path("out/{when}.json", EXECUTION, NOW)


# -- inputs: each source ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs_mapping", "parameters", "signature", "environ", "expected"),
    [
        pytest.param(
            [{"pipeline_input_name": "x", "endpoint_input_name": "x"}],
            {"x": 3},
            (["x"], ["x"]),
            {},
            {"x": 3},
            id="endpoint input",
        ),
        pytest.param(
            [{"pipeline_input_name": "x", "endpoint_input_name": "text"}],
            {"x": "hello"},  # the gateway keys parameters by pipeline input name
            (["x"], ["x"]),
            {},
            {"x": "hello"},
            id="endpoint input under another name",
        ),
        pytest.param(
            [{"pipeline_input_name": "x", "endpoint_input_name": "x", "default_value": 7}],
            {},
            (["x"], ["x"]),
            {},
            {"x": 7},
            id="optional endpoint input not given: its default_value",
        ),
        pytest.param(
            [{"pipeline_input_name": "x", "endpoint_input_name": "x", "default_value": 7}],
            {"x": 8},
            (["x"], ["x"]),
            {},
            {"x": 8},
            id="optional endpoint input given",
        ),
        pytest.param(
            [{"pipeline_input_name": "x", "endpoint_input_name": "x", "is_required": False}],
            {},
            (["x"], []),
            {},
            {},
            id="optional endpoint input without default_value: the pipeline's default",
        ),
        pytest.param(
            [{"pipeline_input_name": "x", "endpoint_input_name": "x", "is_required": False}],
            {},
            (["x"], ["x"]),
            {},
            {"x": None},
            id="optional endpoint input, pipeline without default: None",
        ),
        pytest.param(
            [{"pipeline_input_name": "x", "constant_value": {"k": [1, 2]}}],
            {},
            (["x"], ["x"]),
            {},
            {"x": {"k": [1, 2]}},
            id="constant",
        ),
        pytest.param(
            [{"pipeline_input_name": "x", "constant_value": None}],
            {},
            (["x"], ["x"]),
            {},
            {"x": None},
            id="constant None",
        ),
        pytest.param(
            [{"pipeline_input_name": "x", "environment_variable_name": "MODEL_NAME"}],
            {},
            (["x"], ["x"]),
            {"MODEL_NAME": "resnet"},
            {"x": "resnet"},
            id="environment variable",
        ),
        pytest.param(
            [{"pipeline_input_name": "x", "is_null": True}],
            {},
            (["x"], ["x"]),
            {},
            {"x": None},
            id="null",
        ),
        pytest.param(
            [],
            {"x": 1, "y": 2},
            (["x", "y"], ["x"]),
            {},
            {"x": 1, "y": 2},
            id="unmapped inputs: the endpoint input of the same name",
        ),
        pytest.param(
            [],
            {"x": 1},
            (["x", "y"], ["x"]),
            {},
            {"x": 1},
            id="unmapped optional input not given: the pipeline's default",
        ),
        pytest.param(
            [{"pipeline_input_name": "x", "constant_value": 5}],
            {"y": 2},
            (["y", "x"], ["x", "y"]),
            {},
            {"y": 2, "x": 5},
            id="mapped and unmapped together, in the pipeline's order",
        ),
    ],
)
def test_each_input_source(
    inputs_mapping: list[dict[str, Any]],
    parameters: dict[str, Any],
    signature: tuple[list[str], list[str]],
    environ: dict[str, str],
    expected: dict[str, Any],
) -> None:
    resolved = resolve(endpoint_spec(inputs_mapping), parameters, signature, environ=environ)
    assert resolved.parameters == expected
    assert list(resolved.parameters) == list(expected)
    assert resolved.recorded == expected
    assert resolved.ignored == []


@pytest.mark.parametrize(
    ("spec", "parameters", "signature", "message"),
    [
        pytest.param(
            endpoint_spec([{"pipeline_input_name": "x", "endpoint_input_name": "text"}]),
            {},
            (["x"], ["x"]),
            "input 'x' (endpoint input 'text') is required and was not given",
            id="required endpoint input missing",
        ),
        pytest.param(
            endpoint_spec(),
            {},
            (["x"], ["x"]),
            "input 'x' (endpoint input 'x') is required and was not given",
            id="unmapped required input missing",
        ),
        pytest.param(
            endpoint_spec([{"pipeline_input_name": "x", "environment_variable_name": "TOKEN"}]),
            {},
            (["x"], ["x"]),
            "input 'x': environment variable 'TOKEN' is not set in the pipeline's environment; "
            "set it in the deployment's env or the worker's environment",
            id="environment variable not set",
        ),
        pytest.param(
            endpoint_spec(),
            {"x": 1, "z": 2, "w": 3},
            (["x"], ["x"]),
            "the pipeline has no input 'z', 'w'; its inputs are x",
            id="parameters the pipeline does not take",
        ),
        pytest.param(
            endpoint_spec([{"pipeline_input_name": "gone", "constant_value": 1}]),
            {"x": 1},
            (["x"], ["x"]),
            "inputs_mapping maps 'gone' but the pipeline has no such input (its inputs are x)",
            id="mapping of an input the pipeline lost",
        ),
        pytest.param(
            periodic_spec(),
            {},
            (["x"], ["x"]),
            "input 'x' is required but not mapped; map it in the deployment's inputs_mapping",
            id="periodic: required input not mapped",
        ),
    ],
)
def test_input_errors_name_the_input_and_the_source(
    spec: DeploymentSpec,
    parameters: dict[str, Any],
    signature: tuple[list[str], list[str]],
    message: str,
) -> None:
    with pytest.raises(InputResolutionError) as caught:
        resolve(spec, parameters, signature)
    assert message in str(caught.value)
    assert isinstance(caught.value, PipeDeployError)


def test_every_input_error_is_reported_at_once() -> None:
    spec = endpoint_spec(
        [
            {"pipeline_input_name": "a", "endpoint_input_name": "a"},
            {"pipeline_input_name": "b", "environment_variable_name": "B"},
        ]
    )
    with pytest.raises(InputResolutionError) as caught:
        resolve(spec, {}, (["a", "b"], ["a", "b"]))
    assert "input 'a' (endpoint input 'a')" in str(caught.value)
    assert "environment variable 'B'" in str(caught.value)


def test_periodic_unmapped_optional_inputs_keep_the_pipeline_default() -> None:
    spec = periodic_spec([{"pipeline_input_name": "x", "constant_value": 1}])
    resolved = resolve(spec, {}, (["x", "y"], ["x"]))
    assert resolved.parameters == {"x": 1}


def test_the_mapping_wins_over_a_parameter_of_a_mapped_input() -> None:
    spec = endpoint_spec([{"pipeline_input_name": "x", "constant_value": 1}])
    resolved = resolve(spec, {"x": 99}, (["x"], ["x"]))
    assert resolved.parameters == {"x": 1}
    assert resolved.ignored == ["x"]


def test_constants_are_not_shared_between_executions() -> None:
    spec = endpoint_spec([{"pipeline_input_name": "x", "constant_value": {"seen": []}}])
    first = resolve(spec, {})
    first.parameters["x"]["seen"].append("mutated by the pipeline")
    assert resolve(spec, {}).parameters == {"x": {"seen": []}}
    assert first.recorded == {"x": {"seen": []}}


def test_secret_inputs_are_masked_in_the_record(store: LocalDataStore, tmp_path: Path) -> None:
    store.upload(_file(tmp_path / "key.pem", b"-----KEY-----"), "secrets/key.pem")
    spec = endpoint_spec(
        [
            {"pipeline_input_name": "a", "endpoint_input_name": "a", "is_secret": True},
            {"pipeline_input_name": "b", "constant_value": "s3cr3t", "is_secret": True},
            {"pipeline_input_name": "c", "environment_variable_name": "C", "is_secret": True},
            {"pipeline_input_name": "d", "datastore_path": "secrets/key.pem", "is_secret": True},
            {"pipeline_input_name": "e", "constant_value": "public"},
        ]
    )
    names = ["a", "b", "c", "d", "e"]
    resolved = resolve(
        spec,
        {"a": "token"},
        (names, names),
        workdir=tmp_path / "work",
        store=store,
        environ={"C": "password"},
    )
    assert resolved.recorded == {"a": "***", "b": "***", "c": "***", "d": "***", "e": "public"}
    assert resolved.parameters["a"] == "token"
    assert resolved.parameters["c"] == "password"
    assert "s3cr3t" not in json.dumps(resolved.recorded)


# -- inputs: the data store ---------------------------------------------------------------------


def _file(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_data_store_input_is_downloaded_per_execution(
    store: LocalDataStore, tmp_path: Path
) -> None:
    stored = store.upload(_file(tmp_path / "src.csv", b"a,b\n1,2\n"), "datasets/2024/train.csv")
    spec = endpoint_spec(
        [{"pipeline_input_name": "data", "datastore_path": "datasets/2024/train.csv"}]
    )
    workdir = tmp_path / "work"
    signature = (["data"], ["data"])

    first = resolve(spec, {}, signature, workdir=workdir, store=store, execution_id="run-1")
    second = resolve(spec, {}, signature, workdir=workdir, store=store, execution_id="run-2")

    path_1 = Path(first.parameters["data"]["path"])
    path_2 = Path(second.parameters["data"]["path"])
    assert first.parameters == {"data": {"path": str(path_1)}}
    assert path_1 == workdir / "inputs" / "run-1" / "data" / "train.csv"
    assert path_2 == workdir / "inputs" / "run-2" / "data" / "train.csv"
    assert path_1.read_bytes() == path_2.read_bytes() == b"a,b\n1,2\n"
    assert first.recorded == {
        "data": {"datastore_path": "datasets/2024/train.csv", "size": 8, "sha256": stored.sha256}
    }

    cleanup_execution_files(workdir, "run-1")
    assert not (workdir / "inputs" / "run-1").exists()
    assert path_2.exists()  # the other execution's files stay
    cleanup_execution_files(workdir, "run-1")  # twice is fine


def test_execution_dirs_are_named_after_the_execution_and_removed_by_its_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = make_execution_dir("run-1")
    other = make_execution_dir("run-10")  # a prefix of the other's id is not the same run
    (mine / "inputs").mkdir()
    assert mine.parent == tmp_path and mine.name.startswith("pipedeploy-exec-run-1-")
    remove_execution_dirs("run-1")
    assert not mine.exists() and other.exists()
    remove_execution_dirs("run-1")  # twice is fine
    with pytest.raises(ValueError):
        remove_execution_dirs("../x")


def test_missing_data_store_object_names_the_input_and_the_path(
    store: LocalDataStore, tmp_path: Path
) -> None:
    spec = endpoint_spec([{"pipeline_input_name": "data", "datastore_path": "nope/train.csv"}])
    with pytest.raises(InputResolutionError) as caught:
        resolve(spec, {}, (["data"], ["data"]), workdir=tmp_path, store=store)
    message = str(caught.value)
    assert "input 'data': data-store path 'nope/train.csv' does not exist in" in message
    assert "pipedeploy datastore put" in message
    assert not list(tmp_path.rglob("train.csv"))


def test_data_store_input_without_a_store_says_how_to_configure_one(tmp_path: Path) -> None:
    spec = endpoint_spec([{"pipeline_input_name": "data", "datastore_path": "a/b.csv"}])
    with pytest.raises(DataStoreNotConfigured) as caught:
        resolve(spec, {}, (["data"], ["data"]), workdir=tmp_path, store=None)
    assert "input 'data' comes from data-store path 'a/b.csv'" in str(caught.value)
    assert DATA_STORE_VARIABLE in str(caught.value)
    assert "pipedeploy up" in str(caught.value)


def test_nothing_is_downloaded_when_another_input_fails(
    store: LocalDataStore, tmp_path: Path
) -> None:
    store.upload(_file(tmp_path / "src.bin", b"x"), "a.bin")
    spec = endpoint_spec(
        [
            {"pipeline_input_name": "data", "datastore_path": "a.bin"},
            {"pipeline_input_name": "token", "environment_variable_name": "TOKEN"},
        ]
    )
    with pytest.raises(InputResolutionError, match="TOKEN"):
        resolve(spec, {}, (["data", "token"], ["data", "token"]), workdir=tmp_path, store=store)
    assert not (tmp_path / "inputs").exists()


@pytest.mark.parametrize("execution_id", ["", "..", "a/b", "../x", "/abs"])
def test_execution_ids_that_are_not_one_path_segment_are_refused(execution_id: str) -> None:
    with pytest.raises(ValueError, match="is not a single path segment"):
        execution_inputs_dir(Path("/tmp"), execution_id)


# -- outputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "outputs", "endpoint"),
    [
        pytest.param(
            endpoint_spec(outputs=[{"pipeline_output_name": "y", "endpoint_output_name": "score"}]),
            {"y": 0.9},
            {"score": 0.9},
            id="endpoint output under another name",
        ),
        pytest.param(
            endpoint_spec(),
            {"y": [1, 2], "z": {"k": "v"}},
            {"y": [1, 2], "z": {"k": "v"}},
            id="unmapped outputs: the endpoint output of the same name",
        ),
        pytest.param(
            endpoint_spec(outputs=[{"pipeline_output_name": "debug", "is_null": True}]),
            {"y": 1, "debug": "big"},
            {"y": 1},
            id="null output dropped",
        ),
        pytest.param(
            periodic_spec(outputs=[{"pipeline_output_name": "debug", "is_null": True}]),
            {"y": 1, "debug": "big"},
            {"y": 1},
            id="periodic: unmapped outputs kept for the record",
        ),
        pytest.param(endpoint_spec(), {}, {}, id="no outputs"),
    ],
)
def test_outputs_to_the_endpoint(
    spec: DeploymentSpec, outputs: dict[str, Any], endpoint: dict[str, Any]
) -> None:
    routed = route_outputs(spec, outputs, EXECUTION, NOW, None)
    assert routed == RoutedOutputs(endpoint=endpoint, stored={})


def test_outputs_to_the_data_store(store: LocalDataStore, tmp_path: Path) -> None:
    report = _file(tmp_path / "pipeline-wrote" / "report.pdf", b"%PDF-1.7 fake")
    spec = endpoint_spec(
        outputs=[
            {
                "pipeline_output_name": "scores",
                "datastore_path": "scores/{date}/{execution_id}.json",
            },
            {"pipeline_output_name": "report", "datastore_path": "reports/{date_time}.pdf"},
            {"pipeline_output_name": "text", "datastore_path": "texts/{execution_id}.json"},
            {"pipeline_output_name": "as_path", "datastore_path": "paths/report.pdf"},
        ]
    )
    outputs = {
        "scores": {"mean": 0.5, "values": [0.25, 0.75]},
        "report": report,
        "text": "héllo",
        "as_path": report,
        "label": "cat",
    }
    routed = route_outputs(spec, outputs, EXECUTION, NOW, store)

    assert routed.endpoint == {"label": "cat"}
    assert routed.stored == {
        "scores": f"scores/20240309/{EXECUTION}.json",
        "report": "reports/20240309_070502.pdf",
        "text": f"texts/{EXECUTION}.json",
        "as_path": "paths/report.pdf",
    }
    root = tmp_path / "store"
    assert json.loads((root / routed.stored["scores"]).read_text()) == outputs["scores"]
    assert (root / routed.stored["report"]).read_bytes() == b"%PDF-1.7 fake"
    assert (root / routed.stored["as_path"]).read_bytes() == b"%PDF-1.7 fake"
    assert (root / routed.stored["text"]).read_bytes() == "héllo".encode()  # text, not JSON


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ('line 1\nline "2"', b'line 1\nline "2"'),  # the text itself: no quotes, no escapes
        ("", b""),
        ("héllo", "héllo".encode()),
        (b"\x00\xffraw", b"\x00\xffraw"),  # bytes as they are
        (bytearray(b"ab"), b"ab"),
        ({"a": [1, 2.5, None]}, b'{"a": [1, 2.5, null]}'),
        ([1, "x"], b'[1, "x"]'),
        (3, b"3"),
        (True, b"true"),
        ({"t": "é"}, '{"t": "é"}'.encode()),  # JSON as UTF-8, not \u escapes
    ],
)
def test_what_the_store_holds_for_an_output_value(value: object, stored: bytes) -> None:
    assert stored_bytes(value) == stored


def test_a_value_that_is_not_json_text_or_bytes_is_refused() -> None:
    with pytest.raises(TypeError):
        stored_bytes({1, 2})


def test_a_dict_with_more_than_a_path_is_a_json_value(store: LocalDataStore) -> None:
    value = {"path": "not/a/file.txt", "note": "just data"}
    assert file_output_path(value) is None
    spec = endpoint_spec(outputs=[{"pipeline_output_name": "y", "datastore_path": "y.json"}])
    route_outputs(spec, {"y": value}, EXECUTION, NOW, store)
    downloaded = io.BytesIO()
    store.download("y.json", downloaded)
    assert json.loads(downloaded.getvalue()) == value


@pytest.mark.parametrize(
    ("spec", "outputs", "message"),
    [
        pytest.param(
            endpoint_spec(outputs=[{"pipeline_output_name": "y", "endpoint_output_name": "y"}]),
            {"z": 1},
            "output 'y' is mapped in outputs_mapping but the pipeline did not return it "
            "(it returned 'z')",
            id="mapped output not returned",
        ),
        pytest.param(
            endpoint_spec(outputs=[{"pipeline_output_name": "a", "endpoint_output_name": "b"}]),
            {"a": 1, "b": 2},
            "outputs 'a' and 'b' both go to endpoint output 'b'",
            id="two outputs on one endpoint name",
        ),
        pytest.param(
            endpoint_spec(
                outputs=[
                    {"pipeline_output_name": "a", "datastore_path": "out/{date}.json"},
                    {"pipeline_output_name": "b", "datastore_path": "out/{date}.json"},
                ]
            ),
            {"a": 1, "b": 2},
            "outputs 'a' and 'b' both go to data-store path 'out/20240309.json'",
            id="two outputs on one data-store path",
        ),
        pytest.param(
            # the spec refuses such a path now; the routing still checks what it is given
            _with_output_path(
                endpoint_spec(outputs=[{"pipeline_output_name": "a", "datastore_path": "a.json"}]),
                "../up.json",
            ),
            {"a": 1},
            "output 'a': datastore_path '../up.json' is not usable: data store key '../up.json' "
            "has a `..` segment",
            id="a path leaving the store",
        ),
        pytest.param(
            endpoint_spec(outputs=[{"pipeline_output_name": "a", "datastore_path": "a.json"}]),
            {"a": {1, 2}},
            "output 'a' cannot go to data-store path 'a.json': it is not JSON",
            id="a value that is not JSON",
        ),
        pytest.param(
            endpoint_spec(outputs=[{"pipeline_output_name": "a", "datastore_path": "a.bin"}]),
            {"a": Path(tempfile.gettempdir()) / "nonexistent" / "result.bin"},
            "output 'a' is the file",
            id="a file output that does not exist",
        ),
    ],
)
def test_output_errors_name_the_output_and_the_destination(
    store: LocalDataStore, spec: DeploymentSpec, outputs: dict[str, Any], message: str
) -> None:
    with pytest.raises(OutputRoutingError) as caught:
        route_outputs(spec, outputs, EXECUTION, NOW, store)
    assert message in str(caught.value)
    assert store.list() == []


def test_data_store_output_without_a_store_says_how_to_configure_one() -> None:
    spec = endpoint_spec(outputs=[{"pipeline_output_name": "y", "datastore_path": "y.json"}])
    with pytest.raises(DataStoreNotConfigured, match="output 'y' goes to the data store"):
        route_outputs(spec, {"y": 1}, EXECUTION, NOW, None)


def test_upload_failure_names_the_output_the_key_and_the_cause(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store's root directory should be")
    store = LocalDataStore(root=str(blocked))
    spec = endpoint_spec(outputs=[{"pipeline_output_name": "y", "datastore_path": "y.json"}])
    with pytest.raises(OutputRoutingError) as caught:
        route_outputs(spec, {"y": 1}, EXECUTION, NOW, store)
    cause = caught.value.__cause__
    assert isinstance(cause, DataStoreError)
    assert str(caught.value) == (
        f"output 'y' could not be stored at data-store path 'y.json': {cause}"
    )


# -- helpers ------------------------------------------------------------------------------------


def test_uses_data_store() -> None:
    assert not uses_data_store(endpoint_spec([{"pipeline_input_name": "x", "constant_value": 1}]))
    assert uses_data_store(endpoint_spec([{"pipeline_input_name": "x", "datastore_path": "a"}]))
    assert uses_data_store(
        endpoint_spec(outputs=[{"pipeline_output_name": "y", "datastore_path": "b"}])
    )


def test_pipeline_inputs_of() -> None:
    def pipeline(a: int, b: str = "x", *args: Any, c: float, **kwargs: Any) -> None: ...

    assert pipeline_inputs_of(pipeline) == (["a", "b", "c"], ["a", "c"])


@pytest.mark.parametrize("value", [None, "", "   "])
def test_no_data_store_configured(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(DATA_STORE_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(DATA_STORE_VARIABLE, value)
    assert data_store_reference() is None
    with pytest.raises(DataStoreNotConfigured) as caught:
        load_data_store()
    assert "no data store is configured" in str(caught.value)
    assert DATA_STORE_VARIABLE in str(caught.value)
    assert "pipedeploy up" in str(caught.value)
    assert "S3DataStore" in str(caught.value)


def test_a_reference_needs_a_block_type_and_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_STORE_VARIABLE, "default")
    assert data_store_reference() == "default"
    with pytest.raises(DataStoreNotConfigured, match="'default' is not a block reference"):
        load_data_store()
