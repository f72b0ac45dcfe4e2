"""The `pipedeploy` worker: finds the runs of a work pool and starts each where its mode says.

    prefect worker start --type pipedeploy --pool pipedeploy
    pipedeploy worker --pool pipedeploy --ram-capacity 8GiB

Modules: `models` (the three models and the pool's base job template), `worker` (the worker
class: its loops and `run`), `dispatch` (where ready runs go, which start, retries), `ram` (RAM
admission against the worker's capacity and the pool's cap, and the RSS watcher), `recovery`
(runs a dead worker claimed and never started), `leftovers` (the processes a dead worker left
running, taken in charge), `cancel` (runs asked to stop: Cancelling), `upkeep` (the slow loop:
pods kept, capacity published, sealed values swept, what others left recovered), `rounds` (a
loop woken by events, with a poll as fallback).
"""

from __future__ import annotations

from prefect_pipedeploy.worker.models import (
    PipeDeployJobConfiguration,
    PipeDeployVariables,
    PipeDeployWorkerResult,
)
from prefect_pipedeploy.worker.worker import PipeDeployWorker

__all__ = [
    "PipeDeployJobConfiguration",
    "PipeDeployVariables",
    "PipeDeployWorker",
    "PipeDeployWorkerResult",
]
