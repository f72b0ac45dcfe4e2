"""Sealed secret inputs: which parameter values are references to a sealed value (pure).

The sealing itself, end to end through real runs, is tests/e2e/test_sealed.py.
"""

from __future__ import annotations

import pytest

from prefect_pipedeploy.prefect_api.sealed import REFERENCE_PREFIX, sealed_key, sealed_keys

HEX = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (f"{REFERENCE_PREFIX}{HEX}", HEX),
        (f"{REFERENCE_PREFIX}", None),  # no key
        (f"{REFERENCE_PREFIX}../x", None),  # not a key we made
        ("pipedeploy-sealed", None),
        ("k-123", None),
        (5, None),
        (None, None),
        ({"path": "x"}, None),
    ],
)
def test_sealed_key(value: object, key: str | None) -> None:
    assert sealed_key(value) == key


def test_sealed_keys_of_parameters() -> None:
    assert sealed_keys({"a": f"{REFERENCE_PREFIX}{HEX}", "b": "plain", "c": 3}) == [HEX]
    assert sealed_keys(None) == []
