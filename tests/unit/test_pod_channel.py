"""The worker's end of a pod's channel (`runtimes.pod_channel.read_line`): a pod that exits with
a message of the worker's unread resets the connection (a real Unix socket pair); that is the
pod's end, read as such, not an error. Before, the reset ended the supervisor's task and the pod
was never re-created (a queue-mode pod recycled after a Cancel, seen under load)."""

from __future__ import annotations

import asyncio
import socket

from prefect_pipedeploy.runtimes.pod_channel import read_line


def test_a_pod_gone_with_our_message_unread_reads_as_its_end() -> None:
    async def scenario() -> list[bytes]:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        writer.write(b'{"op": "direct", "open": false}\n')  # never read by the pod
        await writer.drain()
        theirs.sendall(b'{"event": "finished"}\n')
        await asyncio.sleep(0.05)
        theirs.close()
        lines = [await read_line(reader), await read_line(reader)]
        writer.close()
        return lines

    assert asyncio.run(scenario()) == [b'{"event": "finished"}\n', b""]
