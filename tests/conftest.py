"""The session's Prefect server and the fixtures every tier shares.

One real Prefect server per test session: `prefect server start` on SQLite in a temporary home,
on a free 127.0.0.1 port, started through the same code `pipedeploy up` uses (only when a test
asks for `prefect_api`); every test talks to it over HTTP. That home also holds the client's
Prefect home, the workers' pipedeploy home and the pipelines' file outputs; it is removed when the
session ends, after the server has stopped.

Tiers (README.md, "Tests"): tests/unit (pure), tests/integration (in-process against this
server, moto's S3 server, the gateway app through httpx's ASGI transport), tests/e2e (real
worker, gateway, CLI and extra server processes; marked `e2e` here by directory),
tests/reliability (faults, load and hostile input on a real stack; marked `e2e` and
`reliability`).
Shared helpers live in tests/support; its fixture modules are registered below.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# Settings must be in place before Prefect is imported anywhere in this process.
_TEST_HOME = Path(tempfile.mkdtemp(prefix="pipedeploy-tests-"))
# The session's home (server database, client home, scratch files) goes when this process
# exits: also when pytest stops before configuring (a usage error left it behind before).
atexit.register(shutil.rmtree, _TEST_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = str(_TEST_HOME / "client")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# The workers' own home (pod logs, lease records), not the checkout's .pipedeploy of `dev.py up`.
os.environ["PREFECT_INTEGRATIONS_PIPEDEPLOY_HOME"] = str(_TEST_HOME / "pipedeploy")
# Where the tests' pipelines write their file outputs (tests/support/pipelines.py); workers
# inherit it.
(_TEST_HOME / "scratch").mkdir()
os.environ["PIPEDEPLOY_TESTS_SCRATCH"] = str(_TEST_HOME / "scratch")

import pytest  # noqa: E402

from prefect_pipedeploy.stack import start_prefect_server  # noqa: E402

pytest_plugins = ["tests.support.s3_server"]

E2E = Path(__file__).resolve().parent / "e2e"
RELIABILITY = Path(__file__).resolve().parent / "reliability"


#: The longest modules (minutes each; `.ci/run` lists the slowest tests). With the suite spread
#: over processes (`-n 2`, as `dev.py test` runs it), they go first, so that none of them is
#: left running alone at the end (before: the 100-run burst started last and added 6 minutes).
#: Modules that run after every other: the docker tests build images (pip, docker build), a
#: load that made the three-worker burst's workers start too slowly when both ran at once.
LAST = ("tests/e2e/test_docker_runtime.py",)

LONGEST_FIRST = (
    "tests/reliability/test_many_workers.py",
    "tests/e2e/test_poolcap.py",
    "tests/reliability/test_chaos_soak.py",
    "tests/e2e/test_periodic.py",
    "tests/e2e/test_installed_wheel.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/e2e is marked `e2e` (so `-m "not e2e"` runs the fast tiers), and
    every test under tests/reliability `e2e` and `reliability`. Under pytest-xdist, the longest
    modules go first (`LONGEST_FIRST`) and `LAST` last, in the same order in every process, as
    xdist requires."""
    for item in items:
        if E2E in item.path.parents:
            item.add_marker(pytest.mark.e2e)
        if RELIABILITY in item.path.parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.reliability)
    if config.getoption("dist", default="no") == "no":
        return
    root = Path(__file__).resolve().parent.parent
    rank = {root / path: place for place, path in enumerate(LONGEST_FIRST)}
    rank.update({root / path: len(rank) + 1 + place for place, path in enumerate(LAST)})
    items.sort(key=lambda item: rank.get(item.path, len(LONGEST_FIRST)))  # stable: the rest too


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """The API URL of a real Prefect server, set as PREFECT_API_URL for this process and children."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # A first start migrates a new database and compiles a fresh virtualenv's modules: on a
    # loaded 2-core machine that took over 90 s once, and every test of the run then errored.
    server, api_url = start_prefect_server(_TEST_HOME / "server", ui=False, timeout_s=300)
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


@pytest.fixture(scope="module")
def pool(prefect_api: str) -> str:
    """A fresh work pool name per test module, so modules do not see each other's runs."""
    return f"pool-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def sdk(pool: str):  # noqa: ANN201 - PipeDeploy
    from prefect_pipedeploy import PipeDeploy

    return PipeDeploy(work_pool_name=pool)
