"""The one exception tree of prefect-pipedeploy.

For: errors a user can act on; each class's docstring says what went wrong and how to fix it,
and each message names the object or field. Not for: bugs (those stay ordinary exceptions).
Errors from httpx, botocore or docker are translated into these at the boundary with
`raise ... from exc`.
"""

from __future__ import annotations


class PipeDeployError(Exception):
    """Something prefect-pipedeploy cannot do as asked; the message says what to change."""


class SpecError(PipeDeployError, ValueError):
    """A deployment's settings are invalid; the message names each field and the fix."""


class DeploymentNotFound(PipeDeployError, LookupError):
    """No deployment has this name; list them with `pipedeploy deployment ls`."""


class DeploymentExists(PipeDeployError):
    """A deployment with this name exists already; pick another name or update it."""


class ExecutionNotFound(PipeDeployError, LookupError):
    """No execution has this id; list them with `pipedeploy executions ls`."""


class PipelineLoadError(PipeDeployError):
    """The pipeline could not be loaded from its entrypoint; check the path and the name."""


class ServerUnavailable(PipeDeployError):
    """The Prefect API cannot be reached; start it with `pipedeploy up` or set PREFECT_API_URL."""
