"""A new flow run's labels and its events' related resources, as the stack's Prefect server reads
them (`_compat_server.lean_flow_run_reads`, one select each), are what Prefect's own functions
give: case by case on a real SQLite database made by Prefect's models (tests/support/
server_reads.py; the same table runs on PostgreSQL in tests/e2e/test_on_postgresql.py). Then the
session's server, which has them installed: a deployment's run made through the plain create route
carries the deployment's labels, and its Scheduled event names its flow, deployment, queue and
pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.server_reads import (
    LABEL_CASES,
    RELATED_CASES,
    a_run_through_the_server,
    both_answers,
    check_the_run_and_its_event,
)


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('reads') / 'prefect.db'}"
    return asyncio.run(both_answers(url, create=True))


@pytest.mark.parametrize("case", LABEL_CASES)
def test_labels_are_prefects(case: str, answers: tuple[dict[str, Any], dict[str, Any]]) -> None:
    prefects, ours = answers[0][case]
    assert ours == prefects
    assert list(ours) == list(prefects)  # the same order too


@pytest.mark.parametrize("case", RELATED_CASES)
def test_related_resources_are_prefects(
    case: str, answers: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    (prefects, prefects_kept), (ours, ours_kept) = answers[1][case]
    assert ours == prefects
    assert ours_kept == prefects_kept


def test_the_servers_runs_carry_their_labels_and_name_their_resources(prefect_api: str) -> None:
    check_the_run_and_its_event(asyncio.run(a_run_through_the_server(prefect_api)))
