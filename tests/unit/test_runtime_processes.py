"""Telling a runtime's processes apart by their command line (pure), for adopting orphans."""

from __future__ import annotations

import pytest

from prefect_pipedeploy.runtimes.process import runtime_process_of

RUN = "6f1c4a52-0e2c-4d7b-9a8e-0c2f3e4d5a6b"


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/venv/bin/python", "-m", "prefect_pipedeploy.engine.elastic", RUN], ("elastic", RUN)),
        (
            [
                "python",
                "-m",
                "prefect_pipedeploy.engine.pod",
                "--deployment-id",
                RUN,
                "--control-fd",
                "5",
            ],
            ("pod", RUN),
        ),
        (["python", "-m", "prefect_pipedeploy.engine.pod", "--deployment-id"], None),
        (["python", "-m", "prefect_pipedeploy.engine.elastic"], None),
        (["python", "-m", "prefect_pipedeploy.cli", "worker", "--pool", "p"], None),
        (["python", "flows.py"], None),
        ([], None),
    ],
)
def test_runtime_processes_by_command_line(
    cmdline: list[str], expected: tuple[str, str] | None
) -> None:
    assert runtime_process_of(cmdline) == expected
