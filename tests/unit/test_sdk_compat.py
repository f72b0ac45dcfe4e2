"""The pure pieces behind the SDK's platform-way calls (`sdk.compat`, `sdk.views`), as tables."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from prefect_pipedeploy.exceptions import DeploymentCreationFailed, DeploymentNotReady, SpecError
from prefect_pipedeploy.sdk.compat import (
    data_type_of,
    folder_prefix,
    input_record,
    one_path,
    output_mapping_for,
    output_record,
    wait_decision,
    window_lines,
)
from prefect_pipedeploy.sdk.views import pipeline_name_of, readable_schedule
from prefect_pipedeploy.spec import (
    AdvancedSchedule,
    BasicSchedule,
    InputSource,
    OutputDestination,
)


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        (None, None),
        (BasicSchedule(every=1, unit="minutes"), "every minute"),
        (BasicSchedule(every=5, unit="minutes"), "every 5 minutes"),
        (BasicSchedule(every=2, unit="hours"), "every 2 hours"),
        (BasicSchedule(every=30, unit="seconds"), "every 30 seconds"),
        (AdvancedSchedule(cron="* * * * *"), "every minute"),
        (AdvancedSchedule(cron="*/15 * * * *"), "every 15 minutes"),
        (AdvancedSchedule(cron="5 * * * *"), "every hour at minute 5"),
        (AdvancedSchedule(cron="0 */6 * * *"), "every 6 hours at minute 0"),
        (AdvancedSchedule(cron="0 0 * * *"), "every day at 00:00 UTC"),
        (AdvancedSchedule(cron="30 8 * * 1"), "every Monday at 08:30 UTC"),
        (AdvancedSchedule(cron="30 8 * * 7"), "every Sunday at 08:30 UTC"),
        (AdvancedSchedule(cron="0 0 5 * *"), "on day 5 of every month at 00:00 UTC"),
        (AdvancedSchedule(cron="0 9-17 * * 1-5"), "cron '0 9-17 * * 1-5' (UTC)"),
    ],
)
def test_readable_schedule(schedule: object, words: str | None) -> None:
    assert readable_schedule(schedule) == words  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("entrypoint", "name"),
    [("pipe.py:score", "score"), ("a/b/pipe.py:Flow_1", "Flow_1"), (None, None), ("", None)],
)
def test_pipeline_name_of(entrypoint: str | None, name: str | None) -> None:
    assert pipeline_name_of(entrypoint) == name


@pytest.mark.parametrize(
    ("status", "elapsed_s", "timeout_s", "done", "error"),
    [
        ("up", 0, None, True, None),
        ("standby", 0, 1, True, None),
        ("disabled", 9, 1, True, None),  # nothing will come up: the wait ends, no error
        ("creation_pending", 0.5, 1, False, None),
        ("creation_pending", 100, None, False, None),
        ("down_retrying", 0.5, 1, False, None),
        ("creation_pending", 1, 1, True, DeploymentNotReady),
        ("down_retrying", 3, 2, True, DeploymentNotReady),
        ("creation_failed", 0, None, True, DeploymentCreationFailed),
    ],
)
def test_wait_decision(
    status: str, elapsed_s: float, timeout_s: float | None, done: bool, error: type | None
) -> None:
    decision = wait_decision("score", status, "import failed", elapsed_s, timeout_s)
    assert decision.done is done
    assert type(decision.error) is (error or type(None))
    if error is not None:
        assert "'score'" in str(decision.error)
    if error is DeploymentNotReady:
        assert status in str(decision.error) and "worker" in str(decision.error)
    if error is DeploymentCreationFailed:
        assert "import failed" in str(decision.error)


T0 = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
LINES = [
    "starting",  # before any dated line
    "2024-01-01T12:00:00+00:00 loading",
    "2024-01-01 12:01:00 ready",
    "Traceback: (undated: dated as the line before)",
    "2024-01-01T12:02:00Z done",
]


@pytest.mark.parametrize(
    ("start", "end", "limit", "kept"),
    [
        (None, None, None, LINES),
        (None, None, 2, LINES[-2:]),
        (None, None, 0, []),
        (T0 + timedelta(minutes=1), None, None, LINES[2:]),
        (None, T0 + timedelta(seconds=30), None, LINES[:2]),
        (T0 + timedelta(minutes=1), T0 + timedelta(minutes=1), None, LINES[2:4]),
        (datetime(2024, 1, 1, 12, 2), None, None, LINES[4:]),  # naive: UTC
        (T0 + timedelta(minutes=1), None, 1, LINES[4:]),
    ],
)
def test_window_lines(
    start: datetime | None, end: datetime | None, limit: int | None, kept: list[str]
) -> None:
    assert window_lines(LINES, start, end, limit) == kept


def test_window_lines_refuses_a_negative_limit() -> None:
    with pytest.raises(SpecError, match="limit"):
        window_lines(LINES, limit=-1)


@pytest.mark.parametrize(
    ("ours", "theirs", "path"),
    [("a/b", None, "a/b"), (None, "a/b", "a/b"), ("a/b", "a/b", "a/b")],
)
def test_one_path(ours: str | None, theirs: str | None, path: str) -> None:
    assert one_path(ours, theirs, "object_path", "object_path_in_datastore") == path


@pytest.mark.parametrize(
    ("ours", "theirs", "message"),
    [("a", "b", "two objects"), (None, None, "give the object's path")],
)
def test_one_path_refuses(ours: str | None, theirs: str | None, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        one_path(ours, theirs, "object_path", "object_path_in_datastore")


@pytest.mark.parametrize(
    ("prefix", "folder_path", "result"),
    [
        ("", None, ""),
        ("models", None, "models"),
        ("", "models", "models/"),
        ("", "/models/", "models/"),
        ("", "", ""),
    ],
)
def test_folder_prefix(prefix: str, folder_path: str | None, result: str) -> None:
    assert folder_prefix(prefix, folder_path) == result


@pytest.mark.parametrize(
    ("value", "data_type"),
    [("a", "string"), (1, "number"), (1.5, "number"), (True, "boolean"), ([1], "array")]
    + [({"a": 1}, "json"), (None, "json"), (b"x", "file")],
)
def test_data_type_of(value: object, data_type: str) -> None:
    assert data_type_of(value) == data_type


@pytest.mark.parametrize(
    ("mapping", "rule", "value", "record"),
    [
        (
            None,
            "endpoint",
            "hi",
            {"data_type": "string", "endpoint_input_name": "x", "source": "endpoint"},
        ),
        (None, "periodic", 3, {"data_type": "number", "source": "run"}),
        (
            InputSource(pipeline_input_name="x", constant_value=2.5, data_type="number"),
            "periodic",
            2.5,
            {"data_type": "number", "constant_value": 2.5, "source": "constant"},
        ),
        (
            InputSource(pipeline_input_name="x", constant_value="k", is_secret=True),
            "endpoint",
            "***",
            {"data_type": "json", "constant_value": "***", "source": "constant"},
        ),
        (
            InputSource(pipeline_input_name="x", environment_variable_name="HOME"),
            "endpoint",
            "/root",
            {"data_type": "json", "environment_variable_name": "HOME"}
            | {"source": "environment_variable"},
        ),
        (
            InputSource(pipeline_input_name="x", datastore_path="m/a.bin"),
            "endpoint",
            {"datastore_path": "m/a.bin"},
            {"data_type": "json", "datastore_path": "m/a.bin", "source": "datastore"},
        ),
        (
            InputSource(pipeline_input_name="x", is_null=True),
            "endpoint",
            None,
            {"data_type": "json", "is_null": True, "source": "is_null"},
        ),
        (
            InputSource(pipeline_input_name="x", endpoint_input_name="text"),
            "endpoint",
            "hi",
            {"data_type": "json", "endpoint_input_name": "text", "source": "endpoint"},
        ),
    ],
)
def test_input_record(
    mapping: InputSource | None, rule: str, value: object, record: dict[str, object]
) -> None:
    expected = {"pipeline_input_name": "x", **record, "value": value}
    assert input_record("x", value, mapping, rule) == expected


def test_output_records() -> None:
    renamed = OutputDestination(pipeline_output_name="score", endpoint_output_name="s")
    stored = OutputDestination(pipeline_output_name="model", datastore_path="m/{execution_id}")
    mappings = [renamed, stored]
    assert output_mapping_for("score", mappings) is renamed
    assert output_mapping_for("s", mappings) is renamed
    assert output_mapping_for("other", mappings) is None
    assert output_record("s", 0.5, renamed) == {
        "pipeline_output_name": "score",
        "data_type": "number",
        "endpoint_output_name": "s",
        "destination": "endpoint",
        "value": 0.5,
    }
    assert output_record("other", "a", None) == {
        "pipeline_output_name": "other",
        "data_type": "string",
        "endpoint_output_name": "other",
        "destination": "endpoint",
        "value": "a",
    }
    assert output_record("model", {"datastore_path": "m/1"}, stored, "m/1") == {
        "pipeline_output_name": "model",
        "data_type": "json",
        "datastore_path": "m/1",
        "destination": "datastore",
        "value": {"datastore_path": "m/1"},
    }
