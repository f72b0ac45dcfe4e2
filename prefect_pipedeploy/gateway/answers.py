"""HTTP answers of the gateway that are not results: errors, messages fit for a caller.

For: `GatewayError` (a status, a message that says what to change, extra fields), state messages
cleaned of tracebacks and paths, content negotiation of file outputs, result locations.
Not for: deciding anything about executions (`service`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote
from uuid import UUID

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse

INTERNAL_ERROR = "internal error; see the gateway log"


#: Retry-After of a 429 for too many waiting executions, and of a 503.
WAITING_RETRY_AFTER_S = 5


class GatewayError(Exception):
    """An answer other than a result: an HTTP status, a message saying what to change, and
    optional fields (the body is always {"message": ..., **fields})."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = dict(headers or {})
        self.fields = fields

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"message": self.message, **self.fields},
            status_code=self.status_code,
            headers=self.headers,
        )


_TRACEBACK_START = "Traceback (most recent call last)"


_FRAME_LINE = re.compile(r'^\s*File "[^"]*", line \d+.*$', re.MULTILINE)


_SEGMENT = r"[^\s\"'`\\/:;,()<>\[\]{}]+"


#: An absolute path (POSIX, or Windows with a drive), not part of a URL or a relative key.
_ABSOLUTE_PATH = re.compile(rf"(?<![\w.~:/\\-])(?:[A-Za-z]:)?[\\/](?:{_SEGMENT}[\\/])*({_SEGMENT})")


def public_message(text: str | None, limit: int = 2000) -> str:
    """A state message fit for a response: no traceback, no server paths (an absolute path
    keeps only its last name: "/srv/app/flows/demo.py" becomes "demo.py"; URLs and data-store
    keys stay), at most `limit` characters."""
    if not text:
        return ""
    text = text.split(_TRACEBACK_START, 1)[0]
    text = _FRAME_LINE.sub("", text)
    text = _ABSOLUTE_PATH.sub(r"\1", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def wants_json_only(accept: str | None) -> bool:
    """Whether an Accept header asks for JSON and refuses raw bytes."""
    if not accept:
        return False
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return "application/json" in kinds and not kinds & {
        "*/*",
        "application/*",
        "application/octet-stream",
    }


def execution_location(request: Request, path: str, run_id: UUID, token: str | None) -> str:
    """Where the result of an execution is long-polled (the query token is kept, if any)."""
    root = request.scope.get("root_path", "").rstrip("/")
    location = f"{root}/endpoints/{quote(path)}/executions/{run_id}"
    return location + (f"?token={quote(token, safe='')}" if token else "")


def _detail_of(response: httpx.Response) -> str:
    """What a Prefect API error answer says: its `detail`, or the messages of the validation
    errors of a 422 (`exception_detail`; never its `request_body`, which echoes the request)."""
    try:
        body = response.json()
    except Exception:
        return ""
    if not isinstance(body, dict):
        return ""
    detail = body.get("detail")
    if detail is None and isinstance(body.get("exception_detail"), list):
        messages = [
            str(error.get("msg", "")).removeprefix("Value error, ")
            for error in body["exception_detail"]
            if isinstance(error, dict)
        ]
        detail = "; ".join(message for message in messages if message)
    if detail is None:
        return ""
    return detail if isinstance(detail, str) else json.dumps(detail)[:500]


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
