"""The public surface: `__all__` is sorted, complete and importable (httpx keeps itself this way)."""

from __future__ import annotations

import inspect

import prefect_pipedeploy

# what DESIGN.md's interface section promises, plus the error tree
PROMISED = {"PipeDeploy", "InputSource", "OutputDestination", "PipeDeployWorker", "PipeDeployError"}


def test_all_is_sorted_and_exported() -> None:
    names = prefect_pipedeploy.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(prefect_pipedeploy, name), name


def test_every_public_class_is_in_all() -> None:
    public = {
        name
        for name, value in vars(prefect_pipedeploy).items()
        if not name.startswith("_") and inspect.isclass(value)
    }
    functions = {"execution_dir"}  # the one public function (a pipeline's own directory)
    assert public | functions == set(prefect_pipedeploy.__all__)
    assert PROMISED <= public


def test_sdk_has_the_platform_verbs() -> None:
    verbs = [
        "create_deployment",
        "get_deployment",
        "list_deployments",
        "update_deployment",
        "delete_deployment",
        "list_pipeline_executions",
        "get_pipeline_execution",
        "get_pipeline_execution_logs",
        "cancel_pipeline_execution",
        "delete_pipeline_execution",
        "retrieve_pipeline_execution_outputs",
        "get_deployment_logs",
        "get_pipeline_execution_input",
        "get_pipeline_execution_output",
        "upload_data_store_object",
        "download_data_store_object",
        "list_data_store_objects",
        "get_data_store_object_information",
        "delete_data_store_object",
        "set_pool_ram_cap",
        "get_pool_ram_cap",
    ]
    for verb in verbs:
        assert callable(getattr(prefect_pipedeploy.PipeDeploy, verb)), verb
        assert inspect.iscoroutinefunction(getattr(prefect_pipedeploy.PipeDeploy, "a" + verb)), verb


def test_errors_share_one_root() -> None:
    for name in prefect_pipedeploy.__all__:
        value = getattr(prefect_pipedeploy, name)
        if inspect.isclass(value) and issubclass(value, Exception):
            assert issubclass(value, prefect_pipedeploy.PipeDeployError), name
            assert value.__doc__, f"{name} needs a docstring saying the fix"
