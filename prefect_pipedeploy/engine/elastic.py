"""One elastic execution: this module as a fresh process, started by the worker per run.

For: loading the pipeline of one flow run, running it through Prefect's engine with its io
mapping, and reporting a pipeline that cannot load on the run; the run's log lines are stored
before it is final (`runlogs`). Not for: watching the process
(`runtimes.process` and the worker do).

    python -m prefect_pipedeploy.engine.elastic <flow-run-id>
"""

from __future__ import annotations

import asyncio
import sys
from uuid import UUID

# No public API registers a run's suspension request without Prefect's per-run observer (see
# `_WithoutSuspensionObserver`); this private module is the registry the observer marks.
from prefect.client.orchestration import get_client
from prefect.logging import get_logger
from prefect.logging.loggers import flow_run_logger

from prefect_pipedeploy.engine.flow_engine import execute_flow_run
from prefect_pipedeploy.engine.loader import load_deployment_pipeline, load_error
from prefect_pipedeploy.engine.runlogs import fail_after_logs, process_run_logs
from prefect_pipedeploy.engine.runner import PipelineRunner
from prefect_pipedeploy.exceptions import (
    PipeDeployError,
)
from prefect_pipedeploy.prefect_api.runs import when_api_answers
from prefect_pipedeploy.spec import spec_from_job_variables

logger = get_logger("prefect_pipedeploy.engine.elastic")


async def _main(flow_run_id: UUID) -> int:
    # from here on the run's log lines go out through `RunLogs`, loading's included, and are
    # stored before the run is final; what is left is sent when the process exits
    process_run_logs()
    async with get_client() as client:
        # the server may be restarting as the worker starts this process: wait for it
        await when_api_answers(client)
        flow_run = await client.read_flow_run(flow_run_id)
        if flow_run.deployment_id is None:
            await fail_after_logs(client, flow_run_id, "The execution has no deployment to run.")
            return 0
        deployment = await client.read_deployment(flow_run.deployment_id)
        try:
            spec = spec_from_job_variables(deployment.job_variables)
        except PipeDeployError as exc:
            await fail_after_logs(
                client, flow_run_id, f"The deployment's settings are invalid: {exc}"
            )
            return 0
        run_logger = flow_run_logger(flow_run)
        try:
            flow = await load_deployment_pipeline(deployment, flow_run, log=run_logger.info)
        except Exception as exc:
            message = f"Could not load the pipeline: {load_error(exc)}"
            logger.error(message)
            await fail_after_logs(client, flow_run_id, message)
            return 0
        await execute_flow_run(client, PipelineRunner(flow, spec), flow_run)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m prefect_pipedeploy.engine.elastic <flow-run-id>", file=sys.stderr)
        return 2
    return asyncio.run(_main(UUID(args[0])))


if __name__ == "__main__":
    sys.exit(main())
