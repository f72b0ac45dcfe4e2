"""How a worker reaches its pod: the control channel and the heartbeat line.

For: `PodChannel`, which gives the worker two connected sockets to a pod it starts, whatever
the runtime. A runtime whose processes inherit descriptors (`process`) gets a socket pair for
each, the pod's ends passed as `--control-fd` / `--heartbeat-fd`; one whose processes cannot (a
container) gets a Unix socket for each in a private temporary folder, mounted into the
container at the same path, which the pod connects to (`--control-socket` /
`--heartbeat-socket`), and `read_line`, the worker's read of the pod's next line. Not for: what
goes over them (`runtimes.low_latency`, `engine.pod`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_pipedeploy.aio import cancel_and_wait

#: How long a pod that cannot inherit descriptors has to connect once started (its Python
#: starts and imports prefect first); past that it is killed and re-created.
CONNECT_TIMEOUT_S = 120.0


@dataclass
class PodChannel:
    """The two connections of one pod's start, before and after the pod has them."""

    args: list[str]  # what the pod's command line says to find them
    pass_fds: tuple[int, ...] = ()
    mounts: tuple[Path, ...] = ()  # folders the pod must see at the same path
    _ours: list[socket.socket] = field(default_factory=list)  # pair ends, or listeners
    _theirs: list[socket.socket] = field(default_factory=list)
    _folder: Path | None = None

    @classmethod
    def open(cls, shares_descriptors: bool) -> PodChannel:
        if shares_descriptors:
            control, beats = socket.socketpair(), socket.socketpair()
            theirs = [control[1], beats[1]]
            return cls(
                args=[
                    "--control-fd",
                    str(theirs[0].fileno()),
                    "--heartbeat-fd",
                    str(theirs[1].fileno()),
                ],
                pass_fds=tuple(s.fileno() for s in theirs),
                _ours=[control[0], beats[0]],
                _theirs=theirs,
            )
        # a short path (a Unix socket's is limited to 107 bytes), searchable by the
        # container's user whoever it is, not listable
        folder = Path(tempfile.mkdtemp(prefix="pipedeploy-pod-"))
        folder.chmod(0o711)
        listeners = []
        try:
            for name in ("control.sock", "beats.sock"):
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listeners.append(listener)
                listener.bind(str(folder / name))
                os.chmod(folder / name, 0o666)
                listener.listen(1)
                listener.setblocking(False)
        except BaseException:
            for listener in listeners:
                listener.close()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(
            args=[
                "--control-socket",
                str(folder / "control.sock"),
                "--heartbeat-socket",
                str(folder / "beats.sock"),
            ],
            mounts=(folder,),
            _ours=listeners,
            _folder=folder,
        )

    def started(self) -> None:
        """The pod has started (or failed to): this process's copies of its ends go."""
        for theirs in self._theirs:
            theirs.close()
        self._theirs.clear()

    async def connect(
        self, ended: asyncio.Future[Any]
    ) -> tuple[socket.socket, socket.socket] | None:
        """The (control, heartbeat) connections; None when the pod ended before it connected.
        Raises TimeoutError when it did not connect within `CONNECT_TIMEOUT_S`."""
        if self._folder is None:
            control, beats = self._ours
            return control, beats
        loop = asyncio.get_running_loop()
        accepting = asyncio.gather(*(loop.sock_accept(listener) for listener in self._ours))
        done, _ = await asyncio.wait(
            {accepting, ended}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if accepting not in done:
            await cancel_and_wait(accepting)
            if ended in done:
                return None
            raise TimeoutError
        (control, _), (beats, _) = accepting.result()
        for listener in self._ours:  # one pod, one connection each
            listener.close()
        self._ours = [control, beats]
        return control, beats

    def close(self) -> None:
        """Close what is left and remove the sockets' folder (the pod is gone)."""
        self.started()
        for ours in self._ours:
            ours.close()
        self._ours.clear()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


async def read_line(reader: asyncio.StreamReader) -> bytes:
    """The pod's next line; b"" at its end. A pod that exits with a message of ours unread (it
    recycles itself right after a run: `{"op": "direct"}` may be on the way) resets the
    connection: that is its end too, not an error of the supervisor (before, it ended the
    supervisor's task, and the pod was never re-created)."""
    try:
        return await reader.readline()
    except ConnectionError:
        return b""
