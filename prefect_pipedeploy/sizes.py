"""RAM sizes: "512MiB" in, whole MiB out, and back into words (pure).

For: `parse_ram` (a size with its unit, refused without one: "512" could mean bytes or MiB) and
`format_mib`, used by the spec, admission, the pool cap and every message that names a size.
Not for: measuring memory (`runtimes.process`).
"""

from __future__ import annotations

import re

from prefect_pipedeploy.exceptions import SpecError

_RAM_UNITS_BYTES = {
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
}


_RAM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")


RAM_UNITS = ", ".join(_RAM_UNITS_BYTES)


def parse_ram(value: str | int | float, field: str = "ram_request") -> int:
    """Parse a RAM size like "512MiB" or "1GiB" into whole MiB (rounded up).

    A bare number is refused: "512" could mean bytes or MiB, so the unit is required.
    """
    if isinstance(value, bool) or not isinstance(value, str):
        raise SpecError(
            f"{field}: {value!r} has no unit; write it with one of {RAM_UNITS} "
            "(for example '512MiB' or '1GiB')"
        )
    match = _RAM_RE.match(value)
    units = {u.lower(): u for u in _RAM_UNITS_BYTES}
    if not match or match.group(2).lower() not in units:
        raise SpecError(
            f"{field}: {value!r} is not a RAM size with a unit; write it with one of "
            f"{RAM_UNITS} (for example '512MiB' or '1GiB')"
        )
    amount = float(match.group(1))
    unit = units[match.group(2).lower()]
    size_bytes = amount * _RAM_UNITS_BYTES[unit]
    mib = int(-(-size_bytes // 1024**2))
    if mib <= 0:
        raise SpecError(f"{field}: {value!r} is zero; ask for at least '1MiB'")
    return mib


def format_mib(mib: float) -> str:
    """The human form of a size in MiB: 512MiB, 1GiB, 1.5GiB."""
    if mib >= 1024 and mib % 1024 == 0:
        return f"{int(mib // 1024)}GiB"
    if mib >= 1024:
        return f"{mib / 1024:.1f}GiB"
    return f"{int(mib)}MiB" if float(mib).is_integer() else f"{mib:.1f}MiB"
