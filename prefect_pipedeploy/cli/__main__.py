"""`python -m prefect_pipedeploy.cli ...`: the same as `pipedeploy ...`."""

from __future__ import annotations

from prefect_pipedeploy.cli import app

app()
