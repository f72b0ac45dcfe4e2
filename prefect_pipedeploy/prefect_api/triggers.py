"""Event triggers of endpoint deployments: Prefect events that start an execution.

For: one Prefect automation per endpoint deployment, so that the event
`prefect-pipedeploy.endpoint.trigger` naming that endpoint runs the deployment with the event's
inputs. Anything that can post a Prefect event can then start it: a Prefect Cloud webhook, the
events API of a self-hosted server (`POST /api/events` with a JSON list of events), or
`prefect.events.emit_event` in code. `ensure_endpoint_trigger` creates the automation (or
repairs it; safe to call again), `delete_endpoint_trigger` removes it: Prefect keeps a deleted
deployment's automations, which would then fire into 404s. Also the names of the events and
resources the gateway and the trigger share.
Not for: the HTTP gateway (`gateway`). A trigger event is authorised by the Prefect API that
accepted it, not by an endpoint token, and its inputs are not checked on arrival: the execution
resolves them like any other and fails, naming the input, when a required one is missing.

The event:

    {
      "event": "prefect-pipedeploy.endpoint.trigger",
      "resource": {"prefect.resource.id": "prefect-pipedeploy.endpoint.<endpoint path>"},
      "payload": {"inputs": {"<pipeline input name>": <value>, ...}}
    }

The resource may also be the deployment itself, `prefect.deployment.<deployment id>`. The
event's primary resource is what is matched: one automation trigger cannot match "this resource
or that related resource" without firing twice for an event that has both, and the endpoint
path, unlike the deployment id, survives re-creating the deployment. The `inputs` object becomes
the execution's parameters as it is, keyed by pipeline input name, as `run_deployment(inputs=...)`
takes them (the gateway's endpoint input names do not apply here). A file input is given as
{"datastore_path": "<key>"} of an object already in the data store.

Prefect Cloud webhook template (a Cloud webhook turns an HTTP request into an event; the
template is Jinja producing the event as JSON):

    {
      "event": "prefect-pipedeploy.endpoint.trigger",
      "resource": {"prefect.resource.id": "prefect-pipedeploy.endpoint.<endpoint path>"},
      "payload": {"inputs": {{ body|tojson }}}
    }

    prefect cloud webhook create score-hook --template '<the template above>'

A POST of a JSON object to the webhook's URL then runs the deployment with that object as its
inputs. On a self-hosted server, post the event yourself:

    curl -X POST "$PREFECT_API_URL/events" -H 'Content-Type: application/json' -d '[{
      "id": "<a new uuid>", "occurred": "2025-01-01T00:00:00Z",
      "event": "prefect-pipedeploy.endpoint.trigger",
      "resource": {"prefect.resource.id": "prefect-pipedeploy.endpoint.score"},
      "payload": {"inputs": {"text": "hello"}}}]'
"""

from __future__ import annotations

import json
from typing import Any, Protocol
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.events import emit_event
from prefect.events.actions import RunDeployment
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import EventTooLarge
from prefect.logging import get_logger

from prefect_pipedeploy.exceptions import (
    PipeDeployError,
)
from prefect_pipedeploy.spec import spec_from_job_variables

logger = get_logger("prefect_pipedeploy.prefect_api.triggers")

#: Emitted by the gateway for every call that created an execution.
CALLED_EVENT = "prefect-pipedeploy.endpoint.called"


#: Posted by anyone to start an endpoint deployment (see the module docstring).
TRIGGER_EVENT = "prefect-pipedeploy.endpoint.trigger"


#: Tag of the automations this module owns; nothing else is touched.
TRIGGER_TAG = "pipedeploy-endpoint-trigger"


_INPUTS_TEMPLATE = "{{ (event.payload.inputs or {}) | tojson }}"


class DeploymentLike(Protocol):
    """What these functions read of a deployment (a Prefect `DeploymentResponse` fits)."""

    @property
    def id(self) -> UUID: ...

    @property
    def name(self) -> str: ...

    @property
    def job_variables(self) -> dict[str, Any] | None: ...


def endpoint_resource_id(endpoint_url_path: str) -> str:
    """The Prefect resource id of an endpoint: `prefect-pipedeploy.endpoint.<path>`."""
    return f"prefect-pipedeploy.endpoint.{endpoint_url_path.strip('/')}"


def deployment_resource_id(deployment_id: UUID | str) -> str:
    """The Prefect resource id of a deployment: `prefect.deployment.<id>`."""
    return f"prefect.deployment.{deployment_id}"


def endpoint_path_of(deployment: DeploymentLike) -> str | None:
    """The endpoint path of a deployment (`DeploymentSpec.endpoint_path`, the one rule); None
    when it is not an endpoint deployment or its settings are invalid (then it is not served)."""
    try:
        spec = spec_from_job_variables(deployment.job_variables)
    except PipeDeployError:
        return None
    return spec.endpoint_path(deployment.name)


def endpoint_trigger_automation(
    deployment: DeploymentLike, endpoint_url_path: str
) -> AutomationCore:
    """The automation that runs `deployment` when a trigger event names its endpoint."""
    trigger = EventTrigger(
        expect={TRIGGER_EVENT},
        match={
            "prefect.resource.id": [
                endpoint_resource_id(endpoint_url_path),
                deployment_resource_id(deployment.id),
            ]
        },
        posture=Posture.Reactive,
        threshold=1,
    )
    action = RunDeployment(
        source="selected",
        deployment_id=deployment.id,
        # The whole parameters object is one template: the event's inputs, as JSON.
        parameters={
            "__prefect_kind": "json",
            "value": {"__prefect_kind": "jinja", "template": _INPUTS_TEMPLATE},
        },
        job_variables=None,
    )
    return AutomationCore(
        name=f"pipedeploy endpoint trigger: {deployment.name}",
        description=(
            f"Runs deployment {deployment.name!r} when the event {TRIGGER_EVENT!r} names "
            f"{endpoint_resource_id(endpoint_url_path)!r}; the event payload's 'inputs' are its "
            "parameters. Managed by prefect-pipedeploy."
        ),
        enabled=True,
        tags=[TRIGGER_TAG],
        trigger=trigger,
        actions=[action],
        owner_resource=deployment_resource_id(deployment.id),
    )


async def ensure_endpoint_trigger(client: PrefectClient, deployment: DeploymentLike) -> UUID | None:
    """Make sure the endpoint deployment has exactly one up-to-date trigger automation.

    Creates it when missing, replaces it when the endpoint path changed, removes it when the
    deployment is no longer an endpoint deployment (then returns None). Safe to call again.
    """
    existing = await _our_automations(client, deployment.id)
    path = endpoint_path_of(deployment)
    if path is None:
        for automation in existing:
            await client.delete_automation(automation.id)
        return None
    desired = endpoint_trigger_automation(deployment, path)
    kept = next((a for a in existing if _fingerprint(a) == _fingerprint(desired)), None)
    for automation in existing:
        if automation is not kept:
            await client.delete_automation(automation.id)
    if kept is not None:
        return UUID(str(kept.id))
    return await client.create_automation(desired)


async def delete_endpoint_trigger(client: PrefectClient, deployment: DeploymentLike) -> int:
    """Delete the trigger automations of a deployment; returns how many there were.

    Call it before or after deleting the deployment: only the deployment's id is used.
    """
    existing = await _our_automations(client, deployment.id)
    for automation in existing:
        await client.delete_automation(automation.id)
    return len(existing)


async def _our_automations(client: PrefectClient, deployment_id: UUID) -> list[Any]:
    related = await client.read_resource_related_automations(deployment_resource_id(deployment_id))
    return [a for a in related if TRIGGER_TAG in (a.tags or [])]


def _fingerprint(automation: Any) -> str:
    """What makes two trigger automations the same (ids and server-side fields aside)."""
    trigger = automation.trigger.model_dump(mode="json", exclude={"id"})
    return json.dumps(
        {
            "name": automation.name,
            "enabled": automation.enabled,
            "expect": sorted(trigger.get("expect") or []),
            "match": trigger.get("match"),
            "actions": [a.model_dump(mode="json") for a in automation.actions],
        },
        sort_keys=True,
        default=str,
    )


def emit_endpoint_called(
    path: str,
    deployment_id: UUID,
    deployment_name: str,
    run_id: UUID,
    inputs: dict[str, Any],
) -> None:
    """Emit `prefect-pipedeploy.endpoint.called` for a call that created execution `run_id`,
    with its public inputs (secrets masked); never fails the call (a failure is logged)."""
    resource = {
        "prefect.resource.id": endpoint_resource_id(path),
        "prefect.resource.name": path,
    }
    related = [
        {
            "prefect.resource.id": deployment_resource_id(deployment_id),
            "prefect.resource.role": "deployment",
            "prefect.resource.name": deployment_name,
        },
        {"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run"},
    ]
    payload: dict[str, Any] = {"inputs": inputs, "execution_id": str(run_id)}
    try:
        try:
            emit_event(CALLED_EVENT, resource=resource, related=related, payload=payload)
        except EventTooLarge:
            payload["inputs"] = "(omitted: too large for an event)"
            emit_event(CALLED_EVENT, resource=resource, related=related, payload=payload)
    except Exception as exc:
        logger.warning("Could not emit %s: %s", CALLED_EVENT, exc, extra={"action": "event_failed"})
