"""The pool-wide RAM cap's pure parts: does a request fit the cap, who holds a lease, the view.

The cap with real workers and servers is tests/e2e/test_poolcap.py.
"""

from __future__ import annotations

import uuid

import pytest
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse

from prefect_pipedeploy import SpecError
from prefect_pipedeploy.prefect_api.poolcap import cap_view, check_fits_cap, holder_of, limit_name


def a_cap(limit: int, held: int = 0) -> GlobalConcurrencyLimitResponse:
    return GlobalConcurrencyLimitResponse(
        id=uuid.uuid4(), name="pipedeploy-ram-p", limit=limit, active_slots=held
    )


@pytest.mark.parametrize(
    ("request_mib", "cap", "refused"),
    [
        (512, None, False),  # no cap: nothing to check
        (512, a_cap(1024), False),
        (1024, a_cap(1024), False),  # exactly the cap fits
        (1025, a_cap(1024), True),
        (4096, a_cap(1024, held=1024), True),
    ],
)
def test_check_fits_cap(
    request_mib: int, cap: GlobalConcurrencyLimitResponse | None, refused: bool
):
    if refused:
        with pytest.raises(SpecError, match=r"larger than the pool's RAM cap of 1GiB.*pipedeploy"):
            check_fits_cap(request_mib, cap, "deployment 'd'")
    else:
        check_fits_cap(request_mib, cap, "deployment 'd'")


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("pod:6f1f4b0e-1111-4c3e-9a51-0b4f3b1a2c3d", "deployment"),
        ("run:6f1f4b0e-1111-4c3e-9a51-0b4f3b1a2c3d", "flow_run"),
    ],
)
def test_lease_holder_names_the_deployment_or_the_run(key: str, kind: str) -> None:
    holder = holder_of(key)
    assert holder.type == kind
    assert str(holder.id) == key.split(":", 1)[1]


def test_cap_view_and_limit_name() -> None:
    assert limit_name("gpu-box") == "pipedeploy-ram-gpu-box"
    assert cap_view("p", None) is None
    assert cap_view("p", a_cap(2048, held=512)) == {
        "work_pool_name": "p",
        "ram_cap": "2GiB",
        "ram_cap_mib": 2048,
        "held": "512MiB",
        "held_mib": 512,
        "concurrency_limit": "pipedeploy-ram-p",
    }
