"""A new flow run's labels, its events' related resources and the deployment the concurrency
rules look at, as the stack's Prefect server reads them (`_compat_server.lean_flow_run_reads`, one
select each), are what Prefect's own functions give: case by case on a real SQLite database made
by Prefect's models (tests/support/server_reads.py; the same tables run on PostgreSQL in
tests/e2e/test_on_postgresql.py). Then the session's server, which has them installed: a
deployment's run made through the plain create route carries the deployment's labels, and its
Scheduled event names its flow, deployment, queue and pool; a deployment limited to one run at a
time still holds its second run back until the first is final (the answers a plain Prefect
server gives, checked by hand against `prefect server start`).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.server_reads import (
    CONCURRENCY_CASES,
    LABEL_CASES,
    LIMITED_ANSWERS,
    RELATED_CASES,
    Answers,
    a_limited_deployments_runs,
    a_run_through_the_server,
    both_answers,
    check_the_run_and_its_event,
)


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Answers, Answers, Answers]:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('reads') / 'prefect.db'}"
    return asyncio.run(both_answers(url, create=True))


@pytest.mark.parametrize("case", LABEL_CASES)
def test_labels_are_prefects(case: str, answers: tuple[Answers, Answers, Answers]) -> None:
    prefects, ours = answers[0][case]
    assert ours == prefects
    assert list(ours) == list(prefects)  # the same order too


@pytest.mark.parametrize("case", RELATED_CASES)
def test_related_resources_are_prefects(
    case: str, answers: tuple[Answers, Answers, Answers]
) -> None:
    (prefects, prefects_kept), (ours, ours_kept) = answers[1][case]
    assert ours == prefects
    assert ours_kept == prefects_kept


@pytest.mark.parametrize("case", CONCURRENCY_CASES)
def test_the_concurrency_rules_see_what_prefect_reads(
    case: str, answers: tuple[Answers, Answers, Answers]
) -> None:
    prefects, ours = answers[2][case]
    assert ours == prefects


def test_a_limited_deployment_still_runs_one_at_a_time(prefect_api: str) -> None:
    assert asyncio.run(a_limited_deployments_runs(prefect_api)) == LIMITED_ANSWERS


def test_the_servers_runs_carry_their_labels_and_name_their_resources(prefect_api: str) -> None:
    check_the_run_and_its_event(asyncio.run(a_run_through_the_server(prefect_api)))
