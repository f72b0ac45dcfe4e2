"""Periodic deployments: Prefect's scheduler creates the runs, the pipedeploy worker runs them."""

from __future__ import annotations

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.stack import ChildProcess
from tests.support.eventually import eventually
from tests.support.executions import unique
from tests.support.paths import PIPELINES


def test_interval_deployment_produces_runs(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = unique("every-2s")
    created = sdk.create_deployment(
        f"{PIPELINES}:score",
        name,
        execution_rule="periodic",
        schedule="every 2 seconds",
        inputs_mapping=[
            {"pipeline_input_name": "text", "constant_value": "tick tock"},
            {"pipeline_input_name": "repeat", "constant_value": 1},
        ],
    )
    assert created["schedule"] == {"type": "basic", "every": 2, "unit": "seconds"}

    def started() -> list[dict]:
        """The runs that left Pending. The scheduler keeps ~100 future runs of a 2 s schedule
        ahead and a listing starts with the latest, so the first 100 are all still to come."""
        listed = sdk.list_pipeline_executions(name, limit=200)  # the most the server gives
        return [e for e in listed if e["status"] != "Pending"]

    try:
        executions = eventually(
            started,
            90,
            1,
            until=lambda executions: sum(e["status"] == "Succeeded" for e in executions) >= 2,
        )
    finally:
        sdk.update_deployment(name, disabled=True)  # no more runs for the modules after this one
    succeeded = [e for e in executions if e["status"] == "Succeeded"]
    # each scheduled run was started by the worker and recorded its outputs
    execution = sdk.get_pipeline_execution(succeeded[0]["execution_id"])
    assert execution["outputs"]["words"] >= 1
    starts = sorted(e["expected_start_time"] for e in succeeded)
    assert starts[0] != starts[1]
