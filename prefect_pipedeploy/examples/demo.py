"""The demo pipelines: what `pipedeploy up --demo` and the repository's `prefect.yaml` deploy.

Each is what a team would write: a plain function or a Prefect flow whose returned dict is the
execution's outputs. Packaged with prefect-pipedeploy, so the demo works from an installed wheel.

    pipedeploy up --demo                       # deploys `score` as an elastic endpoint
    prefect --no-prompt deploy --all           # deploys `score_flow` and `counter` (prefect.yaml)
"""

from __future__ import annotations

import os
import threading
import time

from prefect import flow

_CALLS = {"count": 0}  # module state: persists between runs in a low-latency pod


def score(text: str = "prefect pipedeploy", repeat: int = 1) -> dict:
    """A plain-function pipeline: a toy "model" that scores a text."""
    words = text.split()
    return {
        "words": len(words) * repeat,
        "score": round(sum(map(len, words)) / max(len(words), 1), 3),
    }


#: `score` as a Prefect flow, for `prefect deploy` (see prefect.yaml): Prefect's CLI deploys only
#: @flow functions, while the SDK and `pipedeploy` wrap a plain function themselves.
score_flow = flow(name="score")(score)


@flow(log_prints=True)
def counter(marker: str = "x", sleep_s: float = 0.0) -> dict:
    """Counts its calls in module state, logs a marker, optionally sleeps (a sync flow): in a
    low-latency pod the count goes on from run to run."""
    _CALLS["count"] += 1
    print(f"marker={marker}")
    time.sleep(sleep_s)
    return {"count": _CALLS["count"], "pid": os.getpid(), "thread": threading.get_ident()}
