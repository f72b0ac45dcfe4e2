"""Benchmark section: the docker runtime beside the process runtime, and beside Prefect's own
Docker worker.

For: `benchmarks/latency.py` runs it as its `docker` section (issue 15's rows). On this
machine's Docker engine (none answering: the section reports why and is left out), with the
image the tests build (`tests/support/docker_images.project_image`: Debian's Python plus this
checkout, kept between runs), one pipedeploy worker serves four deployments of the same trivial
`def` pipeline: low latency in a process pod and in a container pod, elastic as a process and
as a container; Prefect's `DockerWorker` (prefect-docker, 1 s poll) runs it in a container of
the same image. The pipeline's folder is mounted into the containers at its own path (every one
of them finds it where the deployment says). Each row is the round trip of section 1 (create ->
final state seen -> read back); the report gives each docker row's ratio to its process row
and to Prefect's Docker worker. Not for: a run on its own (see latency.py's usage line).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from prefect.client.schemas.actions import WorkPoolCreate

from benchmarks.logs_at_final import BenchLike as SectionBench
from prefect_pipedeploy import PipeDeploy

POOL = "bench-docker-runtime"
PREFECT_DOCKER_POOL = "bench-prefect-docker"
ROWS = {
    "ll-process": "pipedeploy low_latency, process pod",
    "ll-docker": "pipedeploy low_latency, container pod",
    "elastic-process": "pipedeploy elastic (cold start), process",
    "elastic-docker": "pipedeploy elastic (cold start), container",
    "prefect-docker": "Prefect Docker worker (prefect-docker), 1 s poll",
}


class BenchLike(SectionBench, Protocol):
    """What this section uses of latency.py's `Bench`."""

    async def measure_path(
        self, key: str, label: str, deployment_id: UUID, runs: int, warmup: int = 1
    ) -> dict[str, Any]: ...


def say(message: str = "") -> None:
    print(message, file=sys.stderr, flush=True)


async def docker_section(
    bench: BenchLike,
    flows_file: Path,
    start_worker: Any,
    wait_until_up: Any,
    wait_for_log: Any,
) -> None:
    from prefect_pipedeploy.runtimes.docker import docker_client
    from tests.support.docker_images import project_image

    say("\n## docker runtime beside the process runtime and Prefect's Docker worker")
    client = docker_client()  # RuntimeStartError (the engine's address and the fix) if none
    say("  building or finding the project image (kept between runs)")
    image = await asyncio.to_thread(project_image, client)
    folder = str(flows_file.parent)
    docker = {"image": image, "volumes": [f"{folder}:{folder}:ro"], "pull_policy": "Never"}
    pd = PipeDeploy(api_url=bench.api_url, work_pool_name=POOL)
    entrypoint = f"{flows_file}:bench_noop_sync"
    deployments = {
        "ll-process": {"mode": "low_latency"},
        "ll-docker": {"mode": "low_latency", "runtime": "docker", "docker": docker},
        "elastic-process": {"mode": "elastic"},
        "elastic-docker": {"mode": "elastic", "runtime": "docker", "docker": docker},
    }
    ids: dict[str, UUID] = {}
    for key, options in deployments.items():
        name = f"bench-{key}"
        await pd.acreate_deployment(entrypoint, name, execution_rule="endpoint", **options)
        ids[key] = UUID((await pd.aget_deployment(name))["id"])
    ids["prefect-docker"] = await _prefect_docker_deployment(bench, flows_file, image)
    rows: dict[str, Any] = {}
    worker = start_worker(bench, POOL, bench.api_url, "docker-runtime-worker")
    try:
        await wait_until_up(pd, ["bench-ll-process", "bench-ll-docker"], timeout_s=300)
        for key in ("ll-process", "ll-docker"):
            rows[key] = await bench.measure_path(
                f"docker:{key}", ROWS[key], ids[key], bench.args.runs
            )
        for key in ("elastic-process", "elastic-docker"):
            rows[key] = await bench.measure_path(
                f"docker:{key}", ROWS[key], ids[key], bench.args.slow_runs
            )
    finally:
        bench.stop(worker)
    prefect_worker = bench.start(
        "prefect-docker-worker",
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", PREFECT_DOCKER_POOL],
        {**os.environ, "PREFECT_API_URL": bench.api_url, "PREFECT_WORKER_QUERY_SECONDS": "1"},
    )
    try:
        wait_for_log(prefect_worker, "started!")
        rows["prefect-docker"] = await bench.measure_path(
            "docker:prefect-docker",
            ROWS["prefect-docker"],
            ids["prefect-docker"],
            bench.args.slow_runs,
        )
    finally:
        bench.stop(prefect_worker)
    for key in rows:  # this section's table, not section 1's
        bench.results["latency"].pop(f"docker:{key}", None)
    bench.results["docker"] = rows


async def _prefect_docker_deployment(bench: BenchLike, flows_file: Path, image: str) -> UUID:
    """The same pipeline on a Prefect Docker pool: a container of the same image, host network,
    the pipeline's folder mounted at its own path, found by Prefect's own pull step."""
    from prefect_docker.worker import DockerWorker

    folder = str(flows_file.parent)
    await bench.client.create_work_pool(
        WorkPoolCreate(
            name=PREFECT_DOCKER_POOL,
            type="docker",
            base_job_template=DockerWorker.get_default_base_job_template(),
        )
    )
    flow_id = await bench.client.create_flow_from_name("bench-noop-sync")
    return await bench.client.create_deployment(
        flow_id=flow_id,
        name="bench-prefect-docker",
        work_pool_name=PREFECT_DOCKER_POOL,
        entrypoint=f"{flows_file.name}:bench_noop_sync",
        path=folder,
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": folder}}],
        job_variables={
            "image": image,
            "image_pull_policy": "Never",
            "network_mode": "host",
            "volumes": [f"{folder}:{folder}:ro"],
            "auto_remove": True,
        },
        enforce_parameter_schema=False,
    )


def report_docker(results: dict[str, Any]) -> list[str]:
    """The section's Markdown lines (none when it did not run)."""
    rows = results.get("docker")
    if not rows:
        return []

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    def ratio(row: dict[str, Any], base: dict[str, Any] | None) -> str:
        if not row.get("runs") or not base or not base.get("runs"):
            return "-"
        return f"{row['p50_s'] / base['p50_s']:.2f}x"

    prefect = rows.get("prefect-docker")
    lines = [
        "",
        "## docker runtime: a trivial `def` pipeline in containers of one image, beside the "
        "process runtime and Prefect's Docker worker",
        "",
        "| path | runs | p50 | p99 | p50 / same mode as a process | p50 / Prefect Docker worker |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in ROWS.items():
        row = rows.get(key)
        if row is None:
            continue
        if not row.get("runs"):
            lines.append(f"| {label} | 0 | failed | | | |")
            continue
        process = rows.get(key.replace("docker", "process")) if key.endswith("docker") else None
        lines.append(
            f"| {label} | {row['runs']} | {ms(row['p50_s'])} | {ms(row['p99_s'])} |"
            f" {ratio(row, process) if key != 'prefect-docker' else '-'} |"
            f" {ratio(row, prefect) if key != 'prefect-docker' else '1.00x'} |"
        )
    lines += [
        "",
        "A container pod's round trip is the pod's work plus the same Prefect writes as a process "
        "pod's: the container only changes where the pod's process runs. An elastic container "
        "run adds the container's create, start and removal to a process's cold start.",
    ]
    return lines
