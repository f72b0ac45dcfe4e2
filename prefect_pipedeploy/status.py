"""Statuses: of an execution, of a pod, of a deployment; and when an execution is settled.

For: the platform's words for Prefect states (`EXECUTION_STATUS`), the pod statuses workers
publish and how several workers' statuses merge into one, a deployment's status, and
`settled`: whether an execution has its final answer (one retry grace for every caller).
Not for: reading or writing any of it (`prefect_api`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse

from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.spec import (
    DeploymentSpec,
    Mode,
)

# Prefect state type -> the platform's execution status
EXECUTION_STATUS = {
    StateType.SCHEDULED: "Pending",
    StateType.PENDING: "Pending",
    StateType.RUNNING: "Running",
    StateType.PAUSED: "Running",
    StateType.CANCELLING: "Running",
    StateType.COMPLETED: "Succeeded",
    StateType.FAILED: "Failed",
    StateType.CANCELLED: "Failed",
    StateType.CRASHED: "Error",
}


class PodStatus(str, Enum):
    """What a worker publishes about its pod of a low-latency deployment."""

    creation_pending = "creation_pending"
    """Waiting for RAM, or importing the pipeline."""
    up = "up"
    """Imported and taking executions."""
    creation_failed = "creation_failed"
    """The pipeline failed to load; the worker tries again with a back-off."""
    down_retrying = "down_retrying"
    """The pod died; the worker re-creates it with a back-off."""
    down = "down"
    """The worker stopped the pod (it stopped, or the deployment was disabled)."""


#: When workers disagree about a deployment's pods, the deployment shows the best of them.
_POD_STATUS_RANK = {
    PodStatus.up: 0,
    PodStatus.down_retrying: 1,
    PodStatus.creation_failed: 2,
    PodStatus.creation_pending: 3,
    PodStatus.down: 4,
}

_POD_STATUS_OF = {status.value: status for status in PodStatus}

#: Every status a deployment can have: a low-latency one has its best pod's.
DEPLOYMENT_STATUSES = (*(status.value for status in PodStatus), "standby", "disabled")


def deployment_status(
    deployment: DeploymentResponse, spec: DeploymentSpec, pod: dict[str, Any] | None
) -> str:
    """creation_pending | up | creation_failed | down_retrying | down | standby | disabled.

    An elastic deployment is `standby` (nothing resident while idle); a low-latency one has the
    status its workers last published for their pods (`merge_pod_statuses`), `creation_pending`
    before any did.
    """
    if deployment.paused:
        return "disabled"
    if spec.mode == Mode.elastic.value:
        return "standby"
    status = (pod or {}).get("status")
    return status if status in _POD_STATUS_OF else PodStatus.creation_pending.value


def _pod_rank(published: dict[str, Any]) -> int:
    status = _POD_STATUS_OF.get(str(published.get("status")))
    return _POD_STATUS_RANK[status] if status is not None else len(_POD_STATUS_RANK)


def merge_pod_statuses(published: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One status for a deployment whose pods several workers run: the best one ("up" if any
    pod is up), with its message; `pods` lists each worker's; `log_tail` is every worker's
    output, each under a `[worker NAME]` line when there are several."""
    if not published:
        return None
    pods = sorted(published, key=lambda p: str(p.get("worker")))
    best = min(pods, key=_pod_rank)
    if len(pods) == 1:
        log_tail = str(best.get("log_tail") or "")
    else:
        log_tail = "\n".join(f"[worker {p.get('worker')}]\n{p.get('log_tail') or ''}" for p in pods)
    summary = [
        {k: p.get(k) for k in ("worker", "status", "message", "pid", "updated")} for p in pods
    ]
    return {**best, "log_tail": log_tail, "pods": summary}


def execution_status(run: FlowRun | None) -> str:
    """Pending | Running | Succeeded | Failed | Error, as the SDK reports an execution."""
    if run is None or run.state is None:
        return "Pending"
    return EXECUTION_STATUS.get(run.state.type, "Pending")


def settled(run: FlowRun, max_retries: int, now: datetime, grace_s: float | None = None) -> bool:
    """Whether an execution has its final answer: the one rule of the gateway and the SDK.

    A Failed or Crashed run that started and has attempts left (`max_retries`) is about to be
    retried by its worker (the same run, Scheduled again): it is settled only once it has
    stayed failed for `grace_s` since its state was set (default: the `retry_grace_s`
    setting, 10 s). The worker queues the retry within moments, but on a busy SQLite server
    that write can meet 503s, which Prefect's client retries after 2, 4 and 8 s; a shorter
    grace would report as final a run that is still retried. A run failed before it started
    (`run_count` 0, e.g. unresolvable inputs) is never retried, so it is settled at once.
    """
    state = run.state
    if state is None or not state.is_final():
        return False
    if state.type not in (StateType.FAILED, StateType.CRASHED):
        return True
    if run.run_count == 0 or run.run_count > max_retries:
        return True
    if grace_s is None:
        grace_s = get_settings().retry_grace_s
    return now - state.timestamp >= timedelta(seconds=grace_s)
