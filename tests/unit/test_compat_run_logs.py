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


@pytest.mark.parametrize("engine_class", ["_FlowRunEngine", "_AsyncFlowRunEngine"])
def test_a_run_ended_elsewhere_proposes_no_state_and_stops_its_engine(engine_class: str) -> None:
    """A run cancelled while its `def` pipeline's thread runs on: its engine proposes no state
    (this engine has no client: a proposal would raise) and takes the Cancelled state as its
    own, so it stops instead of running the flow again (3.9.1 reads `flow_run.state`)."""
    import asyncio
    import uuid

    from prefect import flow
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Cancelled, Completed, Running

    @flow
    def pipeline() -> None:
        return None

    flow_run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="r", state=Running())
    engine = getattr(_compat, engine_class)(flow=pipeline, flow_run=flow_run)
    cancelled = Cancelled(message="Cancelled on request")
    _compat.discard_engine_states(flow_run.id, cancelled)
    try:
        assert _compat.engine_states_discarded(flow_run.id)
        proposed = engine.set_state(Completed())
        if inspect.isawaitable(proposed):
            proposed = asyncio.run(proposed)
        assert proposed is cancelled
        assert engine.state is cancelled and not engine.is_running()
    finally:
        _compat.forget_discarded_states(flow_run.id)
    assert not _compat.engine_states_discarded(flow_run.id)
