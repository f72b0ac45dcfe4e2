"""Which pods a worker starts, updates and stops for its pool's deployments: pure decisions.

For: `plan_pods` (from the pods running and the deployments: start, update in place, stop with
a reason), `pod_fingerprint` (what a pod was started from: a change re-creates it, any other
change reaches the running pod), `wants_pod`, and `backoff_s` between re-creations of a failing
pod. Not for: doing any of it (`runtimes.low_latency.PodSupervisor` applies the plan).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

from prefect_pipedeploy.exceptions import PipeDeployError
from prefect_pipedeploy.spec import Mode, spec_from_job_variables


def backoff_s(failures: int) -> float:
    """Seconds to wait before re-creating a pod after `failures` failures in a row."""
    return float(min(30, 2 ** max(0, failures - 1)))


class DeploymentLike(Protocol):
    """What `plan_pods` reads of a deployment (a Prefect `DeploymentResponse` fits)."""

    @property
    def id(self) -> UUID: ...

    @property
    def job_variables(self) -> dict[str, Any] | None: ...

    @property
    def paused(self) -> bool: ...

    @property
    def updated(self) -> Any: ...

    @property
    def created(self) -> Any: ...


#: Job variables that change what runs in the pod: a change re-creates it. Any other change
#: (token, mappings, timeout, retries, description, schedule) reaches the running pod instead.
POD_JOB_VARIABLES = (
    "mode",
    "enable_parallel_executions",
    "max_parallel_executions_per_pod",
    "ram_request",
    "env",
    "working_dir",
    "runtime",
    "docker",
)
#: Deployment fields that change the pipeline's code or how it is fetched.
POD_DEPLOYMENT_FIELDS = ("entrypoint", "path", "pull_steps", "version", "flow_id")


def pod_fingerprint(deployment: DeploymentLike) -> str:
    """What a pod was started from: the pipeline's code and where it comes from, its parameter
    schema, and the job variables in `POD_JOB_VARIABLES`. Two deployments with one fingerprint
    can share a pod."""
    variables = deployment.job_variables or {}
    basis = {
        "deployment": {name: getattr(deployment, name, None) for name in POD_DEPLOYMENT_FIELDS},
        "parameters": getattr(deployment, "parameter_openapi_schema", None),
        "job_variables": {name: variables.get(name) for name in POD_JOB_VARIABLES},
    }
    encoded = json.dumps(basis, sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True)
class RunningPod:
    """What `plan_pods` knows of a running pod: what it was started from, and the deployment's
    `updated` time it last saw."""

    fingerprint: str
    updated: Any


@dataclass(frozen=True)
class PodStop:
    """A pod to stop: why, and whether its deployment is gone (its status is then forgotten
    rather than published as `down`) or will get a new pod at once."""

    deployment_id: UUID
    reason: str
    deleted: bool = False
    replaced: bool = False


D = TypeVar("D", bound=DeploymentLike)


@dataclass(frozen=True)
class PodPlan(Generic[D]):
    """What the supervisor does for the pool's deployments, in this order."""

    stop: list[PodStop]
    """Pods of deployments that are gone, disabled, no longer low latency, or changed in what
    runs in them (`pod_fingerprint`)."""
    update: list[D] = field(default_factory=list)
    """Deployments changed in a way their running pod takes as it is (token, mappings, ...)."""
    start: list[D] = field(default_factory=list)
    """Low-latency deployments without a pod, oldest first (RAM admission decides which)."""


def wants_pod(deployment: DeploymentLike) -> bool:
    """Whether a deployment should have a pod: low latency, enabled, with valid settings (an
    invalid spec gets no pod; its runs fail with the reason)."""
    if deployment.paused:
        return False
    try:
        spec = spec_from_job_variables(deployment.job_variables)
    except PipeDeployError:
        return False
    return spec.mode == Mode.low_latency.value


def plan_pods(running: Mapping[UUID, RunningPod], deployments: Sequence[D]) -> PodPlan[D]:
    """Which pods to stop, update and start, given the pods running now and the pool's
    deployments."""
    by_id = {deployment.id: deployment for deployment in deployments}
    wanted = {d.id: d for d in deployments if wants_pod(d)}
    stop, update = [], []
    for deployment_id, pod in running.items():
        deployment = wanted.get(deployment_id)
        if deployment_id not in by_id:
            stop.append(PodStop(deployment_id, "its deployment was deleted", deleted=True))
        elif deployment is None:
            stop.append(PodStop(deployment_id, "its deployment was disabled or changed mode"))
        elif pod_fingerprint(deployment) != pod.fingerprint:
            reason = "its deployment's code, environment or resources changed"
            stop.append(PodStop(deployment_id, reason, replaced=True))
        elif deployment.updated != pod.updated:
            update.append(deployment)
    stopped = {s.deployment_id for s in stop}
    start = sorted(
        (d for d in wanted.values() if d.id not in running or d.id in stopped),
        key=lambda d: (d.created is None, d.created or 0),
    )
    return PodPlan(stop=stop, update=update, start=start)
