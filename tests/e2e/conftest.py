"""Fixtures of the end-to-end tier: a real worker per module, a local data store.

Every test here is marked `e2e` by tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from prefect_pipedeploy.stack import ChildProcess
from tests.support.executions import unique
from tests.support.files import local_data_store
from tests.support.processes import start_worker


@pytest.fixture(scope="module")
def worker(pool: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildProcess]:
    """A real `pipedeploy worker` process serving the module's pool."""
    child = start_worker(pool, tmp_path_factory.mktemp("worker-logs"))
    yield child
    child.stop()


@pytest.fixture(scope="module")
def data_store(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local data store block saved on the server and set as the module's data store
    (PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE, inherited by the processes it starts)."""
    with local_data_store(tmp_path_factory.mktemp("datastore"), unique("store")) as reference:
        yield reference
