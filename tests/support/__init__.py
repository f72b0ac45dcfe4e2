"""Helpers shared by the test modules of every tier; no test module imports another test module.

paths         ROOT (the checkout) and PIPELINES (the file of the tests' pipelines)
pipelines     the pipelines the tests deploy (workers import it by path: standalone)
eventually    the one polling helper: wait for a condition, fail with the last value seen
executions    names, deployments and executions through the SDK (wait until up, bursts, logs)
processes     real processes: workers, gateways, the pods and runs under a worker, sampling
s3_server     moto's S3 server in its own process, and its fixtures
streams       byte streams and payloads for the data-store tests
endpoints     an endpoint like the gateway builds from a deployment (pure)
fuzzing       hypothesis strategies for the gateway's fuzz pass (bodies from an OpenAPI schema)
rawhttp       HTTP/1.1 written by hand: bodies past a server's limit, file names byte for byte
local_stack   a whole `pipedeploy up` on free ports, stopped with Ctrl-C
postgresql    what a PostgreSQL database holds, read with asyncpg (the tests on PostgreSQL)
"""
