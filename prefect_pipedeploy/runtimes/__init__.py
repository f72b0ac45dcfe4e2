"""Runtimes: how the worker starts, limits, watches and stops the process of an execution or pod.

For: the process runtime (a fresh Python process) and, later, the Docker runtime.
Not for: deciding what runs (the worker) or running the flow (`engine`).
"""
