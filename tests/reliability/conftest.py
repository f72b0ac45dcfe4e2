"""The reliability tier: faults, load and hostile input against a real stack on 127.0.0.1.

Every test here names its fault, says in its docstring what the fault did before its fix, and ends
with a ledger check through the Prefect API (tests/support/ledger.py). Marked `e2e` and
`reliability` by tests/conftest.py (`-m reliability` runs this tier alone).
"""
