"""The pipelines the tests deploy: a worker imports this file by its path (`PIPELINES` in
tests/support/paths.py), so it imports nothing from the tests and needs only Prefect.

For: one small pipeline per behaviour a test needs (module state, async sleeps, failures, RAM
use, a crash, every kind of input, retries, secrets, file inputs and outputs). Each is what a
team would write: a plain function or a Prefect flow whose returned dict is the execution's
outputs.
Not for: the demo (`prefect_pipedeploy/examples/demo.py`, which `pipedeploy up --demo` and the
repository's prefect.yaml deploy).

Files a pipeline writes for its file outputs go under $PIPEDEPLOY_TESTS_SCRATCH (a directory
the test session removes at its end), or the system's temporary directory without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

from prefect import flow, get_run_logger

_CALLS = {"count": 0}  # module state: persists between runs in a low-latency pod


def _wait_for(gate: str, timeout_s: float = 120) -> None:
    """With `gate` (a file path), wait until that file exists (at most `timeout_s`): a run the
    test holds running until it has seen what it needs to."""
    deadline = time.monotonic() + timeout_s
    while gate and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _scratch_dir(prefix: str) -> Path:
    """A fresh directory for a file output, under the test session's scratch directory."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("PIPEDEPLOY_TESTS_SCRATCH")))


def score(text: str = "prefect pipedeploy", repeat: int = 1) -> dict:
    """A plain-function pipeline: a toy "model" that scores a text."""
    words = text.split()
    return {
        "words": len(words) * repeat,
        "score": round(sum(map(len, words)) / max(len(words), 1), 3),
    }


@flow(log_prints=True)
def counter(marker: str = "x", sleep_s: float = 0.0, gate: str = "") -> dict:
    """Counts its calls in module state, logs a marker, optionally sleeps, or waits for a gate
    file (a sync flow)."""
    _CALLS["count"] += 1
    print(f"marker={marker}")
    time.sleep(sleep_s)
    _wait_for(gate)
    return {"count": _CALLS["count"], "pid": os.getpid(), "thread": threading.get_ident()}


@flow
async def async_sleeper(marker: str = "x", sleep_s: float = 1.0) -> dict:
    """An async flow that sleeps and logs a marker."""
    get_run_logger().info("marker=%s", marker)
    await asyncio.sleep(sleep_s)
    return {"marker": marker, "pid": os.getpid()}


@flow
def fails(message: str = "boom") -> dict:
    """Always raises."""
    raise RuntimeError(message)


@flow
def hog(mib: int = 64, hold_s: float = 2.0, gate: str = "") -> dict:
    """Allocates `mib` MiB and holds it for `hold_s`, or until a gate file exists."""
    block = bytearray(mib * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(hold_s)
    _wait_for(gate)
    return {"allocated_mib": mib}


@flow
def exits(code: int = 3) -> dict:
    """Ends its process with `os._exit` (no cleanup, no final state reported)."""
    os._exit(code)


@flow
def suicide() -> dict:
    """Kills its own process (a crash the worker must explain)."""
    os.kill(os.getpid(), 9)
    return {}


@flow(log_prints=True)
def enrich(
    text: str,
    scale: float,
    model_file: dict,
    token: str,
    nothing: object = "unset",
) -> dict:
    """Uses every kind of input and writes a file output (the mapping tests' pipeline)."""
    with open(model_file["path"]) as handle:
        weights = json.load(handle)
    report = _scratch_dir("enrich-") / "report.txt"
    report.write_text(f"{text} x{scale} with {weights['name']}")
    return {
        "summary": f"{text.upper()} ({len(token)}-char token, nothing={nothing!r})",
        "scaled": len(text) * scale * weights["bias"],
        "report": report.resolve(),  # a Path: a file output, uploaded as its bytes
    }


@flow
def queue_step(label: str, fail_attempts: int = 0, sleep_s: float = 0.3, gate: str = "") -> dict:
    """Fails on its first `fail_attempts` attempts (the queue tests' pipeline). With `gate` (a
    file path), it first waits until that file exists (at most two minutes): a run that holds
    its queue until the test has created the runs behind it."""
    from prefect.runtime import flow_run

    attempt = flow_run.run_count
    _wait_for(gate)
    time.sleep(sleep_s)
    if attempt <= fail_attempts:
        raise RuntimeError(f"{label} fails on attempt {attempt}")
    return {"label": label, "attempt": attempt}


def mark(marker: str, marks: str, sleep_s: float = 0.0) -> dict:
    """Leaves one file per attempt in the directory `marks` (the many-workers test), named by
    the marker, its process and that process's parent (the worker); its text says when the
    attempt started and ended. A run executed twice leaves two files."""
    started = time.time()
    path = Path(marks) / f"{marker}.{os.getpid()}.{os.getppid()}.{uuid.uuid4().hex[:8]}"
    path.write_text(f"{started}\n")
    time.sleep(sleep_s)
    path.write_text(f"{started} {time.time()}\n")
    return {"marker": marker, "pid": os.getpid()}


def greet(name: str, api_key: str = "", times: int = 1) -> dict:
    """An endpoint pipeline with a secret input (the gateway tests' pipeline)."""
    return {"greeting": " ".join([f"hello {name}"] * times), "key_length": len(api_key)}


def file_stats(document: dict, label: str = "stats") -> dict:
    """Takes a file input ({"path": ...}) and returns a file output (a Path): a one-line report
    on it."""
    data = Path(document["path"]).read_bytes()
    lines = data.count(b"\n")
    report = _scratch_dir("pipedeploy-report-") / "report.txt"
    report.write_text(f"{label}: {len(data)} bytes, {lines} lines\n")
    return {"report": report}


def echo(o: object = None) -> dict:
    """Returns its input as output `o` (the file-output tests: a caller's {"path": ...} sent
    back through a data-store output stays the JSON it was, never the file it names)."""
    return {"o": o}


def profile(
    name: str, api_key: str = "", times: int = 1, tags: list | None = None, note: object = None
) -> dict:
    """An endpoint pipeline safe with any input (the fuzz tests'): it describes its inputs by
    size and returns `note` as given, never the secret `api_key` itself."""
    return {
        "name_length": len(name),
        "key_length": len(api_key),
        "times": times,
        "tags": len(tags or []),
        "note": note,
    }


@flow
def big_output(mib: int = 32, seed: int = 0, sleep_s: float = 0.0) -> dict:
    """Writes `mib` MiB of seeded random bytes and returns the file as output `blob` (a large
    file output: the data-store outage tests map it to S3, uploaded in parts), with its size
    and sha256 as endpoint outputs so a test can check what was stored."""
    import hashlib
    import random

    time.sleep(sleep_s)
    data = random.Random(seed).randbytes(mib * 1024 * 1024)
    blob = _scratch_dir("big-output-") / "blob.bin"
    blob.write_bytes(data)
    return {"blob": blob, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@flow
def soak_step(label: str, sleep_s: float = 0.2, mib: int = 0) -> dict:
    """The soak's pipeline: notes each attempt that starts in the journal file named by
    $PIPEDEPLOY_SOAK_JOURNAL (one appended line: run id, attempt, pid), sleeps, and with `mib`
    returns a file of that size as output `blob` (mapped to the data store)."""
    from prefect.runtime import flow_run

    journal = os.environ.get("PIPEDEPLOY_SOAK_JOURNAL")
    if journal:
        with open(journal, "a") as handle:
            handle.write(f"{flow_run.id} {flow_run.run_count} {os.getpid()}\n")
    time.sleep(sleep_s)
    outputs: dict = {"label": label, "attempt": flow_run.run_count}
    if mib:
        blob = _scratch_dir("soak-") / "blob.bin"
        blob.write_bytes(os.urandom(mib * 1024 * 1024))
        outputs["blob"] = blob
    return outputs
