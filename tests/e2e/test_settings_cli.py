"""Bad settings and options stop `pipedeploy worker` with one line naming them, no traceback.

Real processes; they fail before reaching any Prefect server, so none is started.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_pipedeploy.settings import env_name

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("args", "variables", "named"),
    [
        (["--ram-capacity", "8"], {}, "ram_capacity: '8'"),
        ([], {"poll_seconds": "0"}, f"poll_seconds ({env_name('poll_seconds')}) is '0'"),
    ],
)
def test_worker_refuses_bad_settings_in_one_line(
    tmp_path: Path, args: list[str], variables: dict[str, str], named: str
) -> None:
    env = {**os.environ, **{env_name(name): value for name, value in variables.items()}}
    done = subprocess.run(
        [sys.executable, "-m", "prefect_pipedeploy.cli", "worker", "--pool", "p", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert named in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
