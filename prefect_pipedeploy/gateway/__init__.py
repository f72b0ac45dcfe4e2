"""The endpoint gateway: token-protected HTTP endpoints that start executions and answer results.

For: serving every `endpoint` deployment of some work pools (including ones created after the
gateway started) at `POST /endpoints/{endpoint_url_path}`: checking the endpoint token,
validating the body against the deployment's inputs mapping, creating the execution through the
Prefect API (so it is tracked like any other run) and answering DESIGN.md's contract: 200 with
the outputs within the wait budget, 303 to a long-poll `GET .../executions/{id}` after it, 202
with `?wait_for_completion=false`, 500 when the execution fails. Also `GET /health`, and an
OpenAPI description of every endpoint (`/openapi.json`, `/docs`). Every call that creates an
execution emits the Prefect event `prefect-pipedeploy.endpoint.called`.
Not for: running pipelines (worker, pods), resolving inputs at run time (`iomapping`), or
starting endpoint deployments from Prefect events (`prefect_api.triggers`).

    pipedeploy gateway --pool pipedeploy --host 127.0.0.1 --port 8080

Where DESIGN.md is silent, this module decides:
- Deployments are looked up by endpoint path at request time in a table of the pools'
  endpoint deployments, re-read at most every `ENDPOINT_CACHE_TTL_S`, and at once when a path
  is unknown. A rotated token works at once (a mismatch re-reads that deployment); the old one
  keeps working for at most `ENDPOINT_CACHE_TTL_S`.
- Inputs: a JSON object; or multipart/form-data (or a urlencoded form) whose text fields are
  taken as they are for string inputs and parsed as JSON for the other types. Pipeline inputs
  the mapping leaves out are accepted under their own name. Every input is checked against the
  pipeline's parameter type too (its JSON schema: unions such as `list | None`, enums, array
  items), so a value the execution would refuse is a 400 naming it, not a failed execution. A
  null optional input counts as not given. JSON sent as a urlencoded form (`curl -d` without a
  Content-Type) is a 400 that says so.
- Bodies are read as they stream, within `GATEWAY_MAX_BODY_BYTES` (413), `GATEWAY_MAX_FIELDS`
  and `GATEWAY_MAX_FILES` (400) and `GATEWAY_MAX_PART_BYTES` for one text field of a form (413).
  File parts are spooled to temporary files (Starlette's parser), closed once stored.
- Values no execution can take are refused with 400 naming the input: nested deeper than 100
  levels, lone surrogates, numbers beyond a 64-bit float. Inputs other than files over what the
  Prefect server stores for one execution (`max_parameter_size`, 512 KiB) get 413 before any
  upload or create.
- Executions are created `GATEWAY_MAX_CREATING` at a time through the gateway's own queue
  (`GATEWAY_MAX_QUEUED` calls, then 429 with Retry-After); a caller that disconnects while it
  waits, or before its create, gets no execution.
- A waiting call is answered when Prefect's event stream says its execution moved and a read
  shows it settled (`waiting.RunWatcher`; a poll only while the stream is down).
- File inputs are stored in the data store under `uploads/<uuid>/<file name>` before the
  execution is created (its id does not exist yet); the run's parameter is
  {"datastore_path": key} and the execution downloads it and passes {"path": <local file>}.
  Uploads are removed after `GATEWAY_UPLOAD_RETENTION_S` unless an execution may still read
  them (`uploads`).
- A single file output: a succeeded execution that returned no outputs to the caller and wrote
  exactly one output to the data store (an output mapped to a datastore_path). Its bytes are the
  answer, as application/octet-stream with the file name in Content-Disposition, the execution
  id in X-Execution-Id and the output name in X-Output-Name, unless the caller accepts only
  application/json. Only a `pathlib.Path` the pipeline returned is a file (`iomapping`); a
  {"path": ...} output is JSON, to the caller and in the store.
- A Failed or Crashed execution the worker will retry (attempts left under `max_retries`) is
  not final: the gateway waits for the retry (up to the `retry_grace_s` setting for it to be
  queued; `status.settled` is the rule, the SDK's too).
- A disabled (paused) deployment answers 409. Wrong tokens are counted per client address
  (X-Forwarded-For is honoured from the addresses uvicorn trusts, 127.0.0.1 by default) as
  they arrive, concurrent ones included; past `GATEWAY_BAD_TOKEN_LIMIT` a minute, 429. The
  re-read a wrong token causes is shared by every request that asked before it began.

Modules: `endpoints` (what a deployment serves), `bodies` (request bodies read within the
limits and parsed), `inputs` (their fields checked against an endpoint), `answers` (HTTP
answers and error bodies), `waiting` (waiting for executions, the create queue, wrong token
limits), `reads` (reads shared by concurrent calls), `uploads` (upload keys and their
retention), `service` (the effects: Prefect API, data store, events), `openapi`, `app`.
"""

from __future__ import annotations

from prefect_pipedeploy.gateway.app import create_app, serve

__all__ = ["create_app", "serve"]
