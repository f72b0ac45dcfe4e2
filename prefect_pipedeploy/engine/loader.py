"""Loading a pipeline: the one way from an entrypoint, a deployment or a user's value to a flow.

For: `import_pipeline` (an entrypoint -> a flow: a `@flow` as it is, a plain function wrapped
into a flow whose returned dict is the outputs), `load_deployment_pipeline` (a deployment's pull
steps, then `import_pipeline`: how an elastic run and a pod load, so both load alike) and
`load_pipeline` (what a user passes the SDK: a flow, a function or "file.py:function", with the
directory and entrypoint a deployment of it keeps). Errors are `PipelineLoadError`s naming the
pipeline and the fix. Not for: running the pipeline (`runner`, `flow_engine`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.deployments.steps.core import StepExecutionError, run_steps
from prefect.exceptions import ScriptError
from prefect.utilities.importtools import import_object

from prefect_pipedeploy.exceptions import PipeDeployError, PipelineLoadError

ENTRYPOINT_FORM = "'path/to/file.py:function' (or 'package.module:function')"


def import_pipeline(entrypoint: str) -> Flow[..., Any]:
    """Import the pipeline at `entrypoint` ("path/to/file.py:function", relative to the working
    directory, or a module path "package.module:function" / "package.module.function").

    A `@flow` comes back as it is (its own settings, e.g. `log_prints`, kept); a plain function
    becomes a flow with `log_prints=True` whose returned dict is the execution's outputs. Not
    thread-safe (the import changes `sys.modules`): one import at a time per process.
    """
    path, _, name = entrypoint.rpartition(":" if ":" in entrypoint else ".")
    if not path or not name or entrypoint.endswith(".py"):
        raise PipelineLoadError(
            f"pipeline {entrypoint!r} is not an entrypoint; write it as {ENTRYPOINT_FORM}"
        )
    if path.endswith(".py") and not Path(path).is_file():
        raise PipelineLoadError(
            f"pipeline {entrypoint!r}: no file at {Path(path).absolute()}; check the path "
            "before ':'"
        )
    try:
        found = import_object(entrypoint)
    except AttributeError:
        raise PipelineLoadError(
            f"pipeline {entrypoint!r} could not be imported: {path} has no {name!r}; check "
            "the name after ':'"
        ) from None
    except ScriptError as exc:
        cause = exc.user_exc
        raise PipelineLoadError(
            f"pipeline {entrypoint!r} could not be imported: {type(cause).__name__}: {cause}"
        ) from cause
    except Exception as exc:
        raise PipelineLoadError(
            f"pipeline {entrypoint!r} could not be imported: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(found, Flow):
        return found
    if not callable(found):
        raise PipelineLoadError(
            f"pipeline {entrypoint!r} is a {type(found).__name__}, not a function; point the "
            "entrypoint at a function or a @flow"
        )
    return Flow(found, log_prints=True)


async def load_deployment_pipeline(
    deployment: DeploymentResponse,
    flow_run: FlowRun | None = None,
    log: Callable[[str], Any] | None = None,
) -> Flow[..., Any]:
    """Run the deployment's pull steps, then import its entrypoint: an elastic run (`flow_run`
    given: the steps' events name it) and a pod load their pipeline this way.

    Pull steps may change the working directory (`set_working_directory`, `git_clone`): the
    process follows them, and that directory is put first on `sys.path`, so a module-path
    entrypoint and the pipeline's own imports resolve there. A deployment with no pull steps
    runs from its `path`. `log` receives the steps' progress lines.
    """
    if not deployment.entrypoint:
        raise PipelineLoadError(
            f"deployment {deployment.name!r} has no entrypoint; deploy it again with one, "
            f"like {ENTRYPOINT_FORM}"
        )
    if deployment.pull_steps:
        try:
            output = await run_steps(
                deployment.pull_steps,
                print_function=log or print,
                deployment=deployment,
                flow_run=flow_run,
            )
        except StepExecutionError as exc:
            cause = exc.__cause__ or exc
            if isinstance(cause, PipeDeployError):  # our own step: its message has the fix
                raise PipelineLoadError(f"deployment {deployment.name!r}: {cause}") from cause
            fix = "fix the deployment's pull steps"
            if isinstance(cause, (FileNotFoundError, NotADirectoryError)):  # another machine
                fix = (
                    "its folder is not on this machine: create the deployment with a data "
                    "store configured, so that its code is shipped with it, or give it pull "
                    "steps that fetch its code"
                )
            raise PipelineLoadError(
                f"deployment {deployment.name!r}: its pull steps failed ({exc}): "
                f"{type(cause).__name__}: {cause}; {fix}"
            ) from cause
        if output.get("directory"):
            os.chdir(output["directory"])
    elif deployment.path:
        if not Path(deployment.path).is_dir():
            raise PipelineLoadError(
                f"deployment {deployment.name!r}: its path {deployment.path!r} is not a "
                "directory on this machine; give it pull steps that fetch its code"
            )
        os.chdir(deployment.path)
    if sys.path[:1] != [os.getcwd()]:
        sys.path.insert(0, os.getcwd())
    return await asyncio.to_thread(import_pipeline, deployment.entrypoint)


def load_pipeline(pipeline: Any) -> tuple[Flow[..., Any], Path, str]:
    """A pipeline a user passes, as (flow, directory of its file, entrypoint relative to it).

    `pipeline` is a flow, a plain function (see `import_pipeline`), or an entrypoint
    "path/to/file.py:function" (imported now, relative to the working directory).
    """
    if isinstance(pipeline, str):
        if ":" not in pipeline:
            raise PipelineLoadError(
                f"pipeline {pipeline!r} is not an entrypoint; write it as "
                "'path/to/file.py:function'"
            )
        file_part, func_name = pipeline.rsplit(":", 1)
        path = Path(file_part).expanduser().resolve()
        if not path.is_file():
            raise PipelineLoadError(f"pipeline {pipeline!r}: no file at {path}")
        flow = import_pipeline(f"{path}:{func_name}")
        return flow, path.parent, f"{path.name}:{func_name}"
    if isinstance(pipeline, Flow):
        flow, fn = pipeline, pipeline.fn
    elif callable(pipeline):
        fn = pipeline
        flow = Flow(pipeline, log_prints=True)
    else:
        raise PipelineLoadError(
            "pipeline must be a flow, a function or 'file.py:function', not "
            f"{type(pipeline).__name__}"
        )
    source = inspect.getsourcefile(fn)
    qualname = getattr(fn, "__qualname__", "")
    if source is None or "<" in qualname:
        raise PipelineLoadError(
            f"pipeline {getattr(fn, '__name__', fn)!r} must be defined at the top level of a "
            "Python file so that workers can import it"
        )
    path = Path(source).resolve()
    return flow, path.parent, f"{path.name}:{fn.__name__}"


def load_error(exc: BaseException) -> str:
    """How a failed load reads on the run or in the pod's log: our message as it is, anything
    else with its type."""
    if isinstance(exc, PipelineLoadError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
