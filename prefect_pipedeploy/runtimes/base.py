"""What a runtime is: where the process of an execution or of a pod runs.

For: the `Runtime` protocol (start a command with an environment, a working directory and a log
file) and the `RuntimeHandle` it returns (wait for the end, signal, measure memory), so that
the elastic runtime and the pod supervisor work the same whether the process is a child of the
worker (`process`) or something else. Not for: what to run (`elastic`, `low_latency`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ProcessExit:
    """How a process ended: its exit code and that code in words."""

    exit_code: int
    explanation: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class RuntimeHandle(Protocol):
    """One started process (or container) of a runtime."""

    @property
    def identifier(self) -> str:
        """What the worker records as the run's infrastructure (a pid, a container id)."""
        ...

    @property
    def pid(self) -> int | None:
        """Its process id on this machine, when it has one here."""
        ...

    async def wait(self) -> ProcessExit:
        """Wait until it has ended."""
        ...

    def signal(self, sig: int) -> None:
        """Send `sig` to it and everything it started."""
        ...

    def alive(self) -> bool:
        """Whether it still runs."""
        ...

    def rss_mib(self) -> float:
        """The resident memory it holds now, with everything it started, in MiB."""
        ...


class Runtime(Protocol):
    """Starts processes for executions and pods."""

    name: str
    #: whether a started process can inherit the worker's descriptors (a child process can, a
    #: container cannot: a pod in one talks to its worker over sockets in a mounted folder)
    shares_descriptors: bool

    async def start(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None = None,
        log_path: Path | None = None,
        pass_fds: Sequence[int] = (),
        mounts: Sequence[Path] = (),
    ) -> RuntimeHandle:
        """Start `args`; output goes to `log_path` (or the worker's own output). `pass_fds`:
        descriptors the process inherits (only a runtime with `shares_descriptors`); `mounts`:
        folders of this machine it must see at the same path (a local process sees them all)."""
        ...
