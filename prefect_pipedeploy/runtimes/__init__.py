"""Runtimes: where the process of an execution or of a pod runs, and how it is watched.

For: `base` (the `Runtime` protocol and the handle of a started process), `process` (the one
place that starts, measures and kills child processes: `ProcessRuntime` for the worker,
`start_child` for the local stack), `elastic` (one fresh process per execution) and
`low_latency` (the pod supervisor: one warm pod per low-latency deployment), `pod_plan` (which
pods to start, update and stop: pure) and `orphans` (the runs of pods whose worker died).
Not for: deciding what runs (the worker) or running the flow (`engine`).
"""
