"""Prefect's private API in the Prefect server the stack starts (`serverproc`): the changes that
server installs in its own process before it serves.

For: `sqlite_creates_immediate` (a SQLite server's flow-run creates begun IMMEDIATE),
`postgres_timestamps_plain` (a PostgreSQL server's timestamps bound as stdlib datetimes) and
`lean_flow_run_reads` (a new flow run's labels, its events' related resources and the
deployment the concurrency rules look at read in one statement each). Not
for: anything a client process does (`_compat`, the home of the rest of Prefect's private API
this project uses; this half is apart because it runs in another process, the server's, and
`_compat` had grown past the size the architecture aims at). Each section says the Prefect
version it was checked against (`_compat.CHECKED_AGAINST`); `tests/unit/test_compat.py` pins the
shapes relied on here too.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from types import SimpleNamespace
from typing import Any

# ---------------------------------------------------------------------------------------------
# A SQLite server's flow-run creates begin IMMEDIATE (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------
#
# Prefect's SQLite configuration begins a write transaction DEFERRED unless it is asked for
# update (`AioSqliteConfiguration.begin_transaction`, `SQLITE_BEGIN_MODE`). A deferred transaction
# that has read and then writes after another connection committed cannot take the write lock
# (SQLITE_BUSY_SNAPSHOT): SQLite fails it at once, without waiting `busy_timeout`, and the server
# answers 503. Under concurrent writes most flow-run creates met that, and measured, only they
# (every 503 a server answered, by route). Begun IMMEDIATE, a create takes the write lock at
# BEGIN, waiting for the writer before it as `busy_timeout` allows: creates queue instead of
# failing. Other requests keep Prefect's modes: begun IMMEDIATE too, a round trip at rest took
# a few percent longer (medians 204 -> 212 ms and 214 -> 225 ms, benchmarks/README.md).
# Installed by the server the stack starts (`serverproc`), in its process: the app `create_app`
# builds is wrapped so that the requests `IMMEDIATE_REQUESTS` matches run with
# `_begin_immediate` set.

#: The requests whose write transactions begin IMMEDIATE: the two flow-run creates.
IMMEDIATE_REQUESTS = re.compile(r"^/api/(flow_runs/?|deployments/[^/]+/create_flow_run)$")

_begin_immediate: ContextVar[bool] = ContextVar("pipedeploy_begin_immediate", default=False)


def begins_immediate(method: str, path: str) -> bool:
    """Whether a request's write transactions begin IMMEDIATE (`IMMEDIATE_REQUESTS`)."""
    return method == "POST" and IMMEDIATE_REQUESTS.match(path) is not None


def sqlite_creates_immediate() -> None:
    """In this process (a Prefect server about to start): the write transactions of a flow-run
    create begin IMMEDIATE on SQLite (`begins_immediate`); the others as Prefect begins them."""
    from prefect.server.api import server
    from prefect.server.database import configurations

    @asynccontextmanager
    async def begin_transaction(
        self: Any, session: Any, with_for_update: bool = False
    ) -> AsyncIterator[Any]:
        immediate = with_for_update or _begin_immediate.get()
        token = configurations.SQLITE_BEGIN_MODE.set("IMMEDIATE" if immediate else "DEFERRED")
        try:
            async with session.begin() as transaction:
                yield transaction
        finally:
            configurations.SQLITE_BEGIN_MODE.reset(token)

    configurations.AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]
    create_app = server.create_app

    def create_app_marking_creates(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)

        async def marked(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or not begins_immediate(scope["method"], scope["path"]):
                return await app(scope, receive, send)
            token = _begin_immediate.set(True)
            try:
                return await app(scope, receive, send)
            finally:
                _begin_immediate.reset(token)

        return marked

    server.create_app = create_app_marking_creates  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# A PostgreSQL server's timestamps bound as plain datetimes (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------
#
# On Python 3.11 and 3.12, Prefect's server makes its timestamps as `prefect.types._datetime.
# DateTime`, a Pendulum subclass, and its `Timestamp` column type hands them to asyncpg as they
# are on PostgreSQL. asyncpg encodes a timestamp by subtracting its epoch from it, and
# Pendulum's `__sub__` builds an `Interval`: about 65 us each on this project's 2-core machine,
# against 2 us for the conversion below, a few dozen times per flow-run create (its row, its
# state, its event and the event's resources). Measured (benchmarks/README.md): 32 concurrent
# plain creates cost the server 30.1 ms each with them, 23.7 ms with this. Installed by the
# server the stack starts (`serverproc`), in its process: bound values are the same instants
# as stdlib datetimes in UTC; what is stored and read back does not change.


def _plain_utc(value: Any) -> Any:
    """`value` (an aware datetime, maybe a Pendulum one) as a stdlib datetime in UTC."""
    if type(value) is datetime.datetime:
        return value
    offset = value.utcoffset()
    plain = datetime.datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        datetime.timezone.utc,
    )
    return plain - offset if offset else plain


def postgres_timestamps_plain() -> None:
    """In this process (a Prefect server about to start): on PostgreSQL, Prefect's `Timestamp`
    columns bind stdlib datetimes in UTC (`_plain_utc`); SQLite's binding is left as it is."""
    from prefect.server.utilities.database import Timestamp

    bind = Timestamp.process_bind_param

    def process_bind_param(self: Any, value: Any, dialect: Any) -> Any:
        bound = bind(self, value, dialect)
        if bound is None or dialect.name != "postgresql":
            return bound
        return _plain_utc(bound)

    Timestamp.process_bind_param = process_bind_param  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------
# A new flow run's labels, its events' related resources and its deployment's concurrency limit
# read in one statement each (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------
#
# Prefect's flow-run create reads the run's whole deployment for its labels
# (`models.flow_runs.with_system_labels_for_flow_run`): the deployment, its schedules, its work
# queue and that queue's pool, four statements for three columns. The run's first state event
# then reads the flow, the deployment (again, all four) and the work queue with its pool for the
# event's related resources (`models.events._flow_run_related_resources_from_orm`, which keeps
# what it read for the run's later events). Counted on the stack's PostgreSQL server, a
# gateway's burst of 63 creates: 21 statements per create, 9 of them these. Measured
# (benchmarks/README.md): the server's CPU per accepted call went from 36-41 ms to 28-30 ms,
# and the gateway accepted 31-33 calls a second instead of 23-26. Installed by the server the
# stack starts (`serverproc`), in its process: the labels are read as one select of the
# deployment's `labels` and `flow_id`, the related resources as one select of the flow joined to
# the deployment, work queue and pool, and both give what Prefect's functions give (the same
# values, in the same order; `tests/integration/test_server_reads.py` compares them on SQLite
# and on PostgreSQL). A subflow's run (a parent task run) and a run whose flow is gone keep
# Prefect's reads.

_prefect_reads: dict[str, Any] = {}


async def flow_run_labels(session: Any, flow_run: Any) -> dict[str, Any]:
    """What Prefect's `with_system_labels_for_flow_run` returns, the deployment read as one
    select of the two columns it uses."""
    import sqlalchemy as sa
    from prefect.server import schemas
    from prefect.server.database import provide_database_interface

    if isinstance(flow_run, schemas.core.FlowRun) and flow_run.deployment_id:
        db = provide_database_interface()
        deployment_id = flow_run.deployment_id
        read = sa.select(db.Deployment.labels, db.Deployment.flow_id).where(
            db.Deployment.id == deployment_id
        )
        row = (await session.execute(read)).first()
        if row is not None:
            system = {
                "prefect.flow.id": str(row.flow_id),
                "prefect.deployment.id": str(deployment_id),
            }
            return (row.labels or {}) | system | (flow_run.labels or {})
    return await _prefect_reads["labels"](session, flow_run)


async def flow_run_related_resources(session: Any, flow_run: Any) -> list[dict[str, str]]:
    """What Prefect's `_flow_run_related_resources_from_orm` returns, kept for the run's later
    events as it keeps it, read as one select of the flow joined to the run's deployment, work
    queue and pool."""
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface
    from prefect.server.models import events

    if flow_run.parent_task_run_id or flow_run.id in events._flow_run_resource_data_cache:
        return await _prefect_reads["related"](session, flow_run)
    db = provide_database_interface()
    deployment_is = (
        db.Deployment.id == flow_run.deployment_id if flow_run.deployment_id else sa.false()
    )
    queue_is = db.WorkQueue.id == flow_run.work_queue_id if flow_run.work_queue_id else sa.false()
    read = (
        sa.select(
            db.Flow.id.label("flow_id"),
            db.Flow.name.label("flow_name"),
            db.Flow.tags.label("flow_tags"),
            db.Deployment.id.label("deployment_id"),
            db.Deployment.name.label("deployment_name"),
            db.Deployment.tags.label("deployment_tags"),
            db.WorkQueue.id.label("queue_id"),
            db.WorkQueue.name.label("queue_name"),
            db.WorkPool.id.label("pool_id"),
            db.WorkPool.name.label("pool_name"),
            db.WorkPool.type.label("pool_type"),
        )
        .select_from(db.Flow)
        .outerjoin(db.Deployment, deployment_is)
        .outerjoin(db.WorkQueue, queue_is)
        .outerjoin(db.WorkPool, db.WorkPool.id == db.WorkQueue.work_pool_id)
        .where(db.Flow.id == flow_run.flow_id)
    )
    row = (await session.execute(read)).first()
    if row is None:
        return await _prefect_reads["related"](session, flow_run)
    data = events._as_resource_data(
        flow_run,
        _present(id=row.flow_id, name=row.flow_name, tags=row.flow_tags),
        _present(id=row.deployment_id, name=row.deployment_name, tags=row.deployment_tags),
        _present(id=row.queue_id, name=row.queue_name),
        _present(id=row.pool_id, name=row.pool_name, type=row.pool_type),
    )
    events._flow_run_resource_data_cache[flow_run.id] = data
    return events._resource_data_as_related_resources(
        data, excluded_kinds=["flow-run"]
    ) + events._provenance_as_related_resources(flow_run.created_by)


def _present(**columns: Any) -> Any:
    """The joined object's columns (as the ORM object has them), None where the outer join
    found no row."""
    return SimpleNamespace(**columns) if columns["id"] is not None else None


# The orchestration rules of deployment concurrency (`core_policy.SecureFlowConcurrencySlots`,
# `ValidateDeploymentConcurrencyAtRunning`, `ReleaseFlowConcurrencySlots`,
# `EnforceDeploymentConcurrencyOnLate`, the only users of `deployments.read_deployment` in
# `core_policy`) read the run's whole deployment, four statements, at its Pending and at its final
# state, to look at its concurrency limit; a deployment without one makes every rule return at
# once. Counted, a parallel pod's direct executions: 37 statements each, 4 of them this read
# (8 of a worker-path execution's). The rules now read the deployment's `concurrency_limit_id`
# and `concurrency_options` first; a deployment with a limit is then read whole as before
# (`deployment_for_concurrency`). Measured (benchmarks/README.md): a worker-path execution of a
# parallel pod cost the server 143-147 ms instead of 153-171.


async def deployment_for_concurrency(session: Any, deployment_id: Any) -> Any:
    """What the concurrency rules need of Prefect's `read_deployment`: None for a deployment that
    is gone; for one without a concurrency limit, its id, no limit and its options; for one with
    a limit, the deployment as Prefect reads it."""
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    read = sa.select(db.Deployment.concurrency_limit_id, db.Deployment.concurrency_options).where(
        db.Deployment.id == deployment_id
    )
    row = (await session.execute(read)).first()
    if row is None:
        return None
    if row.concurrency_limit_id is not None:
        return await _prefect_reads["deployment"](session=session, deployment_id=deployment_id)
    return SimpleNamespace(
        id=deployment_id,
        concurrency_limit_id=None,
        global_concurrency_limit=None,
        concurrency_options=row.concurrency_options,
    )


class _ConcurrencyRulesDeployments:
    """`prefect.server.models.deployments` as `core_policy` sees it: its `read_deployment` is
    `deployment_for_concurrency`, anything else the module's own."""

    def __init__(self, module: Any) -> None:
        self._module = module

    read_deployment = staticmethod(deployment_for_concurrency)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def lean_flow_run_reads() -> None:
    """In this process (a Prefect server about to start): a new flow run's labels and its
    events' related resources are read by `flow_run_labels` and `flow_run_related_resources`, and
    the concurrency rules' deployment by `deployment_for_concurrency`."""
    from prefect.server.models import deployments, events, flow_runs
    from prefect.server.orchestration import core_policy

    _prefect_reads.setdefault("labels", flow_runs.with_system_labels_for_flow_run)
    _prefect_reads.setdefault("related", events._flow_run_related_resources_from_orm)
    _prefect_reads.setdefault("deployment", deployments.read_deployment)
    core_policy.deployments = _ConcurrencyRulesDeployments(deployments)  # type: ignore[assignment]
    flow_runs.with_system_labels_for_flow_run = flow_run_labels  # type: ignore[assignment]
    events._flow_run_related_resources_from_orm = (  # type: ignore[assignment]
        flow_run_related_resources
    )
