"""Tables for `prefect_pipedeploy.admission`: who is admitted, why others wait, and a property test.

Pins semantics 4 of DESIGN.md at the level of the decision: never past capacity, waiting in
order with a visible reason, a request larger than the capacity refused, and every request
admitted in the end once RAM is released.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from prefect_pipedeploy.admission import (
    AdmissionDecision,
    Holding,
    Request,
    admit,
    check_fits_capacity,
    default_capacity_mib,
    held_mib,
)
from prefect_pipedeploy.exceptions import SpecError

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
GiB = 1024


def hold(key: str, mib: int) -> Holding:
    return Holding(key, mib, key)


def req(key: str, mib: int, waited_s: float = 0.0) -> Request:
    """A request labelled by its key, made `waited_s` seconds before NOW."""
    return Request(key, mib, key, NOW - timedelta(seconds=waited_s))


def admitted(decisions: list[AdmissionDecision]) -> list[str]:
    return [d.key for d in decisions if d.admitted]


# ---------------------------------------------------------------------------------------------
# admit: who is admitted
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "holdings", "requests", "expected"),
    [
        pytest.param(4 * GiB, [], [], [], id="nothing-asked"),
        pytest.param(4 * GiB, [], [req("a", 512)], ["a"], id="fits"),
        pytest.param(4 * GiB, [hold("pod:p", 3 * GiB)], [req("a", GiB)], ["a"], id="exact-fit"),
        pytest.param(4 * GiB, [], [req("a", 4 * GiB)], ["a"], id="whole-capacity"),
        pytest.param(
            4 * GiB, [hold("pod:p", 3 * GiB)], [req("a", GiB + 1)], [], id="does-not-fit-by-1"
        ),
        pytest.param(
            4 * GiB,
            [],
            [req("a", 2 * GiB), req("b", 2 * GiB), req("c", 1)],
            ["a", "b"],
            id="in-order-until-full",
        ),
        pytest.param(
            4 * GiB,
            [hold("pod:p", 2 * GiB)],
            [req("big", 3 * GiB, 5), req("s1", 512, 4), req("s2", GiB, 3), req("s3", 1024, 2)],
            ["s1", "s2"],
            id="back-fill-small-after-waiting-big",
        ),
        pytest.param(
            4 * GiB,
            [hold("pod:p", 2 * GiB)],
            [req("big", 3 * GiB, 31), req("s1", 512, 4), req("s2", GiB, 3)],
            [],
            id="starving-big-blocks-later-ones",
        ),
        pytest.param(
            4 * GiB,
            [hold("pod:p", 2 * GiB)],
            [req("big", 3 * GiB, 30), req("s1", 512, 4)],
            ["s1"],
            id="waited-exactly-the-limit-not-starving",
        ),
        pytest.param(
            4 * GiB,
            [hold("pod:p", 2 * GiB)],
            [req("s0", 512, 40), req("big", 3 * GiB, 31), req("s1", 512, 4)],
            ["s0"],
            id="earlier-ones-still-admitted-before-blocker",
        ),
        pytest.param(
            4 * GiB,
            [hold("pod:p", GiB)],
            [req("big", 3 * GiB, 99), req("s1", 512, 4)],
            ["big"],
            id="starving-request-admitted-once-it-fits",
        ),
        pytest.param(
            4 * GiB,
            [],
            [req("huge", 8 * GiB, 999), req("s1", 512)],
            ["s1"],
            id="oversize-never-admitted-never-blocks",
        ),
        pytest.param(
            4 * GiB,
            [hold("pod:p", 5 * GiB)],
            [req("a", 1), req("zero", 0)],
            ["zero"],
            id="over-committed-admits-nothing-but-zero",
        ),
        pytest.param(
            4 * GiB,
            [hold("pod:p", 2 * GiB)],
            [req("big", 3 * GiB, 31), req("zero", 0)],
            ["zero"],
            id="zero-never-waits",
        ),
    ],
)
def test_admit(
    capacity: int, holdings: list[Holding], requests: list[Request], expected: list[str]
) -> None:
    decisions = admit(capacity, holdings, requests, NOW)
    assert [d.key for d in decisions] == [r.key for r in requests]
    assert admitted(decisions) == expected
    taken = sum(r.mib for r in requests if r.key in expected)
    assert held_mib(holdings) + taken <= max(capacity, held_mib(holdings))


@pytest.mark.parametrize(
    ("starvation_s", "expected"),
    [
        pytest.param(0.0, [], id="zero-blocks-as-soon-as-it-waits"),
        pytest.param(9.5, [], id="waited-10s-over-9.5"),
        pytest.param(10.0, ["s1"], id="waited-10s-not-over-10"),
        pytest.param(float("inf"), ["s1"], id="never-blocks"),
    ],
)
def test_admit_starvation_limit(starvation_s: float, expected: list[str]) -> None:
    requests = [req("big", 3 * GiB, 10), req("s1", 512, 1)]
    decisions = admit(4 * GiB, [hold("pod:p", 2 * GiB)], requests, NOW, starvation_s)
    assert admitted(decisions) == expected


# ---------------------------------------------------------------------------------------------
# admit: the reasons
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("holdings", "requests", "reasons"),
    [
        pytest.param(
            [hold("pod:a", 2 * GiB), hold("run:b", 1536)],
            [req("run:c", 512)],
            ["admitted: 512MiB of RAM reserved, 4GiB of 4GiB now held"],
            id="admitted",
        ),
        pytest.param(
            [hold("run:b", 1536), hold("pod:a", 2 * GiB)],
            [req("run:c", GiB)],
            ["waiting for 1GiB of RAM: 3.5GiB of 4GiB held by pod:a (2GiB), run:b (1.5GiB)"],
            id="waiting-names-holders-largest-first",
        ),
        pytest.param(
            [hold("pod:a", 3 * GiB)],
            [req("run:c", 512), req("run:d", 768)],
            [
                "admitted: 512MiB of RAM reserved, 3.5GiB of 4GiB now held",
                "waiting for 768MiB of RAM: 3.5GiB of 4GiB held by pod:a (3GiB), run:c (512MiB)",
            ],
            id="admitted-earlier-in-the-walk-count-as-holders",
        ),
        pytest.param(
            [hold(f"run:{i}", 512) for i in range(7)],
            [req("run:x", GiB)],
            [
                "waiting for 1GiB of RAM: 3.5GiB of 4GiB held by run:0 (512MiB), run:1 (512MiB), "
                "run:2 (512MiB), run:3 (512MiB), run:4 (512MiB) and 2 more"
            ],
            id="many-holders-abridged",
        ),
        pytest.param(
            [hold("pod:a", 2 * GiB)],
            [req("run:big", 3 * GiB, 45), req("run:small", 512)],
            [
                "waiting for 3GiB of RAM: 2GiB of 4GiB held by pod:a (2GiB)",
                "waiting behind run:big, which has waited 45s for 3GiB of RAM and goes first",
            ],
            id="behind-a-starving-request",
        ),
        pytest.param(
            [],
            [req("run:huge", 8 * GiB)],
            [
                "can never start: it needs 8GiB of RAM and the worker's capacity is 4GiB; "
                "lower ram_request or raise --ram-capacity"
            ],
            id="oversize",
        ),
        pytest.param(
            [],
            [req("run:none", 0)],
            ["admitted: no RAM requested"],
            id="zero",
        ),
    ],
)
def test_admit_reasons(
    holdings: list[Holding], requests: list[Request], reasons: list[str]
) -> None:
    assert [d.reason for d in admit(4 * GiB, holdings, requests, NOW)] == reasons


def test_admit_reason_uses_labels() -> None:
    holdings = [Holding("pod:x", 3 * GiB, "pod of deployment 'x'")]
    requests = [Request("run:1", GiB + 512, "run 'brave-otter'", NOW - timedelta(seconds=60))]
    requests.append(Request("run:2", 256, "run 'calm-eel'", NOW))
    reasons = [d.reason for d in admit(4 * GiB, holdings, requests, NOW)]
    assert reasons == [
        "waiting for 1.5GiB of RAM: 3GiB of 4GiB held by pod of deployment 'x' (3GiB)",
        "waiting behind run 'brave-otter', which has waited 60s for 1.5GiB of RAM and goes first",
    ]


# ---------------------------------------------------------------------------------------------
# held_mib, default_capacity_mib, check_fits_capacity, models
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("holdings", "expected"),
    [
        pytest.param([], 0, id="none"),
        pytest.param([hold("pod:a", 512)], 512, id="one"),
        pytest.param(
            [hold("pod:a", 2 * GiB), hold("run:b", 1536), hold("run:c", 0)], 3584, id="some"
        ),
    ],
)
def test_held_mib(holdings: list[Holding], expected: int) -> None:
    assert held_mib(holdings) == expected


@pytest.mark.parametrize(
    ("total", "reserve", "expected"),
    [
        pytest.param(16 * GiB, 2 * GiB, 14 * GiB, id="total-minus-reserve"),
        pytest.param(4 * GiB, 0, 4 * GiB, id="no-reserve"),
        pytest.param(2 * GiB, 1792, 256, id="exactly-the-floor"),
        pytest.param(2 * GiB, 2 * GiB, 256, id="reserve-takes-all"),
        pytest.param(512, 4 * GiB, 256, id="reserve-larger-than-total"),
    ],
)
def test_default_capacity_mib(total: int, reserve: int, expected: int) -> None:
    assert default_capacity_mib(total, reserve) == expected


@pytest.mark.parametrize(
    ("request_mib", "capacity_mib"),
    [pytest.param(512, 4 * GiB, id="small"), pytest.param(4 * GiB, 4 * GiB, id="exact")],
)
def test_check_fits_capacity_accepts(request_mib: int, capacity_mib: int) -> None:
    check_fits_capacity(request_mib, capacity_mib, "deployment 'x'")


@pytest.mark.parametrize(
    ("request_mib", "capacity_mib", "message"),
    [
        pytest.param(
            8 * GiB,
            4 * GiB,
            "ram_request 8GiB of deployment 'x' is larger than the worker's RAM capacity of "
            "4GiB; lower ram_request or raise --ram-capacity",
            id="gib",
        ),
        pytest.param(
            1536,
            1024,
            "ram_request 1.5GiB of deployment 'x' is larger than the worker's RAM capacity of "
            "1GiB; lower ram_request or raise --ram-capacity",
            id="fractional-gib",
        ),
        pytest.param(
            768,
            512,
            "ram_request 768MiB of deployment 'x' is larger than the worker's RAM capacity of "
            "512MiB; lower ram_request or raise --ram-capacity",
            id="mib",
        ),
    ],
)
def test_check_fits_capacity_refuses(request_mib: int, capacity_mib: int, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        check_fits_capacity(request_mib, capacity_mib, "deployment 'x'")
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: Holding("pod:a", -1, "a"), id="holding"),
        pytest.param(lambda: Request("run:a", -1, "a", NOW), id="request"),
    ],
)
def test_negative_mib_refused(make) -> None:
    with pytest.raises(ValueError):
        make()


# ---------------------------------------------------------------------------------------------
# Property: bursts of requests and releases, replayed the way the worker applies the decisions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(200))
def test_bursts_never_exceed_capacity_and_all_are_admitted(seed: int) -> None:
    rng = random.Random(seed)
    capacity = rng.choice([512, 1024, 4 * GiB, 6 * GiB])
    starvation_s = rng.choice([0.0, 5.0, 30.0, float("inf")])
    pods = [hold(f"pod:{i}", rng.randint(1, capacity // 4)) for i in range(rng.randint(0, 2))]
    holdings: list[Holding] = list(pods)
    pending: list[Request] = []
    now = NOW
    made = 0

    def step() -> None:
        decisions = admit(capacity, holdings, pending, now, starvation_s)
        assert [d.key for d in decisions] == [r.key for r in pending]
        verdict = {d.key: d.admitted for d in decisions}
        newly = [r for r in pending if verdict[r.key]]
        assert held_mib(holdings) + sum(r.mib for r in newly) <= capacity
        for i, r in enumerate(
            pending
        ):  # nothing overtakes a starving request (0 MiB takes nothing)
            starving = (now - r.requested_at).total_seconds() > starvation_s
            if starving and not verdict[r.key]:
                assert not any(verdict[later.key] and later.mib for later in pending[i + 1 :])
        for r in newly:
            pending.remove(r)
            holdings.append(Holding(r.key, r.mib, r.label))

    for _ in range(rng.randint(5, 40)):  # bursts: requests arrive, runs finish, time passes
        for _ in range(rng.randint(0, 4)):
            made += 1
            mib = rng.randint(0, capacity - sum(p.mib for p in pods))
            pending.append(Request(f"run:{made}", mib, f"run {made}", now))
        runs = [h for h in holdings if h.key.startswith("run:")]
        for h in rng.sample(runs, rng.randint(0, len(runs))):
            holdings.remove(h)
        step()
        now += timedelta(seconds=rng.choice([0.5, 1, 5, 20]))

    for _ in range(made + 1):  # drain: runs finish one at a time, the pods stay
        if not pending:
            break
        runs = [h for h in holdings if h.key.startswith("run:")]
        if runs:
            holdings.remove(rng.choice(runs))
        step()
        now += timedelta(seconds=1)
    assert pending == [], "a request still waits with every run finished"
