"""The gateway's pure parts (input checks, multipart, limits, settling, messages), the SDK's
reading of gateway answers, the trigger automation's shape, and file endpoint inputs at run time.
No server, no processes. The app's error answers through httpx's ASGI transport are
tests/integration/test_gateway_asgi.py."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.schemas.objects import FlowRun, State, StateType

from prefect_pipedeploy.datastore import LocalDataStore
from prefect_pipedeploy.exceptions import EndpointCallError, EndpointExecutionFailed
from prefect_pipedeploy.gateway.answers import (
    GatewayError,
    public_message,
    wants_json_only,
)
from prefect_pipedeploy.gateway.bodies import UploadedFile, parse_body
from prefect_pipedeploy.gateway.inputs import (
    FieldError,
    check_inputs,
    invalid_inputs_message,
    safe_filename,
)
from prefect_pipedeploy.gateway.openapi import endpoint_operation
from prefect_pipedeploy.gateway.waiting import BadTokenLimiter
from prefect_pipedeploy.iomapping import (
    DataStoreNotConfigured,
    InputResolutionError,
    file_input_marker,
    resolve_inputs,
    uses_data_store,
)
from prefect_pipedeploy.prefect_api.triggers import (
    TRIGGER_EVENT,
    TRIGGER_TAG,
    _fingerprint,
    endpoint_path_of,
    endpoint_resource_id,
    endpoint_trigger_automation,
)
from prefect_pipedeploy.sdk.endpoints import GatewayVerbs
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.spec import build_spec
from prefect_pipedeploy.status import execution_status, settled
from tests.support.endpoints import ENDPOINT, make_endpoint


def test_valid_body_is_translated_to_pipeline_inputs_with_defaults() -> None:
    checked = check_inputs(ENDPOINT, [("text", "hi"), ("flag", True), ("level", 5), ("note", "n")])
    assert checked.errors == []
    assert checked.parameters == {
        "text": "hi",
        "repeat": 1,  # default applied, under the pipeline's name
        "flag": True,
        "key": "",
        "level": 5,
        "note": "n",
    }
    assert checked.public == {
        "text": "hi",
        "times": 1,
        "flag": True,
        "key": "***",
        "level": 5,
        "note": "n",
    }


def test_secret_inputs_are_masked_in_the_public_view() -> None:
    checked = check_inputs(ENDPOINT, [("text", "t"), ("key", "s3cret"), ("note", "n")])
    assert checked.parameters["key"] == "s3cret"
    assert checked.public["key"] == "***"


@pytest.mark.parametrize(
    ("items", "field", "phrase"),
    [
        ([("txt", "x")], "txt", "is not an input of this endpoint; its inputs are:"),
        ([("scale", 3)], "scale", "the deployment sets it from a constant"),
        ([], "text", "is required (a string)"),
        ([("text", 3)], "text", "must be a string; got a number"),
        ([("times", "3")], "times", "must be a number; got a string"),
        ([("times", True)], "times", "must be a number; got a boolean"),
        ([("flag", "yes")], "flag", "must be a boolean (true or false); got a string"),
        ([("tags", {"a": 1})], "tags", "must be an array; got an object"),
        ([("text", None)], "text", "must be a string; got null"),
        ([("level", 2.5)], "level", "must be an integer; got a number"),
        ([("note", 1)], "note", "must be a string; got a number"),
        ([("doc", "x")], "doc", "send the request as multipart/form-data"),
        ([("text", "a"), ("text", "b")], "text", "is given more than once"),
    ],
)
def test_each_bad_field_is_named(items: list[tuple[str, Any]], field: str, phrase: str) -> None:
    base = dict([("text", "ok"), ("note", "n")])
    given = [(k, v) for k, v in base.items() if k not in {name for name, _ in items}]
    if field == "text" and not items:
        given = [("note", "n")]
    checked = check_inputs(ENDPOINT, given + items)
    messages = {e.field: e.message for e in checked.errors}
    assert field in messages, checked.errors
    assert phrase in messages[field]


def test_every_problem_is_reported_at_once() -> None:
    checked = check_inputs(ENDPOINT, [("txt", 1), ("times", "x"), ("flag", 1)])
    assert {e.field for e in checked.errors} == {"txt", "times", "flag", "text", "note"}
    message = invalid_inputs_message(checked.errors)
    for name in ("'txt'", "'times'", "'flag'", "'text'", "'note'"):
        assert name in message


def test_null_means_not_given_for_optional_inputs_and_a_value_for_json() -> None:
    checked = check_inputs(
        ENDPOINT,
        [("text", "t"), ("note", "n"), ("flag", None), ("extra", None), ("anything", None)],
    )
    assert checked.errors == []
    assert "flag" not in checked.parameters
    assert checked.parameters["extra"] is None
    assert checked.parameters["anything"] is None


def test_form_text_fields_are_read_by_type() -> None:
    upload = UploadedFile("a.csv", "text/csv", b"1,2\n")
    items: list[tuple[str, Any]] = [
        ("text", "42"),  # a string input keeps its text
        ("times", "3"),
        ("flag", "true"),
        ("tags", '["a", "b"]'),
        ("extra", "not json"),  # json input: text that is not JSON is the text itself
        ("level", "7"),
        ("note", "plain"),
        ("doc", upload),
    ]
    checked = check_inputs(ENDPOINT, items, form=True)
    assert checked.errors == []
    assert checked.parameters == {
        "text": "42",
        "repeat": 3,
        "flag": True,
        "tags": ["a", "b"],
        "extra": "not json",
        "key": "",
        "level": 7,
        "note": "plain",
    }
    assert checked.files == {"doc": upload}
    assert checked.public["doc"] == {"filename": "a.csv", "size": 4}


@pytest.mark.parametrize(
    ("items", "field", "phrase"),
    [
        ([("times", "three")], "times", "must be a number written as JSON; got 'three'"),
        ([("times", "NaN")], "times", "written as JSON"),
        ([("doc", "text")], "doc", "send it as a file part"),
        ([("text", UploadedFile("a", "x", b"1"))], "text", "this input is not a file"),
    ],
)
def test_form_problems(items: list[tuple[str, Any]], field: str, phrase: str) -> None:
    base = [("note", "n")] + ([] if field == "text" else [("text", "t")])
    checked = check_inputs(ENDPOINT, base + items, form=True)
    messages = {e.field: e.message for e in checked.errors}
    assert phrase in messages[field]


def test_an_empty_file_input_of_a_form_is_not_given() -> None:
    checked = check_inputs(
        ENDPOINT, [("text", "t"), ("note", "n"), ("doc", UploadedFile("", "x", b""))], form=True
    )
    assert checked.errors == [] and checked.files == {}


def test_mapping_wins_over_a_pipeline_input_of_the_same_field_name() -> None:
    endpoint = make_endpoint(
        [{"pipeline_input_name": "repeat", "endpoint_input_name": "text", "data_type": "number"}]
    )
    names = [f.name for f in endpoint.fields]
    assert names.count("text") == 1
    assert endpoint.field("text").pipeline_input == "repeat"  # type: ignore[union-attr]


# -- bodies ----------------------------------------------------------------------------------------


def _multipart(files: dict[str, Any], data: dict[str, str]) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


@pytest.mark.anyio
async def test_multipart_round_trip_keeps_binary_content() -> None:
    blob = bytes(range(256)) * 4 + b"\r\n--not-a-boundary\r\n\r\n"
    body, content_type = _multipart(
        {"doc": ("report final.bin", blob, "application/octet-stream")},
        {"text": "héllo", "times": "2"},
    )
    items = dict((await parse_body(content_type, body))[0])
    assert items["text"] == "héllo"
    assert items["times"] == "2"
    assert isinstance(items["doc"], UploadedFile)
    assert items["doc"].read() == blob
    assert items["doc"].filename == "report final.bin"


@pytest.mark.parametrize(
    ("body", "content_type", "phrase"),
    [
        (
            b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1',
            "multipart/form-data; boundary=b",
            "cut short",
        ),
        (b"x", "multipart/form-data", "no boundary"),
        (
            b"--b\r\nContent-Disposition: form-data\r\n\r\n1\r\n--b--",
            "multipart/form-data; boundary=b",
            "no field name",
        ),
    ],
)
@pytest.mark.anyio
async def test_bad_multipart_bodies(body: bytes, content_type: str, phrase: str) -> None:
    with pytest.raises(GatewayError) as caught:
        await parse_body(content_type, body)
    assert caught.value.status_code == 400
    assert phrase in caught.value.message


@pytest.mark.parametrize(
    ("content_type", "body", "status", "phrase"),
    [
        ("application/json", b"[1, 2]", 400, "must be a JSON object"),
        ("application/json", b"{bad", 400, "not valid JSON"),
        ("application/json", b"\xff\xfe\x00", 400, "JSON"),
        ("text/plain", b"hello", 415, "is not accepted"),
    ],
)
@pytest.mark.anyio
async def test_bad_bodies(content_type: str, body: bytes, status: int, phrase: str) -> None:
    with pytest.raises(GatewayError) as caught:
        await parse_body(content_type, body)
    assert caught.value.status_code == status
    assert phrase in caught.value.message


@pytest.mark.anyio
async def test_bodies_of_each_kind() -> None:
    assert await parse_body(None, b"") == ([], False)
    assert await parse_body("application/json; charset=utf-8", b'{"a": 1}') == ([("a", 1)], False)
    assert await parse_body("application/x-www-form-urlencoded", b"a=1&b=x+y") == (
        [("a", "1"), ("b", "x y")],
        True,
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("data.csv", "data.csv"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\report v2.pdf", "report_v2.pdf"),
        (".hidden", "hidden"),
        ("", "upload"),
        (None, "upload"),
        ("résumé.txt", "r_sum_.txt"),
    ],
)
def test_safe_filename(name: str | None, expected: str) -> None:
    assert safe_filename(name) == expected


# -- messages ------------------------------------------------------------------------------------


def test_public_message_drops_tracebacks_and_paths() -> None:
    text = (
        "Flow run encountered an exception: RuntimeError: bad batch in /work/main/flows/demo.py\n"
        "Traceback (most recent call last):\n"
        '  File "/usr/lib/python3.11/site-packages/prefect/flow_engine.py", line 10, in run\n'
        "RuntimeError: bad batch"
    )
    message = public_message(text)
    assert message == "Flow run encountered an exception: RuntimeError: bad batch in demo.py"
    assert public_message(None) == ""
    assert len(public_message("x" * 5000)) == 2000


@pytest.mark.parametrize(
    ("accept", "json_only"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", True),
        ("application/json, */*;q=0.1", False),
        ("application/json;q=1, application/octet-stream", False),
    ],
)
def test_wants_json_only(accept: str | None, json_only: bool) -> None:
    assert wants_json_only(accept) is json_only


# -- limits and settling -------------------------------------------------------------------------


def test_bad_token_limiter_is_per_client_and_slides() -> None:
    limiter = BadTokenLimiter()
    for second in (0.0, 10.0, 20.0):
        limiter.record("a", second)
    assert limiter.retry_after("a", 21.0, 4) is None
    assert limiter.retry_after("a", 21.0, 3) == 39  # the first one expires at 60 s
    assert limiter.retry_after("b", 21.0, 3) is None
    assert limiter.retry_after("a", 60.5, 3) is None  # a minute later: two left in the window
    assert limiter.retry_after("a", 90.0, 1) is None


NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def _run(state_type: StateType | None, run_count: int = 1, age_s: float = 0.0) -> FlowRun:
    state = (
        State(type=state_type, timestamp=NOW - timedelta(seconds=age_s))
        if state_type is not None
        else None
    )
    return FlowRun(flow_id=uuid.uuid4(), state=state, run_count=run_count)


@pytest.mark.parametrize(
    ("run", "max_retries", "expected"),
    [
        (_run(None), 1, False),
        (_run(StateType.SCHEDULED), 1, False),
        (_run(StateType.RUNNING), 1, False),
        (_run(StateType.COMPLETED), 1, True),
        (_run(StateType.CANCELLED), 1, True),
        (_run(StateType.FAILED, run_count=1), 0, True),  # no retries: final
        (_run(StateType.FAILED, run_count=1), 1, False),  # the worker is about to retry it
        (_run(StateType.CRASHED, run_count=1), 1, False),
        (
            _run(StateType.FAILED, run_count=1, age_s=get_settings().retry_grace_s + 1),
            1,
            True,
        ),  # no retry came
        (_run(StateType.FAILED, run_count=2), 1, True),  # retries used up
        (_run(StateType.FAILED, run_count=0), 3, True),  # never started (inputs unresolvable)
    ],
)
def test_settled(run: FlowRun, max_retries: int, expected: bool) -> None:
    assert settled(run, max_retries, NOW) is expected


def test_execution_status_follows_the_sdk() -> None:
    assert execution_status(_run(StateType.CRASHED)) == "Error"
    assert execution_status(_run(StateType.CANCELLED)) == "Failed"
    assert execution_status(_run(StateType.COMPLETED)) == "Succeeded"
    assert execution_status(None) == "Pending"


def test_openapi_operation_describes_the_body() -> None:
    operation = endpoint_operation(ENDPOINT)
    body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["text", "note"]
    assert body["properties"]["times"] == {
        "type": "number",
        "default": 1,
        "description": "Feeds the pipeline input 'repeat'.",
    }
    assert "default" not in body["properties"]["key"]  # a secret's default is not shown
    assert body["properties"]["doc"]["format"] == "binary"
    assert body["properties"]["level"]["type"] == "integer"
    assert set(operation["responses"]) >= {
        "200",
        "202",
        "303",
        "400",
        "401",
        "404",
        "413",
        "429",
        "500",
    }


# -- the SDK reading the gateway's answers -----------------------------------------------------------


def _answers(*responses: httpx.Response) -> httpx.AsyncClient:
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        return queue.pop(0)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://gw")


async def _result(*responses: httpx.Response) -> dict[str, Any]:
    async with _answers(*responses[1:]) as http:
        first = responses[0]
        first.request = httpx.Request("POST", "http://gw/endpoints/x")
        return await GatewayVerbs()._result(http, first, "tok")


@pytest.mark.anyio
async def test_sdk_follows_303s_to_the_result() -> None:
    result = await _result(
        httpx.Response(
            303, headers={"Location": "/endpoints/x/executions/1"}, json={"message": "m"}
        ),
        httpx.Response(
            303, headers={"Location": "/endpoints/x/executions/1"}, json={"message": "m"}
        ),
        httpx.Response(200, json={"execution_id": "1", "outputs": {"y": 2}}),
    )
    assert result == {"execution_id": "1", "outputs": {"y": 2}}


@pytest.mark.anyio
async def test_sdk_reads_a_file_output_and_an_acceptance() -> None:
    file_answer = httpx.Response(
        200,
        content=b"bytes",
        headers={
            "content-type": "application/octet-stream",
            "x-execution-id": "9",
            "x-output-name": "report",
        },
    )
    assert await _result(file_answer) == {"execution_id": "9", "outputs": {"report": b"bytes"}}
    assert await _result(httpx.Response(202, json={"execution_id": "3"})) == {
        "execution_id": "3",
        "outputs": None,
    }


@pytest.mark.anyio
async def test_sdk_raises_on_failures_and_refusals() -> None:
    with pytest.raises(EndpointExecutionFailed) as failed:
        await _result(
            httpx.Response(
                500, json={"message": "bad batch", "execution_id": "7", "status": "Failed"}
            )
        )
    assert failed.value.execution_id == "7" and failed.value.status == "Failed"
    assert "bad batch" in str(failed.value)
    with pytest.raises(EndpointCallError) as refused:
        await _result(
            httpx.Response(
                400, json={"message": "the inputs are invalid: 'x' is required", "errors": []}
            )
        )
    assert refused.value.status_code == 400
    assert "'x' is required" in str(refused.value)


def test_sdk_needs_a_gateway_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_pipedeploy.exceptions import GatewayUnavailable

    monkeypatch.delenv("PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_URL", raising=False)
    with pytest.raises(GatewayUnavailable, match="gateway_url"):
        GatewayVerbs().trigger_endpoint("x", "tok")


# -- the trigger automation ------------------------------------------------------------------------


class FakeDeployment:
    def __init__(self, name: str, job_variables: dict[str, Any]) -> None:
        self.id = uuid.uuid4()
        self.name = name
        self.job_variables = job_variables


def test_trigger_automation_runs_the_deployment_with_the_event_inputs() -> None:
    deployment = FakeDeployment(
        "score", {"execution_rule": "endpoint", "endpoint_url_path": "team/score"}
    )
    assert endpoint_path_of(deployment) == "team/score"
    automation = endpoint_trigger_automation(deployment, "team/score")
    trigger = automation.trigger.model_dump(mode="json")
    assert trigger["expect"] == [TRIGGER_EVENT]
    assert trigger["match"]["prefect.resource.id"] == [
        endpoint_resource_id("team/score"),
        f"prefect.deployment.{deployment.id}",
    ]
    action = automation.actions[0].model_dump(mode="json")
    assert action["deployment_id"] == str(deployment.id)
    assert "event.payload.inputs" in json.dumps(action["parameters"])
    assert automation.owner_resource == f"prefect.deployment.{deployment.id}"
    assert TRIGGER_TAG in automation.tags
    assert _fingerprint(automation) == _fingerprint(
        endpoint_trigger_automation(deployment, "team/score")
    )
    assert _fingerprint(automation) != _fingerprint(
        endpoint_trigger_automation(deployment, "other")
    )


def test_periodic_deployments_have_no_endpoint_path() -> None:
    periodic = FakeDeployment(
        "nightly", {"execution_rule": "periodic", "schedule": {"type": "basic", "every": 1}}
    )
    assert endpoint_path_of(periodic) is None
    assert endpoint_path_of(FakeDeployment("plain", {})) == "plain"  # `prefect deploy` defaults


def test_trigger_parameters_render_to_the_inputs() -> None:
    from prefect.server.events.actions import RunDeployment as ServerRunDeployment
    from prefect.server.utilities.user_templates import render_user_template_sync
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    deployment = FakeDeployment("score", {})
    action = endpoint_trigger_automation(deployment, "score").actions[0]
    parameters = action.model_dump(mode="json")["parameters"]
    ServerRunDeployment.validate_parameters(parameters)  # what the server checks on create
    template = parameters["value"]["template"]
    for payload, inputs in (({"inputs": {"a": [1, "<b>"]}}, {"a": [1, "<b>"]}), ({}, {})):
        event = {"payload": payload}
        rendered = render_user_template_sync(template, {"event": event})
        assert json.loads(rendered) == inputs
    ctx = HydrationContext(
        render_jinja=True, jinja_context={"event": {"payload": {"inputs": {"x": 1}}}}
    )
    assert hydrate(parameters, ctx) == {"x": 1}


# -- file endpoint inputs at run time --------------------------------------------------------------


def _file_spec() -> Any:
    return build_spec(
        inputs_mapping=[
            {"pipeline_input_name": "document", "endpoint_input_name": "doc", "data_type": "file"},
            {
                "pipeline_input_name": "label",
                "endpoint_input_name": "label",
                "data_type": "string",
                "default_value": "x",
            },
        ]
    )


def test_a_file_input_is_downloaded_for_the_execution(tmp_path: Path) -> None:
    store = LocalDataStore(root=str(tmp_path / "store"))
    content = b"a,b\n1,2\n"
    store.upload(_write(tmp_path / "src.csv", content), "uploads/abc/data.csv")
    spec = _file_spec()
    assert uses_data_store(spec)
    resolved = resolve_inputs(
        spec,
        {"document": file_input_marker("uploads/abc/data.csv")},
        ["document", "label"],
        ["document"],
        "run-1",
        tmp_path / "work",
        store,
        {},
    )
    local = Path(resolved.parameters["document"]["path"])
    assert local.read_bytes() == content
    assert local.name == "data.csv"
    assert "run-1" in str(local)
    assert resolved.parameters["label"] == "x"
    assert resolved.recorded["document"] == {
        "datastore_path": "uploads/abc/data.csv",
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


def test_a_file_input_must_be_a_marker_and_needs_a_store(tmp_path: Path) -> None:
    spec = _file_spec()
    args = (["document", "label"], ["document"], "run-1", tmp_path, None, {})
    with pytest.raises(InputResolutionError, match="'document'.*is a file input"):
        resolve_inputs(spec, {"document": "just text"}, *args)
    with pytest.raises(DataStoreNotConfigured, match="'document' is a file endpoint input"):
        resolve_inputs(spec, {"document": file_input_marker("uploads/a/b")}, *args)
    with pytest.raises(InputResolutionError, match="'document'.*required"):
        resolve_inputs(spec, {}, *args)
    store = LocalDataStore(root=str(tmp_path / "empty"))
    with pytest.raises(InputResolutionError, match="no longer in"):
        resolve_inputs(
            spec,
            {"document": file_input_marker("uploads/gone/x")},
            ["document", "label"],
            ["document"],
            "run-1",
            tmp_path,
            store,
            {},
        )


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_field_error_is_plain_data() -> None:
    assert FieldError("a", "is required").__dict__ == {"field": "a", "message": "is required"}


# -- the commands ----------------------------------------------------------------------------------


def _cli() -> Any:
    from prefect_pipedeploy.cli import app

    return app


def test_gateway_command_options() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(_cli(), ["gateway", "--help"])
    assert result.exit_code == 0
    for option in ("--pool", "--host", "--port"):
        assert option in result.output


def test_the_gateway_needs_a_prefect_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(_cli(), ["gateway", "--pool", "p", "--port", "0"])
    assert result.exit_code == 1
    assert "PREFECT_API_URL" in result.output
