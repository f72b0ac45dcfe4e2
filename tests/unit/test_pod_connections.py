"""The worker's two connections to a pod (`runtimes.pod_channel`), on real sockets: inherited
socket pairs for a process, Unix sockets in a private folder for a container; a pod that ends
before it connects; nothing left behind."""

from __future__ import annotations

import asyncio
import socket
import stat
from pathlib import Path

import pytest

from prefect_pipedeploy.engine.pod import _connect
from prefect_pipedeploy.runtimes.pod_channel import PodChannel


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


async def _exchange(control: socket.socket, beats: socket.socket, pod_side: list[socket.socket]):
    """What the pod writes on each of its ends reaches the worker's."""
    pod_side[0].sendall(b'{"event": "ready"}\n')
    pod_side[1].sendall(b".")
    reader, writer = await asyncio.open_connection(sock=control)
    beat_reader, beat_writer = await asyncio.open_connection(sock=beats)
    assert await reader.readline() == b'{"event": "ready"}\n'
    assert await beat_reader.read(1) == b"."
    writer.close()
    beat_writer.close()


@pytest.mark.anyio
async def test_a_process_inherits_a_socket_pair_for_each() -> None:
    channel = PodChannel.open(shares_descriptors=True)
    assert channel.mounts == ()
    control_fd, beats_fd = (
        int(_value(channel.args, "--control-fd")),
        int(_value(channel.args, "--heartbeat-fd")),
    )
    assert channel.pass_fds == (control_fd, beats_fd)
    # what the child would do with the descriptors it inherited (duplicated: ours close)
    pod_side = [socket.socket(fileno=socket.dup(fd)) for fd in (control_fd, beats_fd)]
    channel.started()
    never_ends: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    connected = await channel.connect(never_ends)
    assert connected is not None
    await _exchange(*connected, pod_side)
    channel.close()
    for end in pod_side:
        end.close()


@pytest.mark.anyio
async def test_a_container_connects_to_unix_sockets_in_a_private_folder_removed_at_close() -> None:
    channel = PodChannel.open(shares_descriptors=False)
    assert channel.pass_fds == ()
    (folder,) = channel.mounts
    control_path = Path(_value(channel.args, "--control-socket"))
    beats_path = Path(_value(channel.args, "--heartbeat-socket"))
    assert control_path.parent == folder and beats_path.parent == folder
    assert len(str(control_path)) < 100  # a Unix socket's path is limited to 107 bytes
    assert stat.S_IMODE(folder.stat().st_mode) == 0o711  # searchable, not listable
    channel.started()
    never_ends: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    connecting = asyncio.ensure_future(channel.connect(never_ends))
    # the pod connects to its heartbeat first, then to its control channel (engine.pod.main)
    pod_side = [await asyncio.to_thread(_connect, path) for path in (beats_path, control_path)][
        ::-1
    ]
    connected = await connecting
    assert connected is not None
    await _exchange(*connected, pod_side)
    channel.close()
    assert not folder.exists()
    for end in pod_side:
        end.close()


@pytest.mark.anyio
async def test_a_pod_that_ends_before_it_connects_gives_none() -> None:
    channel = PodChannel.open(shares_descriptors=False)
    (folder,) = channel.mounts
    ended: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    ended.set_result(1)
    assert await channel.connect(ended) is None
    channel.close()
    assert not folder.exists()


def test_the_pod_cannot_connect_to_a_folder_that_is_gone(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        _connect(tmp_path / "no-such.sock")
