"""The `pipedeploy` command line: the local stack, the worker, deployments and executions.

For: what a user types. Each command is a thin layer over the SDK, the worker or the stack
module; errors print as one line naming what to fix, never a traceback.
Not for: logic of its own.

    pipedeploy up --demo                  # embedded Prefect server, pool, worker, demo pipeline
    pipedeploy worker --pool pipedeploy --ram-capacity 8GiB
    pipedeploy deployment ls | get NAME | rm NAME
    pipedeploy executions ls [--deployment NAME] | get ID | logs ID
    pipedeploy pool ram-cap [16GiB | --remove] [--pool NAME]

Modules: `app` (the app and its one error boundary), `main` (worker, deployments,
executions, pools), `up` (the local stack), `datastore`, `endpoints` (the gateway and endpoint tokens).
"""

from __future__ import annotations

from prefect_pipedeploy.cli import datastore, endpoints, images, main, up  # noqa: F401  (each registers its commands)
from prefect_pipedeploy.cli.app import app

__all__ = ["app"]
