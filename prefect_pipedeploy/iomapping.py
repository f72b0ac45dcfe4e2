"""Inputs and outputs mapping at run time: a deployment's mappings applied to one execution.

For: turning an execution's parameters into the pipeline's keyword arguments before it starts
(`resolve_inputs`: endpoint value, constant, environment variable, data-store file downloaded
and passed as {"path": ...}, null; a file endpoint input arrives as a data-store marker
{"datastore_path": key} and is downloaded the same way), and sending its returned outputs where the mapping says
after it ends (`route_outputs`: back to the caller, into the data store under a path with
{execution_id}, {date} and {date_time} filled in, or dropped; a returned `pathlib.Path` is a
file output, uploaded as its bytes when it lies where the execution may write), and giving a
running pipeline its execution's own directory for such files (`execution_dir`).
Not for: validating mappings when a deployment is created (`spec`), running the pipeline or
deciding its final state (the runtimes and `engine`), or recording what was
resolved (`prefect_api.records`). Elastic runs and low-latency pods call the same functions.

Both `resolve_inputs` and `route_outputs` are synchronous: they use the data store's blocking
methods. Async callers run them in a worker thread (`anyio.to_thread.run_sync`).

Every execution downloads into its own directory, `<workdir>/inputs/<execution_id>/`, so
parallel executions in one pod never see each other's files; `cleanup_execution_files` removes
it once the execution is over. The runner's `<workdir>` is a temporary directory named after the
execution (`make_execution_dir`): the process removes it when the run ends, and the worker
(`remove_execution_dirs`) when that process was killed before it could.
"""

from __future__ import annotations

import copy
import inspect
import io
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from prefect.context import FlowRunContext

from prefect_pipedeploy.datastore.base import DataStore
from prefect_pipedeploy.datastore.configured import _CONFIGURE_FIX
from prefect_pipedeploy.datastore.keys import validate_key
from prefect_pipedeploy.exceptions import (
    DataStoreError,
    DataStoreNotConfigured,
    DataStoreObjectNotFound,
    InputResolutionError,
    OutputRoutingError,
)
from prefect_pipedeploy.settings import env_name
from prefect_pipedeploy.spec import OUTPUT_PLACEHOLDERS, DeploymentSpec, ExecutionRule, InputSource

SECRET_MASK = "***"


def uses_data_store(spec: DeploymentSpec) -> bool:
    """Whether an execution of this deployment reads or writes the data store (file endpoint
    inputs are uploaded there by the gateway and downloaded from there by the execution)."""
    return (
        any(s.datastore_path is not None for s in spec.inputs_mapping)
        or any(is_file_endpoint_input(s) for s in spec.inputs_mapping)
        or any(d.datastore_path is not None for d in spec.outputs_mapping)
    )


FILE_MARKER_KEY = "datastore_path"


def is_file_endpoint_input(source: InputSource) -> bool:
    """Whether `source` is an endpoint input of data_type "file"."""
    return source.endpoint_input_name is not None and source.data_type == "file"


def file_input_marker(key: str) -> dict[str, str]:
    """The parameter value of a file endpoint input: the data-store key its bytes were stored
    under (the gateway stores multipart uploads and creates the run with this marker)."""
    return {FILE_MARKER_KEY: key}


def file_input_key(value: Any) -> str | None:
    """The data-store key in a file endpoint input's parameter value, or None if it is not a
    marker. Extra fields (filename, size) are allowed; the key is what counts."""
    if isinstance(value, Mapping) and isinstance(value.get(FILE_MARKER_KEY), str):
        return str(value[FILE_MARKER_KEY])
    return None


def pipeline_inputs_of(fn: Callable[..., Any]) -> tuple[list[str], list[str]]:
    """The input names of a pipeline function (or flow), and those without a default.

    The one reading of a pipeline's signature: the SDK checks a mapping against it when a
    deployment is created (`DeploymentSpec.check_pipeline_inputs`), and every run resolves its
    inputs with it, so a mapping accepted at creation is one the runs can feed. `*args` and
    `**kwargs` are not inputs: a mapping cannot feed them.
    """
    fn = getattr(fn, "fn", fn)  # a Prefect flow wraps its function
    parameters = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in ("self", "cls")
    ]
    names = [p.name for p in parameters]
    required = [p.name for p in parameters if p.default is inspect.Parameter.empty]
    return names, required


_EXECUTION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def execution_inputs_dir(workdir: Path, execution_id: str) -> Path:
    """The directory of one execution's downloaded input files: `<workdir>/inputs/<id>`."""
    if not _EXECUTION_ID_RE.match(str(execution_id)) or ".." in str(execution_id):
        raise ValueError(f"execution id {execution_id!r} is not a single path segment")
    return Path(workdir).expanduser().absolute() / "inputs" / str(execution_id)


EXECUTION_DIR_PREFIX = "pipedeploy-exec-"


def make_execution_dir(execution_id: str) -> Path:
    """A new temporary directory for one execution, `pipedeploy-exec-<id>-*` in the temporary
    directory, so whoever outlives the execution's process can find it by the id."""
    execution_inputs_dir(Path(), execution_id)  # the id is one safe path segment
    return Path(tempfile.mkdtemp(prefix=f"{EXECUTION_DIR_PREFIX}{execution_id}-"))


def execution_dir() -> Path:
    """The running execution's own temporary directory, for the files a pipeline writes (a
    model, a report it returns as a `pathlib.Path` output): removed once the execution ends,
    after its outputs are stored. Call it inside a pipeline run by a pipedeploy worker; raises
    `RuntimeError` elsewhere (a flow called directly has no such directory)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError(
            "execution_dir() is called outside a flow run; call it inside a pipeline that a "
            "pipedeploy worker runs"
        )
    execution_id = str(context.flow_run.id)
    prefix = f"{EXECUTION_DIR_PREFIX}{execution_id}-"
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        return path
    raise RuntimeError(
        f"execution_dir(): flow run {execution_id} has no execution directory: it is not run by "
        "a pipedeploy worker (a flow called directly, or run by another worker type); write to "
        "a directory of your own there"
    )


def remove_execution_dirs(execution_id: str) -> None:
    """Remove the temporary directories made for an execution (`make_execution_dir`) whose
    process ended without removing them (killed, out of RAM, `os._exit`): called by the worker
    once that process is gone, before the execution may be retried elsewhere."""
    execution_inputs_dir(Path(), execution_id)
    for path in Path(tempfile.gettempdir()).glob(f"{EXECUTION_DIR_PREFIX}{execution_id}-*"):
        shutil.rmtree(path, ignore_errors=True)


def cleanup_execution_files(workdir: Path, execution_id: str) -> None:
    """Remove the files downloaded for one execution (safe to call twice, or when none were)."""
    shutil.rmtree(execution_inputs_dir(workdir, execution_id), ignore_errors=True)


@dataclass(frozen=True)
class ResolvedInputs:
    """What the pipeline is called with, and what the execution records about it."""

    parameters: dict[str, Any]
    """The keyword arguments of the pipeline; inputs left out take the pipeline's default."""
    recorded: dict[str, Any]
    """A JSON-friendly view for the execution's record: secret inputs are "***", data-store
    inputs are {"datastore_path", "size", "sha256"} (the local copy is gone after the run)."""
    ignored: list[str] = field(default_factory=list)
    """Parameters given with the execution for inputs the mapping feeds from another source
    (constant, environment variable, data store, null): the mapping wins; worth a warning."""


def _describe(source: InputSource) -> str:
    """The source of an input, for messages: "endpoint input 'y'", "environment variable 'Y'"."""
    if source.endpoint_input_name is not None:
        return f"endpoint input {source.endpoint_input_name!r}"
    if source.environment_variable_name is not None:
        return f"environment variable {source.environment_variable_name!r}"
    if source.datastore_path is not None:
        return f"data-store path {source.datastore_path!r}"
    return "null" if source.is_null else "a constant"


def resolve_inputs(
    spec: DeploymentSpec,
    parameters: Mapping[str, Any],
    pipeline_inputs: list[str],
    required_inputs: list[str],
    execution_id: str,
    workdir: Path,
    store: DataStore | None,
    environ: Mapping[str, str],
) -> ResolvedInputs:
    """The pipeline's keyword arguments for one execution, from the deployment's inputs mapping.

    `parameters` are the flow run's parameters, keyed by pipeline input name (the gateway has
    already translated endpoint input names). Each mapped input takes its source's value; an
    unmapped input takes the parameter of its name when given, else the pipeline's default.
    Data-store inputs are downloaded into `execution_inputs_dir(workdir, execution_id)`, and
    so are file endpoint inputs, whose parameter is a marker {"datastore_path": key} naming
    where the gateway stored the upload; the pipeline receives {"path": <local file>}.

    Raises `InputResolutionError` naming every input that cannot be resolved (and any parameter
    the pipeline does not take), `DataStoreNotConfigured` when a data-store input has no store.
    """
    mapping = {source.pipeline_input_name: source for source in spec.inputs_mapping}
    errors: list[str] = []
    stale = [name for name in mapping if name not in pipeline_inputs]
    if stale:
        errors.append(
            f"inputs_mapping maps {', '.join(map(repr, stale))} but the pipeline has no such "
            f"input (its inputs are {', '.join(pipeline_inputs) or 'none'}); update the "
            "deployment's inputs_mapping"
        )
    unknown = [name for name in parameters if name not in pipeline_inputs]
    if unknown:
        errors.append(
            f"the pipeline has no input {', '.join(map(repr, unknown))}; its inputs are "
            f"{', '.join(pipeline_inputs) or 'none'}"
        )
    downloads = [s for s in mapping.values() if s.datastore_path is not None]
    if downloads and store is None:
        raise DataStoreNotConfigured(
            f"input {downloads[0].pipeline_input_name!r} comes from "
            f"{_describe(downloads[0])} but no data store is configured; {_CONFIGURE_FIX}"
        )

    resolved: dict[str, Any] = {}
    recorded: dict[str, Any] = {}
    ignored: list[str] = []
    file_keys: dict[str, str] = {}  # file endpoint inputs: pipeline input name -> data-store key
    for name in pipeline_inputs:
        source = mapping.get(name)
        if source is None:
            if name in parameters:
                resolved[name] = parameters[name]
                recorded[name] = _for_the_record(parameters[name])
            elif name in required_inputs:
                errors.append(_unmapped_missing(spec, name))
            continue
        if source.endpoint_input_name is None and name in parameters:
            ignored.append(name)
        if source.datastore_path is not None:
            continue  # downloaded below
        if is_file_endpoint_input(source) and name in parameters:
            key = file_input_key(parameters[name])
            if key is None:
                errors.append(
                    f"input {name!r} ({_describe(source)}) is a file input: its value must be "
                    f"{{'{FILE_MARKER_KEY}': <data-store key>}} (the gateway passes uploaded "
                    f"files that way), not {type(parameters[name]).__name__}"
                )
            else:
                file_keys[name] = key
            continue  # downloaded below
        try:
            value = _resolve_one(source, parameters, required_inputs, environ)
        except InputResolutionError as exc:
            errors.append(str(exc))
            continue
        if value is not _OMIT:
            resolved[name] = value
            recorded[name] = SECRET_MASK if source.is_secret else _for_the_record(value)
    if errors:
        raise InputResolutionError("; ".join(errors))
    if file_keys and store is None:
        first = next(iter(file_keys))
        raise DataStoreNotConfigured(
            f"input {first!r} is a file endpoint input, kept in the data store, but no data "
            f"store is configured; {_CONFIGURE_FIX}"
        )

    # Downloads last: nothing is fetched for an execution that fails on a cheaper check.
    fetches = [(s, str(s.datastore_path)) for s in downloads]
    fetches += [(mapping[name], key) for name, key in file_keys.items()]
    for source, key in fetches:
        assert store is not None  # checked above
        name = source.pipeline_input_name
        resolved[name], info = _download(source, key, store, workdir, execution_id)
        recorded[name] = SECRET_MASK if source.is_secret else info
    ordered = {name: resolved[name] for name in pipeline_inputs if name in resolved}
    recorded = {name: recorded[name] for name in pipeline_inputs if name in recorded}
    return ResolvedInputs(parameters=ordered, recorded=recorded, ignored=ignored)


_OMIT: Any = object()  # pass nothing for this input, so the pipeline's own default applies


def _for_the_record(value: Any) -> Any:
    """A JSON copy of `value` (what JSON cannot hold becomes its repr)."""
    return json.loads(json.dumps(value, default=repr))


def _unmapped_missing(spec: DeploymentSpec, name: str) -> str:
    if spec.execution_rule == ExecutionRule.periodic.value:
        return (
            f"input {name!r} is required but not mapped; map it in the deployment's "
            "inputs_mapping to a constant, an environment variable, a data-store path or null"
        )
    return f"input {name!r} (endpoint input {name!r}) is required and was not given"


def _resolve_one(
    source: InputSource,
    parameters: Mapping[str, Any],
    required_inputs: list[str],
    environ: Mapping[str, str],
) -> Any:
    """The value of one input whose source is not the data store."""
    name = source.pipeline_input_name
    if source.endpoint_input_name is not None:
        if name in parameters:
            return parameters[name]
        if source.is_required:
            raise InputResolutionError(
                f"input {name!r} ({_describe(source)}) is required and was not given"
            )
        if "default_value" in source.model_fields_set or name in required_inputs:
            return copy.deepcopy(source.default_value)
        return _OMIT
    if source.environment_variable_name is not None:
        variable = source.environment_variable_name
        if variable not in environ:
            raise InputResolutionError(
                f"input {name!r}: environment variable {variable!r} is not set in the "
                "pipeline's environment; set it in the deployment's env or the worker's "
                "environment"
            )
        return environ[variable]
    if source.is_null:
        return None
    # A copy: a pipeline that changes its argument must not change the next execution's.
    return copy.deepcopy(source.constant_value)


def _download(
    source: InputSource, key: str, store: DataStore, workdir: Path, execution_id: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """Fetch a data-store input (its datastore_path, or the key a file endpoint input was
    uploaded under); return the pipeline's {"path": ...} and the record of it."""
    name = source.pipeline_input_name
    try:
        key = validate_key(key)
        local = execution_inputs_dir(workdir, execution_id) / name / key.rsplit("/", 1)[-1]
        info = store.download(key, local)
    except DataStoreObjectNotFound as exc:
        if is_file_endpoint_input(source):
            raise InputResolutionError(
                f"input {name!r}: the uploaded file {key!r} is no longer in "
                f"{store.public_name()} (uploads are kept for "
                f"{env_name('gateway_upload_retention_s')}); call the endpoint again with the file"
            ) from exc
        raise InputResolutionError(
            f"input {name!r}: data-store path {key!r} does not exist in {store.public_name()}; "
            "upload it (`pipedeploy datastore put FILE "
            f"{key}`) or fix the input's datastore_path"
        ) from exc
    except DataStoreError as exc:
        raise InputResolutionError(
            f"input {name!r}: data-store path {key!r} cannot be downloaded: {exc}"
        ) from exc
    record = {"datastore_path": key, "size": info.size, "sha256": info.sha256}
    return {"path": str(local)}, record


_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")


def render_output_path(template: str, execution_id: str, now: datetime) -> str:
    """A data-store path with {execution_id}, {date} (YYYYMMDD) and {date_time}
    (YYYYMMDD_hhmmss) filled in; `now` is taken in UTC (a naive `now` is taken as UTC).

    Raises ValueError for any other placeholder.
    """
    moment = now.astimezone(timezone.utc) if now.tzinfo else now
    values = {
        "execution_id": str(execution_id),
        "date": moment.strftime("%Y%m%d"),
        "date_time": moment.strftime("%Y%m%d_%H%M%S"),
    }

    def fill(match: re.Match[str]) -> str:
        placeholder = match.group(1)
        if placeholder not in OUTPUT_PLACEHOLDERS:
            raise ValueError(
                f"placeholder {{{placeholder}}} in {template!r} is unknown; use {{execution_id}},"
                " {date} or {date_time}"
            )
        return values[placeholder]

    return _PLACEHOLDER_RE.sub(fill, template)


@dataclass(frozen=True)
class RoutedOutputs:
    """Where the outputs of one execution went."""

    endpoint: dict[str, Any]
    """Outputs given back to the caller and recorded, by endpoint output name (periodic
    deployments: the unmapped outputs, by their own name)."""
    stored: dict[str, str]
    """Outputs written to the data store: pipeline output name -> key."""


def file_output_path(value: Any) -> Path | None:
    """The file a pipeline marked as a file output by returning a `pathlib.Path` (any
    `os.PathLike`), else None. A dict such as {"path": ...} is a JSON value like any other:
    a caller can send one, and a pipeline echoing it must not hand out the file it names."""
    if isinstance(value, os.PathLike):
        return Path(os.fspath(value))
    return None


def file_output_roots() -> tuple[Path, ...]:
    """Where an execution may write the files it returns: its working directory and the
    system's temporary directory (each resolved; a root that is the filesystem's root, such as
    a process started in `/`, does not count)."""
    roots = []
    for root in (Path.cwd(), Path(tempfile.gettempdir())):
        resolved = root.resolve()
        if resolved != Path(resolved.anchor) and resolved not in roots:
            roots.append(resolved)
    return tuple(roots)


def open_file_output(name: str, path: Path, roots: Sequence[Path]) -> BinaryIO:
    """Open the file of output `name` for reading, if it is a regular file that lies under one
    of `roots` once every symbolic link is resolved (a link may point anywhere under a root,
    not out of it). A relative path is taken from the working directory, where the pipeline
    wrote it. Raises `OutputRoutingError` naming the output and the rule otherwise."""
    where = " or ".join(str(root) for root in roots) or "nowhere (no usable directory)"
    fix = f"write the file under {where} and return its Path"
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise OutputRoutingError(
            f"output {name!r} is the file {str(path)!r}, which cannot be read "
            f"({getattr(exc, 'strerror', None) or exc}); {fix}"
        ) from None
    if not any(real.is_relative_to(root) for root in roots):
        raise OutputRoutingError(
            f"output {name!r} is the file {str(path)!r}, which lies outside where the execution "
            f"may write; {fix}"
        )
    try:
        # not through a link swapped in meanwhile; a FIFO must not block the open
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        descriptor = os.open(real, flags)
    except OSError as exc:
        raise OutputRoutingError(
            f"output {name!r} is the file {str(path)!r}, which cannot be read ({exc.strerror}); "
            f"{fix}"
        ) from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise OutputRoutingError(
            f"output {name!r} is {str(path)!r}, which is not a regular file; {fix}"
        )
    return os.fdopen(descriptor, "rb")


def route_outputs(
    spec: DeploymentSpec,
    outputs: Mapping[str, Any],
    execution_id: str,
    now: datetime,
    store: DataStore | None,
    file_roots: Sequence[Path] | None = None,
) -> RoutedOutputs:
    """Send each output where the deployment's outputs mapping says.

    Endpoint outputs come back in `endpoint`; data-store outputs are uploaded and listed in
    `stored`: a file output (the pipeline returned a `pathlib.Path`) as that file's bytes,
    any other value as `stored_bytes` says (text as text, bytes as bytes, the rest, dicts like
    {"path": ...} included, as UTF-8 JSON). A file output must
    be a regular file under one of `file_roots` (default `file_output_roots()`: the working
    directory and the temporary directory), symbolic links resolved; a relative path resolves
    against the working directory, where the pipeline wrote it. Null outputs are dropped.
    Unmapped outputs keep their name in `endpoint`.

    Raises `OutputRoutingError` naming the output and its destination, `DataStoreNotConfigured`
    when a data-store output has no store. Uploads run last, once every check passed.
    """
    mapping = {d.pipeline_output_name: d for d in spec.outputs_mapping}
    errors: list[str] = []
    missing = [name for name in mapping if name not in outputs]
    if missing:
        errors.append(
            f"output {', '.join(map(repr, missing))} is mapped in outputs_mapping but the "
            f"pipeline did not return it (it returned {', '.join(map(repr, outputs)) or 'nothing'}"
            "); return it from the pipeline or remove it from outputs_mapping"
        )
    endpoint: dict[str, Any] = {}
    endpoint_from: dict[str, str] = {}
    uploads: dict[str, tuple[str, Any]] = {}  # key -> (output name, value)
    for name, value in outputs.items():
        destination = mapping.get(name)
        if destination is not None and destination.is_null:
            continue
        if destination is not None and destination.datastore_path is not None:
            template = destination.datastore_path
            try:
                key = validate_key(render_output_path(template, execution_id, now))
            except (ValueError, DataStoreError) as exc:
                errors.append(f"output {name!r}: datastore_path {template!r} is not usable: {exc}")
                continue
            if key in uploads:
                errors.append(
                    f"outputs {uploads[key][0]!r} and {name!r} both go to data-store path "
                    f"{key!r}; give one of them another datastore_path"
                )
                continue
            uploads[key] = (name, value)
            continue
        target = destination.endpoint_output_name if destination is not None else name
        assert target is not None
        if target in endpoint_from:
            errors.append(
                f"outputs {endpoint_from[target]!r} and {name!r} both go to endpoint output "
                f"{target!r}; map one of them to another endpoint_output_name"
            )
            continue
        endpoint_from[target] = name
        endpoint[target] = value
    if errors:
        raise OutputRoutingError("; ".join(errors))
    if uploads and store is None:
        first = next(iter(uploads.values()))[0]
        raise DataStoreNotConfigured(
            f"output {first!r} goes to the data store but no data store is configured; "
            f"{_CONFIGURE_FIX}"
        )

    stored: dict[str, str] = {}
    roots = file_output_roots() if file_roots is None else tuple(file_roots)
    for key, (name, value) in uploads.items():
        assert store is not None
        _upload(store, name, value, key, roots)
        stored[name] = key
    return RoutedOutputs(endpoint=endpoint, stored=stored)


def stored_bytes(value: Any) -> bytes:
    """What the data store holds for an output value that is not a file: a `str` as its UTF-8
    text (a report's text is the file a user downloads, not a JSON string of it), `bytes` as
    they are, anything else as its UTF-8 JSON. Raises TypeError or ValueError for a value that
    is none of these."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _upload(store: DataStore, name: str, value: Any, key: str, file_roots: Sequence[Path]) -> None:
    path = file_output_path(value)
    try:
        if path is not None:
            with open_file_output(name, path, file_roots) as file:
                store.upload(file, key)
            return
        try:
            body = stored_bytes(value)
        except (TypeError, ValueError) as exc:
            raise OutputRoutingError(
                f"output {name!r} cannot go to data-store path {key!r}: it is not JSON ({exc});"
                " return JSON values, or write a file and return its pathlib.Path"
            ) from exc
        store.upload(io.BytesIO(body), key)
    except DataStoreError as exc:
        raise OutputRoutingError(
            f"output {name!r} could not be stored at data-store path {key!r}: {exc}"
        ) from exc
