"""The reads `_compat_server.lean_flow_run_reads` puts in the stack's Prefect server, compared with
Prefect's own on a real database, case by case; a deployment concurrency limit at work.

For: tests/integration/test_server_reads.py (SQLite) and tests/e2e/test_on_postgresql.py (the
cluster its server runs on). Each case is a flow run (its labels' input, or the ORM run its first
state event describes, or the deployment the concurrency rules read) over flows, a work pool
with two queues and deployments made through
Prefect's own models in the database at `database_url`; each is answered by Prefect's function
and by ours, and the two answers are returned side by side.
Not for: the server's other changes (test_serverproc.py, test_sqlite_immediate.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID, uuid4

from prefect.server import models, schemas
from prefect.server.database import provide_database_interface
from prefect.server.database.dependencies import temporary_database_interface
from prefect.server.models import events
from prefect.server.orchestration import core_policy
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings

from prefect_pipedeploy._compat_server import (
    _prefect_reads,
    deployment_for_concurrency,
    flow_run_labels,
    flow_run_related_resources,
    lean_flow_run_reads,
)

#: The cases, by name: the run whose labels or related resources are read.
LABEL_CASES = [
    "a deployment's run, with the deployment's labels and its own",
    "a deployment's run, the deployment without labels",
    "a deployment's run, the run without labels",
    "a run of a deployment that is gone",
    "a flow's run without a deployment",
    "a run described by the create's input (FlowRunCreate)",
]
RELATED_CASES = [
    "a deployment's run on the pool's second queue, tags everywhere, made by a deployment",
    "a deployment's run on the pool's default queue, no tags",
    "a run of a deployment without a pool",
    "a flow's run without a deployment or queue",
    "a run whose deployment and queue are gone",
    "a run whose flow is gone",
    "a subflow's run (a parent task run)",
    "a run whose related resources Prefect has kept already",
]
CONCURRENCY_CASES = [
    "a deployment without a concurrency limit",
    "a deployment with a concurrency limit",
    "a deployment with a concurrency limit that cancels new runs",
    "a deployment that is gone",
]


@contextlib.asynccontextmanager
async def prefect_database(database_url: str, create: bool) -> AsyncIterator[Any]:
    """Prefect's database interface on `database_url` in this process (its tables made first
    when `create`), undone when the block ends."""
    with (
        temporary_settings(updates={PREFECT_API_DATABASE_CONNECTION_URL: database_url}),
        temporary_database_interface(),
    ):
        db = provide_database_interface()
        if create:
            await db.create_db()  # Prefect's migrations, as its server runs them
        try:
            yield db
        finally:
            await (await db.engine()).dispose()


async def world(session: Any, db: Any) -> dict[str, Any]:
    """Two flows, a work pool with its default queue and a second one, and three deployments:
    one with tags and labels on the second queue, one bare on the default queue, one without a
    pool. Names are unique, so a database may hold many of these."""
    tag = uuid4().hex[:8]
    flow = await models.flows.create_flow(
        session=session,
        flow=schemas.core.Flow(name=f"reads-{tag}", tags=["flow-tag"], labels={"team": "ml"}),
    )
    bare_flow = await models.flows.create_flow(
        session=session, flow=schemas.core.Flow(name=f"reads-bare-{tag}")
    )
    pool = await models.workers.create_work_pool(
        session=session,
        work_pool=schemas.actions.WorkPoolCreate(name=f"reads-{tag}", type="pipedeploy"),
    )
    second = await models.workers.create_work_queue(
        session=session,
        work_pool_id=pool.id,
        work_queue=schemas.actions.WorkQueueCreate(name="second"),
    )

    async def deployment(name: str, **fields: Any) -> Any:
        return await models.deployments.create_deployment(
            session=session,
            deployment=schemas.core.Deployment(name=f"{name}-{tag}", flow_id=flow.id, **fields),
        )

    tagged = await deployment(
        "tagged",
        tags=["dep-tag", "flow-tag"],
        labels={"stage": "prod", "team": "ops"},
        work_queue_id=second.id,
        work_queue_name="second",
    )
    bare = await deployment("bare", work_queue_id=pool.default_queue_id)
    poolless = await deployment("poolless")
    limited = await deployment("limited", concurrency_limit=2)
    cancels = await deployment(
        "cancels",
        concurrency_limit=1,
        concurrency_options=schemas.core.ConcurrencyOptions(collision_strategy="CANCEL_NEW"),
    )
    await session.flush()
    return {
        "flow": flow,
        "bare_flow": bare_flow,
        "pool": pool,
        "second": second,
        "tagged": tagged,
        "bare": bare,
        "poolless": poolless,
        "limited": limited,
        "cancels": cancels,
        "db": db,
    }


def label_input(case: str, w: dict[str, Any]) -> Any:
    """The labels function's input for `case`."""
    flow_id, tagged, bare = w["flow"].id, w["tagged"], w["bare"]
    run = schemas.core.FlowRun
    return {
        LABEL_CASES[0]: run(flow_id=flow_id, deployment_id=tagged.id, labels={"mine": 1}),
        LABEL_CASES[1]: run(flow_id=flow_id, deployment_id=bare.id, labels={"mine": True}),
        LABEL_CASES[2]: run(flow_id=flow_id, deployment_id=tagged.id, labels=None),
        LABEL_CASES[3]: run(flow_id=flow_id, deployment_id=uuid4(), labels={"mine": "x"}),
        LABEL_CASES[4]: run(flow_id=flow_id, labels={"team": "mine"}),
        LABEL_CASES[5]: schemas.actions.FlowRunCreate(
            flow_id=flow_id, deployment_id=tagged.id, labels={"mine": "y"}
        ),
    }[case]


def related_input(case: str, w: dict[str, Any]) -> Any:
    """The ORM flow run (not stored: the functions read only its columns) for `case`."""
    db, flow, tagged, bare = w["db"], w["flow"], w["tagged"], w["bare"]

    def run(flow_id: UUID, **columns: Any) -> Any:
        columns.setdefault("tags", [])
        return db.FlowRun(id=uuid4(), name=f"run-{uuid4().hex[:6]}", flow_id=flow_id, **columns)

    by_deployment = schemas.core.CreatedBy(id=tagged.id, type="DEPLOYMENT", display_value="d")
    return {
        RELATED_CASES[0]: run(
            flow.id,
            deployment_id=tagged.id,
            work_queue_id=w["second"].id,
            tags=["run-tag", "dep-tag"],
            created_by=by_deployment,
        ),
        RELATED_CASES[1]: run(
            w["bare_flow"].id, deployment_id=bare.id, work_queue_id=w["pool"].default_queue_id
        ),
        RELATED_CASES[2]: run(flow.id, deployment_id=w["poolless"].id),
        RELATED_CASES[3]: run(flow.id),
        RELATED_CASES[4]: run(flow.id, deployment_id=uuid4(), work_queue_id=uuid4()),
        RELATED_CASES[5]: run(uuid4(), deployment_id=tagged.id),
        RELATED_CASES[6]: run(flow.id, deployment_id=tagged.id, parent_task_run_id=uuid4()),
        RELATED_CASES[7]: run(flow.id, deployment_id=tagged.id, work_queue_id=w["second"].id),
    }[case]


def concurrency_input(case: str, w: dict[str, Any]) -> UUID:
    """The deployment id the concurrency rules read for `case`."""
    return {
        CONCURRENCY_CASES[0]: w["tagged"].id,
        CONCURRENCY_CASES[1]: w["limited"].id,
        CONCURRENCY_CASES[2]: w["cancels"].id,
        CONCURRENCY_CASES[3]: uuid4(),
    }[case]


def what_the_rules_see(deployment: Any) -> Any:
    """Everything of a deployment the concurrency rules of `core_policy` read (3.9.1)."""
    if deployment is None:
        return None
    limit = deployment.global_concurrency_limit
    return {
        "id": deployment.id,
        "concurrency_limit_id": deployment.concurrency_limit_id,
        "concurrency_options": deployment.concurrency_options,
        "limit": None if limit is None else (limit.id, limit.limit, limit.active_slots),
    }


Answers = dict[str, tuple[Any, Any]]


async def both_answers(database_url: str, create: bool) -> tuple[Answers, Answers, Answers]:
    """Per case, (Prefect's answer, ours): the labels; the related resources with what is kept
    for the run's later events; what the concurrency rules see of a deployment."""
    kept_rules_module = core_policy.deployments
    lean_flow_run_reads()  # records Prefect's functions; the module attributes are put back
    prefect_labels, prefect_related = _prefect_reads["labels"], _prefect_reads["related"]
    prefect_deployment = _prefect_reads["deployment"]
    restore_module_functions(prefect_labels, prefect_related)
    core_policy.deployments = kept_rules_module
    labels: Answers = {}
    related: Answers = {}
    concurrency: Answers = {}
    async with prefect_database(database_url, create) as db:
        async with db.session_context(begin_transaction=True) as session:
            w = await world(session, db)
            for case in LABEL_CASES:
                run = label_input(case, w)
                labels[case] = (
                    await prefect_labels(session, run),
                    await flow_run_labels(session, run),
                )
            for case in RELATED_CASES:
                run = related_input(case, w)
                related[case] = (
                    await described(prefect_related, session, run, case),
                    await described(flow_run_related_resources, session, run, case),
                )
            for case in CONCURRENCY_CASES:
                deployment_id = concurrency_input(case, w)
                concurrency[case] = (
                    what_the_rules_see(
                        await prefect_deployment(session=session, deployment_id=deployment_id)
                    ),
                    what_the_rules_see(await deployment_for_concurrency(session, deployment_id)),
                )
            await session.rollback()
    return labels, related, concurrency


async def described(
    read: Callable[[Any, Any], Any], session: Any, run: Any, case: str
) -> tuple[Any, Any]:
    """`read`'s related resources for `run` and what it left kept for the run (the cache is
    emptied of the run first, or, for the last case, holds what Prefect keeps already)."""
    cache = events._flow_run_resource_data_cache
    cache.pop(run.id, None)
    if case == RELATED_CASES[-1]:
        cache[run.id] = {"flow": {"id": "kept", "name": "kept", "role": "flow", "tags": ["k"]}}
    answer = await read(session, run)
    return answer, cache.pop(run.id, None)


def restore_module_functions(labels: Any, related: Any) -> None:
    """Prefect's functions back on its modules (this test process serves no requests)."""
    models.flow_runs.with_system_labels_for_flow_run = labels
    events._flow_run_related_resources_from_orm = related


async def a_run_through_the_server(api_url: str) -> dict[str, Any]:
    """A deployment (tags, labels, on a new pool's default queue) of a flow (tags, labels) made on
    the server at `api_url`, one run of it made through the plain create route as the gateway
    makes it (`create_deployment_run`), and that run's Scheduled event once the server has
    stored it: every object, read back through the API."""
    from prefect.client.orchestration import PrefectClient

    from prefect_pipedeploy.prefect_api.runs import create_deployment_run
    from tests.support.eventually import eventually

    tag = uuid4().hex[:8]
    async with PrefectClient(api_url) as client:
        http = client._client
        flow = await post(http, "/flows/", {"name": f"reads-{tag}", "tags": ["flow-tag"]})
        pool = await post(http, "/work_pools/", {"name": f"reads-{tag}", "type": "pipedeploy"})
        deployment = await post(
            http,
            "/deployments/",
            {
                "name": f"reads-{tag}",
                "flow_id": flow["id"],
                "work_pool_name": pool["name"],
                "tags": ["dep-tag"],
                "labels": {"stage": "prod"},
            },
        )
        read = await client.read_deployment(UUID(deployment["id"]))
        run = await create_deployment_run(
            client, read, parameters={}, idempotency_key=f"reads-{tag}"
        )
        queue = (await http.get(f"/work_queues/{read.work_queue_id}")).json()
        stored = (await http.get(f"/flow_runs/{run.id}")).json()

    def scheduled_event() -> list[dict[str, Any]]:
        import httpx

        response = httpx.post(
            f"{api_url}/events/filter",
            json={
                "filter": {
                    "event": {"name": ["prefect.flow-run.Scheduled"]},
                    "resource": {"id": [f"prefect.flow-run.{run.id}"]},
                    "occurred": {"since": "2000-01-01T00:00:00Z"},
                },
                "limit": 5,
            },
        )
        response.raise_for_status()
        return list(response.json()["events"])

    events = eventually(scheduled_event, 30, 0.5, what="the run's Scheduled event stored")
    return {
        "flow": flow,
        "pool": pool,
        "queue": queue,
        "deployment": deployment,
        "run": stored,
        "event": events[0],
    }


async def post(http: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await http.post(path, json=body)
    response.raise_for_status()
    return dict(response.json())


def check_the_run_and_its_event(made: dict[str, Any]) -> None:
    """The run carries its deployment's labels with the system's, and its Scheduled event names
    its flow, deployment, queue and pool, with the tags of the flow and the deployment."""
    flow, pool, queue, deployment = made["flow"], made["pool"], made["queue"], made["deployment"]
    labels = made["run"]["labels"]
    assert labels["stage"] == "prod"
    assert labels["prefect.flow.id"] == flow["id"]
    assert labels["prefect.deployment.id"] == deployment["id"]
    related = [
        {k: v for k, v in r.items() if k != "prefect.resource.role"}
        for r in made["event"]["related"]
        if r["prefect.resource.role"] != "creator"
    ]
    assert related == [
        {
            "prefect.resource.id": f"prefect.flow.{flow['id']}",
            "prefect.resource.name": flow["name"],
        },
        {
            "prefect.resource.id": f"prefect.deployment.{deployment['id']}",
            "prefect.resource.name": deployment["name"],
        },
        {
            "prefect.resource.id": f"prefect.work-queue.{queue['id']}",
            "prefect.resource.name": "default",
        },
        {
            "prefect.resource.id": f"prefect.work-pool.{pool['id']}",
            "prefect.resource.name": pool["name"],
            "prefect.work-pool.type": "pipedeploy",
        },
        {"prefect.resource.id": "prefect.tag.dep-tag"},
        {"prefect.resource.id": "prefect.tag.flow-tag"},
    ]


async def a_limited_deployments_runs(api_url: str) -> list[str]:
    """On the server at `api_url`: a deployment limited to one run at a time and two of its
    runs. Each step's answer, in order: the first run's Pending, the second's (the slot taken),
    the first run's Running and Completed, the second's Pending again (the slot released)."""
    from prefect.client.orchestration import PrefectClient

    tag = uuid4().hex[:8]
    answers = []
    async with PrefectClient(api_url) as client:
        http = client._client
        flow = await post(http, "/flows/", {"name": f"limited-{tag}"})
        deployment = await post(
            http,
            "/deployments/",
            {"name": f"limited-{tag}", "flow_id": flow["id"], "concurrency_limit": 1},
        )
        runs = [
            await post(http, f"/deployments/{deployment['id']}/create_flow_run", {})
            for _ in range(2)
        ]

        async def propose(run: dict[str, Any], state: str) -> None:
            answer = await post(
                http, f"/flow_runs/{run['id']}/set_state", {"state": {"type": state}}
            )
            answers.append(f"{answer['status']} {answer['state']['name']}")

        await propose(runs[0], "PENDING")
        await propose(runs[1], "PENDING")
        await propose(runs[0], "RUNNING")
        await propose(runs[0], "COMPLETED")
        await propose(runs[1], "PENDING")
    return answers


#: What Prefect answers those steps (3.9.1).
LIMITED_ANSWERS = [
    "ACCEPT Pending",
    "REJECT AwaitingConcurrencySlot",
    "ACCEPT Running",
    "ACCEPT Completed",
    "ACCEPT Pending",
]
