"""prefect-pipedeploy: deploy ML pipelines on Prefect 3 with endpoints, schedules and warm pods.

Importing the package registers the `pipedeploy` worker type with Prefect (the package is a
`prefect.collections` entry point), so `prefect worker start --type pipedeploy` finds it.
"""

from prefect_pipedeploy.datastore import DataStore, LocalDataStore, S3DataStore
from prefect_pipedeploy.exceptions import (
    DataStoreError,
    DataStoreIntegrityError,
    DataStoreNotConfigured,
    DataStoreObjectNotFound,
    DeploymentCreationFailed,
    DeploymentExists,
    DeploymentNotFound,
    DeploymentNotReady,
    EndpointCallError,
    EndpointExecutionFailed,
    ExecutionAlreadyFinal,
    ExecutionNotFound,
    ExecutionStillRunning,
    ExecutionValueNotFound,
    GatewayUnavailable,
    InputResolutionError,
    InvalidDataStoreKey,
    OutputRoutingError,
    PipeDeployError,
    PipelineLoadError,
    SpecError,
)
from prefect_pipedeploy.iomapping import execution_dir
from prefect_pipedeploy.sdk import PipeDeploy
from prefect_pipedeploy.spec import DeploymentSpec, InputSource, OutputDestination
from prefect_pipedeploy.worker import PipeDeployWorker

__all__ = [
    "DataStore",
    "DataStoreError",
    "DataStoreIntegrityError",
    "DataStoreNotConfigured",
    "DataStoreObjectNotFound",
    "DeploymentCreationFailed",
    "DeploymentExists",
    "DeploymentNotFound",
    "DeploymentNotReady",
    "DeploymentSpec",
    "EndpointCallError",
    "EndpointExecutionFailed",
    "ExecutionAlreadyFinal",
    "ExecutionNotFound",
    "ExecutionStillRunning",
    "ExecutionValueNotFound",
    "GatewayUnavailable",
    "InputResolutionError",
    "InputSource",
    "InvalidDataStoreKey",
    "LocalDataStore",
    "OutputDestination",
    "OutputRoutingError",
    "PipeDeploy",
    "PipeDeployError",
    "PipeDeployWorker",
    "PipelineLoadError",
    "S3DataStore",
    "SpecError",
    "execution_dir",
]
