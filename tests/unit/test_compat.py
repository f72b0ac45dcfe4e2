"""The shapes of Prefect's private API that prefect_pipedeploy/_compat.py relies on.

When Prefect is upgraded, these fail first, each naming what changed and the `_compat` function
to update (it was checked against `_compat.CHECKED_AGAINST`). The behaviour of the raw endpoints
(`/variables/filter`, lease status codes) is pinned against a real server in
tests/integration/test_compat_api.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pendulum
import prefect
import pytest
from prefect.blocks.core import Block
from prefect.flow_engine import AsyncFlowRunEngine, FlowRunEngine
from prefect.types._datetime import DateTime
from prefect.workers.base import BaseWorker

from prefect_pipedeploy import _compat
from prefect_pipedeploy.worker import PipeDeployWorker


def changed(what: str, where: str) -> str:
    """The message of a changed shape; `where` names the function to update, in `_compat` unless
    it says its module (`_compat_server.x`)."""
    place = where if where.startswith("_compat_server.") else f"_compat.{where}"
    module = place.split(".")[0]
    return (
        f"Prefect {prefect.__version__} changed {what}, which prefect_pipedeploy/{module}.py "
        f"relies on (checked against Prefect {_compat.CHECKED_AGAINST}); update {place}"
    )


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_checked_version_is_a_release_of_the_installed_line() -> None:
    installed = prefect.__version__.split(".")[:2]
    assert _compat.CHECKED_AGAINST.split(".")[:2] == installed, changed(
        f"its release line (installed {prefect.__version__})", "CHECKED_AGAINST"
    )


def test_suspension_registry_and_observer() -> None:
    from prefect import _flow_run_suspension as registry
    from prefect._internal.observers import FlowRunSuspendingObserver

    assert parameters(registry.register_flow_run_suspension_request) == [
        "flow_run_id",
        "suspension_request",
    ], changed("register_flow_run_suspension_request", "_WithoutSuspensionObserver")
    assert parameters(registry.mark_flow_run_suspension_requested) == ["flow_run_id", "state"], (
        changed("mark_flow_run_suspension_requested", "shared_suspension_observer")
    )
    request = registry.FlowRunSuspensionRequest()
    assert callable(request.raise_if_requested), changed(
        "FlowRunSuspensionRequest", "_WithoutSuspensionObserver"
    )
    assert "on_suspended" in parameters(FlowRunSuspendingObserver), changed(
        "FlowRunSuspendingObserver(on_suspended=...)", "shared_suspension_observer"
    )
    for method in ("add_in_flight_flow_run_id", "remove_in_flight_flow_run_id", "__aenter__"):
        assert hasattr(FlowRunSuspendingObserver, method), changed(
            f"FlowRunSuspendingObserver.{method}", "watch_suspension"
        )


@pytest.mark.parametrize("engine", [FlowRunEngine, AsyncFlowRunEngine])
def test_flow_engines_can_swap_their_suspension_observer(engine: type) -> None:
    for name in (
        "setup_flow_run_suspension_request",
        "_get_flow_run_suspension_request",
        "start",
        "run_context",
        "call_flow_fn",
        "is_running",
    ):
        assert hasattr(engine, name), changed(f"{engine.__name__}.{name}", "run_in_pod_engine_*")
    fields = engine.__dataclass_fields__  # type: ignore[attr-defined]
    for name in ("flow", "flow_run", "parameters"):
        assert name in fields, changed(f"{engine.__name__}({name}=...)", "run_in_pod_engine_*")
    # our override must still be what the engine calls
    assert "setup_flow_run_suspension_request" in inspect.getsource(engine), changed(
        f"where {engine.__name__} sets up its suspension request", "_WithoutSuspensionObserver"
    )


@pytest.mark.parametrize("engine", [FlowRunEngine, AsyncFlowRunEngine])
def test_flow_engines_patch_a_given_run_through_their_client_property(engine: type) -> None:
    # `_PodEngine.client` sees the PATCH only if `initialize_run` sends it through `self.client`
    # with exactly these fields (what `engine_fields` puts into a direct call's create)
    source = inspect.getsource(engine.initialize_run)
    call = source[source.index("self.client.update_flow_run(") :].split(")", 1)[0]
    assert [
        part.split("=")[0].strip() for part in call.split("(", 1)[1].split(",") if part.strip()
    ] == [
        "flow_run_id",
        "flow_version",
        "empirical_policy",
    ], changed(f"{engine.__name__}.initialize_run's PATCH of a given run", "engine_fields")
    assert isinstance(inspect.getattr_static(engine, "client"), property), changed(
        f"{engine.__name__}.client", "_PodEngine"
    )


def test_the_timestamp_column_binds_what_it_is_given_on_postgresql() -> None:
    # `postgres_timestamps_plain` wraps `Timestamp.process_bind_param`, and turns what it binds
    # on PostgreSQL (the value as given, 3.9.1) into a stdlib datetime in UTC
    from prefect.server.utilities.database import Timestamp
    from sqlalchemy.dialects.postgresql.asyncpg import dialect

    where = "_compat_server.postgres_timestamps_plain"
    assert parameters(Timestamp.process_bind_param) == ["self", "value", "dialect"], changed(
        "Timestamp.process_bind_param's parameters", where
    )
    given = DateTime(2030, 1, 2, 3, 4, 5, 6, tzinfo=pendulum.timezone("Europe/Paris"))
    assert Timestamp().process_bind_param(given, dialect()) is given, changed(
        "what Timestamp binds on PostgreSQL", where
    )


def test_the_sqlite_configuration_begins_its_transactions_by_a_context_variable() -> None:
    # `sqlite_creates_immediate` replaces `begin_transaction` with one that sets the mode
    # `begin_sqlite_stmt` emits as `BEGIN <mode>`, and wraps the app `create_app` builds, which
    # `prefect server start` (one process) looks up when it starts serving
    from prefect.cli._server_utils import _run_in_foreground
    from prefect.server.database import configurations

    where = "_compat_server.sqlite_creates_immediate"
    source = inspect.getsource(_run_in_foreground)
    assert "from prefect.server.api.server import create_app" in source, changed(
        "where `prefect server start` gets its app", where
    )
    assert "app=create_app(" in source, changed("how `prefect server start` builds its app", where)
    config = configurations.AioSqliteConfiguration
    assert parameters(config.begin_transaction) == ["self", "session", "with_for_update"], changed(
        "AioSqliteConfiguration.begin_transaction's parameters", where
    )
    assert 'SQLITE_BEGIN_MODE.set("IMMEDIATE" if with_for_update else "DEFERRED")' in (
        inspect.getsource(config.begin_transaction)
    ), changed("how AioSqliteConfiguration.begin_transaction picks its BEGIN mode", where)
    assert 'exec_driver_sql(f"BEGIN {mode}")' in inspect.getsource(config.begin_sqlite_stmt), (
        changed("AioSqliteConfiguration.begin_sqlite_stmt", where)
    )
    assert "SQLITE_BEGIN_MODE.get()" in inspect.getsource(config.begin_sqlite_stmt), changed(
        "where begin_sqlite_stmt reads its mode", where
    )


@pytest.mark.parametrize(
    ("method", "where"),
    [
        (Block.load, "load_block_sync"),
        (Block.save, "save_block_sync"),
        (Block.register_type_and_schema, "register_block_type_sync"),
    ],
)
def test_block_methods_take_the_sync_switch(method: Callable[..., Any], where: str) -> None:
    # Prefect's dual sync/async methods take `_sync` in the wrapper that dispatches them.
    wrapper = getattr(method, "__func__", method)
    assert hasattr(wrapper, "aio"), changed(f"{method.__qualname__} (no async twin)", where)
    assert 'kwargs.pop("_sync"' in inspect.getsource(wrapper.__code__), changed(
        f"the `_sync` switch of {method.__qualname__}", where
    )


def test_base_worker_private_hooks() -> None:
    for name in (
        "_sync_and_initialize",
        "_get_scheduled_flow_runs",
        "_submit_scheduled_flow_runs",
        "_emit_worker_started_event",
        "_release_limit_slot",
        "_propose_pending_state",
        "_propose_crashed_state",
        "_propose_submitting_state",
        "_give_worker_labels_to_flow_run",
        "is_worker_still_polling",
    ):
        assert callable(getattr(BaseWorker, name, None)), changed(
            f"BaseWorker.{name}", "WorkerBase"
        )
    assert parameters(BaseWorker._submit_scheduled_flow_runs) == ["self", "flow_run_response"], (
        changed("BaseWorker._submit_scheduled_flow_runs", "WorkerBase.submit_runs")
    )
    assert parameters(BaseWorker._release_limit_slot) == ["self", "flow_run_id"], changed(
        "BaseWorker._release_limit_slot", "WorkerBase._release_limit_slot"
    )
    assert parameters(BaseWorker._propose_crashed_state) == [
        "self",
        "flow_run",
        "message",
        "client",
    ], changed("BaseWorker._propose_crashed_state", "WorkerBase._propose_crashed_state")
    assert parameters(BaseWorker._propose_submitting_state) == ["self", "flow_run"], changed(
        "BaseWorker._propose_submitting_state", "WorkerBase._propose_submitting_state"
    )


def test_base_worker_private_attributes() -> None:
    worker = PipeDeployWorker(work_pool_name="compat-check")
    for name in (
        "_work_pool_name",
        "_work_pool",
        "_logger",
        "_has_successfully_synced",
        "_submitting_flow_run_ids",
        "_last_polled_time",
    ):
        assert hasattr(worker, name), changed(f"BaseWorker().{name}", "WorkerBase")
    assert worker.pool_name == "compat-check"
    assert worker.pool_id is None and worker.has_synced is False
    assert isinstance(worker._submitting_flow_run_ids, set), changed(
        "BaseWorker()._submitting_flow_run_ids", "WorkerBase.is_submitting"
    )


def test_the_abstract_base_is_not_a_worker_type() -> None:
    assert BaseWorker.get_worker_class_from_type("pipedeploy") is PipeDeployWorker
    registered = BaseWorker.get_all_available_worker_types()
    assert "pipedeploy" in registered
    assert not any(getattr(cls, "__name__", "") == "WorkerBase" for cls in registered), changed(
        "how abstract worker classes are kept out of the registry", "WorkerBase"
    )


def test_healthcheck_server_builder_is_public() -> None:
    from prefect.workers.server import build_healthcheck_server

    assert parameters(build_healthcheck_server)[:2] == ["worker", "query_interval_seconds"]
