"""Create a flow run on a busy server without waiting out Prefect's 503 back-off.

For: `create_run`, used by the gateway and the SDK to create an execution. A SQLite Prefect
server answers a write that meets a locked database with 503 (the transaction was rolled back,
so nothing was created); Prefect's client then waits about 2 s before it tries again, which
makes a burst of creates crawl. `create_run` retries a 503 itself after a few milliseconds (with
the client's own retries off for those tries), then, if the server is still busy, falls back to
the client's usual retries. Not for: any other call (they keep Prefect's behaviour).
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.context import SettingsContext, get_settings_context
from prefect.exceptions import Abort, ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, Settings
from prefect.states import Crashed, Failed, State
from prefect.utilities.engine import propose_state

#: Pauses before the quick tries; after them, Prefect's client retries as usual.
QUICK_RETRY_DELAYS_S = (0.02, 0.05, 0.1, 0.2, 0.4)


_no_retries: dict[int, Settings] = {}


def _without_client_retries() -> SettingsContext:
    """The current settings with the client's retries off (built once per settings: building
    Prefect settings costs about 25 ms, entering a context with them almost nothing)."""
    current = get_settings_context()
    settings = _no_retries.get(id(current.settings))
    if settings is None:
        settings = current.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
        _no_retries.clear()  # keep one: the settings of a long-lived process do not change
        _no_retries[id(current.settings)] = settings
    return SettingsContext(profile=current.profile, settings=settings)


async def create_run(client: PrefectClient, deployment_id: UUID, **kwargs: Any) -> FlowRun:
    """`client.create_flow_run_from_deployment(deployment_id, **kwargs)`, 503s retried fast.

    Raises `ObjectNotFound` when the deployment does not exist (Prefect's client raises a bare
    404 status error there).
    """
    try:
        for delay_s in QUICK_RETRY_DELAYS_S:
            try:
                with _without_client_retries():
                    return await client.create_flow_run_from_deployment(deployment_id, **kwargs)
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code != 503:
                    raise
            await asyncio.sleep(delay_s)
        return await client.create_flow_run_from_deployment(deployment_id, **kwargs)
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code == 404:
            raise ObjectNotFound(http_exc=exc) from exc
        raise


async def fail_run(client: PrefectClient, flow_run_id: UUID, message: str) -> bool:
    """Mark a run Failed with `message`; False when it was final already (left as it is)."""
    return await _end_run(client, flow_run_id, Failed(message=message))


async def crash_run(client: PrefectClient, flow_run_id: UUID, message: str) -> bool:
    """Mark a run Crashed (its infrastructure died) with `message`; False when it was final
    already or is gone (left as it is)."""
    return await _end_run(client, flow_run_id, Crashed(message=message))


async def _end_run(client: PrefectClient, flow_run_id: UUID, state: State[Any]) -> bool:
    try:
        await propose_state(client, state, flow_run_id=flow_run_id)
    except (Abort, ObjectNotFound):
        return False
    return True
