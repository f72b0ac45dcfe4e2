"""The one exception tree of prefect-pipedeploy.

For: errors a user can act on; each class's docstring says what went wrong and how to fix it,
and each message names the object or field. Not for: bugs (those stay ordinary exceptions).
Errors from httpx, botocore or docker are translated into these at the boundary with
`raise ... from exc`.
"""

from __future__ import annotations

from typing import Any


class PipeDeployError(Exception):
    """Something prefect-pipedeploy cannot do as asked; the message says what to change."""


class SpecError(PipeDeployError, ValueError):
    """A deployment's settings are invalid; the message names each field and the fix."""


class DeploymentNotFound(PipeDeployError, LookupError):
    """No deployment has this name; list them with `pipedeploy deployment ls`."""


class DeploymentExists(PipeDeployError):
    """A deployment with this name exists already; pick another name or update it."""


class DeploymentCreationFailed(PipeDeployError):
    """The deployment's pod failed to start (status `creation_failed`); the message gives its
    status message: read its pod's output with `get_deployment_logs`, fix the pipeline, and
    ship it again with `update_deployment(<name>, pipeline=...)`."""


class DeploymentNotReady(PipeDeployError, TimeoutError):
    """The deployment was not `up` within `timeout_s`; the message names it and its status.
    It is still being created: check that a worker serves its pool (`pipedeploy worker`), then
    wait again with `get_deployment(<name>, wait_for_completion=True)`."""


class ExecutionNotFound(PipeDeployError, LookupError):
    """No execution has this id; list them with `pipedeploy executions ls`."""


class ExecutionAlreadyFinal(PipeDeployError):
    """The execution has ended already: there is nothing to cancel; run the deployment again."""


class ExecutionStillRunning(PipeDeployError):
    """The execution may be running on a worker: it cannot be deleted now; cancel it with
    `cancel_pipeline_execution`, then delete it."""


class PipelineLoadError(PipeDeployError):
    """The pipeline could not be loaded from its entrypoint; check the path and the name."""


class ServerUnavailable(PipeDeployError):
    """The Prefect API cannot be reached; start it with `pipedeploy up` or set PREFECT_API_URL."""


class DatabaseUnavailable(PipeDeployError):
    """The local stack's PostgreSQL cluster cannot be made or started; the message says why and
    what to do (for missing programs: install Debian's postgresql package, `apt-get install -y
    postgresql`), with the last lines of PostgreSQL's own log."""


class InvalidSettings(PipeDeployError, ValueError):
    """A prefect-pipedeploy setting has a value it cannot take; the message names each setting,
    its environment variable, the value and the rule, and where settings are read from."""


# -- the data store ----------------------------------------------------------------------------


class DataStoreError(PipeDeployError):
    """The data store cannot do this; the message names the store and what to check."""


class InvalidDataStoreKey(DataStoreError, ValueError):
    """A key is not a safe relative `/`-separated path; use one like `inputs/2024/data.csv`."""


class DataStoreObjectNotFound(DataStoreError, LookupError):
    """No object has this key in the store; check the key against the store's listing."""


class DataStoreIntegrityError(DataStoreError):
    """An object's content does not match its recorded sha256; upload it again."""


class RuntimeStartError(PipeDeployError):
    """An execution's container could not start: the Docker engine is unreachable, the image
    is missing, or the engine refused the container; the message says which and what to do."""


class CodeArchiveError(DataStoreError):
    """A deployment's shipped code cannot be used: its archive is missing from the data store
    or its digest is not the one recorded; ship the code again with
    `update_deployment(<name>, pipeline=...)`."""


class DataStoreNotConfigured(DataStoreError):
    """No data store is set for this process; set PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE to
    a saved block ("<block-type-slug>/<name>"): `pipedeploy up` makes a local one, or save an
    S3DataStore block and name it there."""


# -- executions and their inputs and outputs ---------------------------------------------------


class InputResolutionError(PipeDeployError):
    """An input of the pipeline cannot be given a value; the message names the input, its
    source and the fix. The execution fails before the pipeline starts."""


class OutputRoutingError(PipeDeployError):
    """An output of the pipeline cannot go where the mapping says; the message names the output,
    its destination and the fix. The execution fails."""


class ExecutionValueNotFound(PipeDeployError, LookupError):
    """The execution recorded no input or output of this name; the message lists the names it
    recorded (see them all with `get_pipeline_execution`)."""


# -- the endpoint gateway, as the SDK sees it --------------------------------------------------


class GatewayUnavailable(PipeDeployError):
    """The endpoint gateway cannot be reached; start it (`pipedeploy up`, or `pipedeploy gateway
    --pool NAME`) and give its URL as PipeDeploy(gateway_url=...) or in
    PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_URL."""


class EndpointCallError(PipeDeployError):
    """The gateway refused an endpoint call; the message is the gateway's (it names what to
    change), `status_code` the HTTP status and `body` the decoded answer."""

    def __init__(self, message: str, status_code: int, body: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class EndpointExecutionFailed(EndpointCallError):
    """The execution an endpoint call started failed; `execution_id` and `status` ("Failed" or
    "Error") say which and how: read its logs with `get_pipeline_execution_logs`."""

    def __init__(self, message: str, execution_id: str, status: str, body: Any = None) -> None:
        super().__init__(message, 500, body)
        self.execution_id = execution_id
        self.status = status
