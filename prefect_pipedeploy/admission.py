"""RAM bookkeeping of one worker: which pods and runs may start now without overcommitting RAM.

For: pure decisions over values. `admit` says, for each request in FIFO order, whether it fits
in what the worker's RAM capacity has left after the current holdings (live low-latency pods,
running elastic runs), and if not, why it waits, in words fit for the run's state message.
`check_fits_capacity` refuses at deployment time a request that could never fit.
Not for: measuring or limiting a process's memory (`runtimes`), reading a clock, or deciding the
order of a deployment's runs (`ordering`).

The rule: walk the requests in order and admit each that fits in the remaining capacity
(capacity minus what is held minus what was admitted earlier in the same walk); a request that
does not fit waits, and smaller ones after it may still be admitted (back-fill). So that a large
request is not overtaken forever, once a waiting request has waited longer than `starvation_s`
it blocks the walk: no request after it is admitted until it has been. A request larger than the
whole capacity never blocks anything; it is never admitted and says so. A request of 0 MiB takes
nothing from anyone and is always admitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from prefect_pipedeploy.exceptions import SpecError
from prefect_pipedeploy.sizes import format_mib

#: The least capacity `default_capacity_mib` gives, whatever the reserve.
MIN_CAPACITY_MIB = 256
#: How long a waiting request may be overtaken by smaller ones; after that it goes first.
STARVATION_S = 30.0
#: How many holders a waiting reason names before it says "and N more".
_HOLDERS_NAMED = 5


@dataclass(frozen=True)
class Holding:
    """RAM reserved by something alive on the worker.

    `key` identifies it ("pod:<deployment>" or "run:<flow_run_id>"); `label` is its human name
    in messages.
    """

    key: str
    mib: int
    label: str

    def __post_init__(self) -> None:
        if self.mib < 0:
            raise ValueError(f"{self.key}: mib must not be negative, got {self.mib}")


@dataclass(frozen=True)
class Request:
    """RAM asked for by a pod or run that wants to start, and since when it has been asking."""

    key: str
    mib: int
    label: str
    requested_at: datetime

    def __post_init__(self) -> None:
        if self.mib < 0:
            raise ValueError(f"{self.key}: mib must not be negative, got {self.mib}")


@dataclass(frozen=True)
class AdmissionDecision:
    """Whether the request `key` may start now; `reason` says why, or why it waits."""

    key: str
    admitted: bool
    reason: str


def held_mib(holdings: Sequence[Holding]) -> int:
    """The RAM held in all, in MiB."""
    return sum(holding.mib for holding in holdings)


def default_capacity_mib(total_mib: int, reserve_mib: int) -> int:
    """The worker's RAM capacity when none is given: the machine's RAM minus a reserve.

    Never less than 256 MiB, so a small machine can still run small pipelines.
    """
    return max(MIN_CAPACITY_MIB, total_mib - reserve_mib)


def check_fits_capacity(request_mib: int, capacity_mib: int, what: str) -> None:
    """Refuse a RAM request larger than the whole capacity; it would wait forever.

    `what` names the owner of the request, e.g. "deployment 'x'".
    """
    if request_mib > capacity_mib:
        raise SpecError(
            f"ram_request {format_mib(request_mib)} of {what} is larger than the worker's RAM "
            f"capacity of {format_mib(capacity_mib)}; lower ram_request or raise --ram-capacity"
        )


def admit(
    capacity_mib: int,
    holdings: Sequence[Holding],
    requests: Sequence[Request],
    now: datetime,
    starvation_s: float = STARVATION_S,
) -> list[AdmissionDecision]:
    """A decision for every request, in the order given (the caller gives them FIFO).

    The admitted requests together with `holdings` never exceed `capacity_mib`. See the module
    docstring for the rule.
    """
    holders = list(holdings)
    remaining = capacity_mib - held_mib(holders)
    blocker: Request | None = None
    decisions: list[AdmissionDecision] = []
    for request in requests:
        if request.mib > capacity_mib:
            reason = (
                f"can never start: it needs {format_mib(request.mib)} of RAM and the worker's "
                f"capacity is {format_mib(capacity_mib)}; lower ram_request or raise --ram-capacity"
            )
            decisions.append(AdmissionDecision(request.key, False, reason))
        elif request.mib == 0:
            decisions.append(AdmissionDecision(request.key, True, "admitted: no RAM requested"))
        elif blocker is not None:
            decisions.append(AdmissionDecision(request.key, False, behind(blocker, now)))
        elif request.mib <= remaining:
            remaining -= request.mib
            holders.append(Holding(request.key, request.mib, request.label))
            reason = (
                f"admitted: {format_mib(request.mib)} of RAM reserved, "
                f"{format_mib(capacity_mib - remaining)} of {format_mib(capacity_mib)} now held"
            )
            decisions.append(AdmissionDecision(request.key, True, reason))
        else:
            reason = _waiting(request, capacity_mib, holders)
            decisions.append(AdmissionDecision(request.key, False, reason))
            if starving(request, now, starvation_s):
                blocker = request
    return decisions


def _waited_s(request: Request, now: datetime) -> float:
    return (now - request.requested_at).total_seconds()


def starving(request: Request, now: datetime, starvation_s: float = STARVATION_S) -> bool:
    """Whether `request` has waited long enough that nothing after it may overtake it."""
    return _waited_s(request, now) > starvation_s


def _waiting(request: Request, capacity_mib: int, holders: list[Holding]) -> str:
    """Why a request waits: how much it needs, how much is held, and by whom (largest first)."""
    named = sorted((h for h in holders if h.mib > 0), key=lambda h: h.mib, reverse=True)
    by = ", ".join(f"{h.label} ({format_mib(h.mib)})" for h in named[:_HOLDERS_NAMED])
    if len(named) > _HOLDERS_NAMED:
        by += f" and {len(named) - _HOLDERS_NAMED} more"
    held = f"{format_mib(held_mib(holders))} of {format_mib(capacity_mib)} held"
    return f"waiting for {format_mib(request.mib)} of RAM: {held}" + (f" by {by}" if by else "")


def behind(blocker: Request, now: datetime, of: str = "RAM") -> str:
    """Why a request waits behind a starving one, even though it might fit (`of`: what the
    blocker waits for)."""
    return (
        f"waiting behind {blocker.label}, which has waited {_waited_s(blocker, now):.0f}s "
        f"for {format_mib(blocker.mib)} of {of} and goes first"
    )


class RamLedger:
    """What one worker holds right now: the only mutable part of admission.

    `decide` walks the requests against the current holdings (see `admit`) and records each
    admitted one as held at once, so two callers in the same event loop cannot overcommit.
    """

    def __init__(self, capacity_mib: int) -> None:
        self.capacity_mib = capacity_mib
        self.holdings: dict[str, Holding] = {}

    @property
    def held(self) -> int:
        return held_mib(list(self.holdings.values()))

    def decide(self, requests: Sequence[Request], now: datetime) -> list[AdmissionDecision]:
        decisions = admit(self.capacity_mib, list(self.holdings.values()), requests, now)
        by_key = {request.key: request for request in requests}
        for decision in decisions:
            if decision.admitted:
                request = by_key[decision.key]
                self.holdings[request.key] = Holding(request.key, request.mib, request.label)
        return decisions

    def hold(self, holding: Holding) -> None:
        """Count something already running (e.g. adopted from a worker that died), whether or
        not it fits: it holds that RAM, admitted or not."""
        self.holdings[holding.key] = holding

    def release(self, key: str) -> None:
        self.holdings.pop(key, None)


def pod_key(deployment_id: UUID) -> str:
    """The holding key of a deployment's pod: `pod:<deployment id>`."""
    return f"pod:{deployment_id}"


def run_key(flow_run_id: UUID) -> str:
    """The holding key of an elastic run: `run:<flow run id>`."""
    return f"run:{flow_run_id}"
