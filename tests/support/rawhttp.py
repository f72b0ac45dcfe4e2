"""HTTP/1.1 written by hand, for what a well-behaved client will not send: a body that goes
on past what the server accepts (chunked or with a false length), a file name byte for byte.

For: the gateway's hostile-input tests, which need to see when the answer comes while the body
is still being sent. Not for: ordinary calls (httpx).
"""

from __future__ import annotations

import select
import socket
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass
class RawAnswer:
    status: int
    body: bytes
    sent: int  # body bytes that went out before the answer came


def raw_call(url: str, head: bytes, body: Iterable[bytes] = ()) -> RawAnswer:
    """Send a request's head, then its body chunk by chunk until the gateway answers (or stops
    reading); the answer, and how much of the body went out before it."""
    parsed = urllib.parse.urlsplit(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=15) as sock:
        sock.sendall(head)
        sent = 0
        for chunk in body:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(chunk)
        received = b""
        try:
            while not _complete(received):
                part = sock.recv(65536)
                if not part:
                    break
                received += part
        except (ConnectionResetError, TimeoutError):
            pass
    head_part, _, answer = received.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1]) if head_part else 0
    return RawAnswer(status, answer, sent)


def _complete(received: bytes) -> bool:
    """Whether `received` holds a whole answer: its head and Content-Length bytes of body."""
    head, found, body = received.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


def request_head(target: str, token: str, content_type: str, length: int | None) -> bytes:
    """The head of a POST to `target` (path and query) with an endpoint token; the body framed
    by its declared `length`, or chunked when None."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: EndpointToken {token}\r\nContent-Type: {content_type}\r\n"
        f"{framing}\r\n\r\n"
    ).encode()


def chunked(start: bytes, total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    """`start`, then `total` bytes of "a" in HTTP/1.1 chunks (no terminating chunk: the gateway
    must refuse the body before its end)."""
    yield b"%x\r\n%s\r\n" % (len(start), start)
    frame = b"%x\r\n%s\r\n" % (size, b"a" * size)
    for _ in range(total // size):
        yield frame


def multipart(name: str, filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart body written by hand: the file name goes out byte for byte."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: text/csv\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def text_field(name: str, value: str) -> tuple[bytes, str]:
    """A multipart body of one text field."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    return body, f"multipart/form-data; boundary={boundary}"
