"""The shapes of Prefect's engine and log handler that storing a run's logs before its final
state relies on (`_compat`: `run_in_engine_*`, `run_in_pod_engine_*`, `install_api_log_sink`).

When Prefect is upgraded, these fail first, naming what changed (checked against
`_compat.CHECKED_AGAINST`).
"""

from __future__ import annotations

import inspect

import prefect
import pytest
from prefect.flow_engine import AsyncFlowRunEngine, FlowRunEngine
from prefect.logging import handlers

from prefect_pipedeploy import _compat


def changed(what: str, where: str) -> str:
    return (
        f"Prefect {prefect.__version__} changed {what}, which prefect_pipedeploy/_compat.py "
        f"relies on (checked against Prefect {_compat.CHECKED_AGAINST}); update _compat.{where}"
    )


@pytest.mark.parametrize("engine", [FlowRunEngine, AsyncFlowRunEngine])
def test_every_final_state_goes_through_set_state(engine: type) -> None:
    assert list(inspect.signature(engine.set_state).parameters) == ["self", "state", "force"], (
        changed(f"{engine.__name__}.set_state", "_FlowRunEngine.set_state")
    )
    assert "short_circuit" in engine.__dataclass_fields__, changed(  # type: ignore[attr-defined]
        f"{engine.__name__}.short_circuit", "_about_to_be_final"
    )
    for handler in (
        "handle_success",
        "handle_exception",
        "handle_timeout",
        "handle_crash",
        "handle_cancellation",
    ):
        source = inspect.getsource(getattr(engine, handler))
        assert "self.set_state(" in source, changed(
            f"how {engine.__name__}.{handler} sets the final state", "_FlowRunEngine.set_state"
        )
    # the state is proposed (and the run seen final) before the run's closing line is logged
    start = inspect.getsource(engine.initialize_run)
    assert "Finished in state" in start, changed(
        f"where {engine.__name__} logs 'Finished in state'", "run_in_engine_*"
    )


def test_the_api_log_handler_hands_lines_to_the_sink() -> None:
    assert list(inspect.signature(handlers.set_api_log_sink).parameters) == ["sink"], changed(
        "set_api_log_sink", "install_api_log_sink"
    )
    assert "_api_log_sink(log)" in inspect.getsource(handlers.emit_api_log), changed(
        "emit_api_log", "install_api_log_sink"
    )
    assert "emit_api_log(log)" in inspect.getsource(handlers.APILogHandler.emit), changed(
        "APILogHandler.emit", "install_api_log_sink"
    )
