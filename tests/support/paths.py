"""Where things are: the checkout and the tests' pipelines file.

For: building entrypoints (`f"{PIPELINES}:counter"`) and running scripts of the checkout.
Not for: temporary files (use pytest's tmp_path; the session's home is made in tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = Path(__file__).resolve().parent / "pipelines.py"
