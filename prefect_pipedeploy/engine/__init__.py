"""Code that runs inside an execution's process.

For: `runner` (load a pipeline, resolve its inputs, route its outputs), `flow_engine` (run a
flow run through Prefect's engine in this process), `runlogs` (send the runs' log lines, each
run's stored before its final state), and the two entry points the runtimes
start: `python -m prefect_pipedeploy.engine.elastic <flow-run-id>` (one elastic execution) and
`python -m prefect_pipedeploy.engine.pod` (a low-latency pod). Not for: choosing or watching
runs (`worker`, `runtimes`).
"""

from __future__ import annotations
