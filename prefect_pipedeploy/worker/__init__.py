"""The `pipedeploy` worker: finds the runs of a work pool and starts each where its mode says.

    prefect worker start --type pipedeploy --pool pipedeploy
    pipedeploy worker --pool pipedeploy --ram-capacity 8GiB

Modules: `models` (the three models and the pool's base job template), `worker` (the worker class), `ram` (RAM admission against the
worker's capacity and the pool's cap, and the RSS watcher).
"""

from __future__ import annotations

from prefect_pipedeploy.worker.worker import (
    PipeDeployJobConfiguration,
    PipeDeployVariables,
    PipeDeployWorker,
    PipeDeployWorkerResult,
)

__all__ = [
    "PipeDeployJobConfiguration",
    "PipeDeployVariables",
    "PipeDeployWorker",
    "PipeDeployWorkerResult",
]
