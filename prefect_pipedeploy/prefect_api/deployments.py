"""Every page of a Prefect deployment listing, not just the first.

For: `read_all_deployments`, used wherever the project lists a pool's deployments (the worker's
pods, the SDK's list, endpoint lookups). Not for: filtering logic of its own.
"""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.responses import DeploymentResponse

#: Prefect's largest page for deployments.
PAGE = 200


async def read_all_deployments(
    client: PrefectClient, page: int = PAGE, **filters: Any
) -> list[DeploymentResponse]:
    """All deployments matching `filters` (as for `client.read_deployments`), page by page."""
    found: list[DeploymentResponse] = []
    while True:
        batch = await client.read_deployments(**filters, limit=page, offset=len(found))
        found += batch
        if len(batch) < page:
            return found
