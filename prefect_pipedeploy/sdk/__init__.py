"""The Python SDK: `PipeDeploy`, with the platform's verbs, on top of the Prefect API.

For: creating, reading, updating and deleting pipeline deployments, and reading their executions
and logs, as plain dicts and lists. Every verb has an async core (`acreate_deployment`) and a
thin sync twin (`create_deployment`). Not for: running pipelines (the worker and pods do), or
the HTTP gateway itself.

    from prefect_pipedeploy import PipeDeploy
    pd = PipeDeploy()                       # PREFECT_API_URL, or PipeDeploy(api_url=...)
    pd.create_deployment("flows/demo.py:score", "score", execution_rule="endpoint")

Modules: `base` (the one Prefect client construction and the lookups every verb group uses),
`deployments`, `executions`, `endpoints`, `datastore`, `pools` (the verb groups), `views`
(deployments and executions as dicts), `client` (`PipeDeploy`, composed of the verb groups).
"""

from __future__ import annotations

from prefect_pipedeploy.sdk.client import PipeDeploy

__all__ = ["PipeDeploy"]
