"""What prefect-pipedeploy reads and writes in Prefect, over a client the caller passes in.

For: deployments (every page of a listing), runs (creating one on a busy server, marking one
failed), records (inputs and outputs as artifacts), sealed secret inputs, endpoint triggers,
published state (pod statuses, worker capacities, as Prefect variables) and the pool RAM cap
(a global concurrency limit). Not for: decisions (the pure modules above), processes
(`runtimes`), HTTP (`gateway`). Never imports `worker`, `sdk` or `gateway`.
"""

from __future__ import annotations
