"""Request bodies of endpoint calls, read as they stream within the gateway's limits.

For: the fields of a body (JSON; multipart/form-data through Starlette's parser on
python-multipart, file parts spooled to temporary files; a urlencoded form through
python-multipart), refused with 413 past the limits on the body's size or one field's size and
with 400 past the limits on fields and files, or when it is not well formed; `UploadedFile`.
Not for: checking the fields against an endpoint (`inputs`) or storing uploads (`service`).
"""

from __future__ import annotations

import email.message
import email.utils
import io
import json
import math
import sys
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote_plus

from fastapi import Request
from prefect.settings import get_current_settings
from python_multipart import QuerystringParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from prefect_pipedeploy.gateway.answers import GatewayError
from prefect_pipedeploy.prefect_api.runs import HYDRATED
from prefect_pipedeploy.settings import PipeDeploySettings, get_settings

if TYPE_CHECKING:
    from python_multipart.multipart import QuerystringCallbacks


@dataclass(frozen=True)
class UploadedFile:
    """A file part of a multipart body. Its content is bytes, or the temporary file Starlette
    spooled it to (in memory up to 1 MiB, then on disk), which `close` deletes."""

    filename: str
    content_type: str
    content: bytes | BinaryIO = field(repr=False)

    @property
    def size(self) -> int:
        if isinstance(self.content, bytes):
            return len(self.content)
        position = self.content.tell()
        size = self.content.seek(0, io.SEEK_END)
        self.content.seek(position)
        return size

    def stream(self) -> BinaryIO:
        """The content as a binary file, at its start."""
        if isinstance(self.content, bytes):
            return io.BytesIO(self.content)
        self.content.seek(0)
        return self.content

    def read(self) -> bytes:
        """The whole content (in memory: for small files and tests)."""
        return self.stream().read()

    def close(self) -> None:
        if not isinstance(self.content, bytes):
            self.content.close()


def json_type(value: Any) -> str:
    """The JSON type name of a value: string, number, boolean, array, object, null (or file)."""
    if isinstance(value, UploadedFile):
        return "a file"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def refuse_json_constant(name: str) -> Any:
    """`parse_constant` of `json.loads`: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not a JSON number")


#: How deep a value of a body may nest (arrays and objects); deeper is refused with 400.
MAX_DEPTH = 100


_LARGEST_DOUBLE = sys.float_info.max


def _where(path: tuple[str | int, ...]) -> str:
    """`('a', 0, 'b')` -> "'a'[0]['b']", for messages."""
    head, *rest = path
    return repr(head) + "".join(f"[{step!r}]" for step in rest)


def _text_problem(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"holds the lone surrogate {text[exc.start]!r} (at character {exc.start}), which is"
            " not Unicode text; send the text as UTF-8, with surrogate pairs joined"
        )
    return None


def json_value_problem(value: Any) -> tuple[tuple[str | int, ...], str] | None:
    """The first part of a parsed JSON value that is no value an execution can take, and why:
    nested deeper than `MAX_DEPTH`, a string (or an object key) with a lone surrogate (Prefect
    cannot encode it), a number beyond a 64-bit float (`1e400` parses as infinity, a 400-digit
    integer fits no pipeline's float), an object Prefect's server would hydrate (a key
    `__prefect_kind`, `runs.HYDRATED`). None when it is fine. Iterative: any depth is safe."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if len(path) > MAX_DEPTH:
            return path, (
                f"is nested deeper than {MAX_DEPTH} levels of arrays and objects; send "
                "flatter data, or pass it as a file"
            )
        problem: str | None = None
        if isinstance(item, str):
            problem = _text_problem(item)
        elif isinstance(item, float) and not math.isfinite(item):
            problem = (
                "holds a number too large for a 64-bit float (such as 1e400); numbers must lie"
                " within ±1.8e308"
            )
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > _LARGEST_DOUBLE:
            problem = (
                f"holds an integer of {len(str(abs(item)))} digits, too large for a 64-bit float;"
                " numbers must lie within ±1.8e308 (send larger integers as strings)"
            )
        elif isinstance(item, dict):
            for key, child in item.items():
                key_problem = _text_problem(key)
                if key_problem:
                    return path, f"has a key that {key_problem}"
                if key == HYDRATED:
                    return path, (
                        f"has an object with the key {HYDRATED!r}, which Prefect reserves: its "
                        "server would replace the object (with a workspace variable's value, a "
                        "rendered template) before the pipeline saw it; rename the key"
                    )
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            stack.extend((child, (*path, index)) for index, child in enumerate(item))
        if problem:
            return path, problem
    return None


def refuse_unusable_json(data: dict[str, Any]) -> None:
    """400 naming the input whose value `json_value_problem` finds unusable (the key itself
    when it is the problem)."""
    found = json_value_problem(data)
    if found is None:
        return
    path, problem = found
    if not path:  # a key of the body itself
        raise GatewayError(400, f"the body {problem}")
    field_name = str(path[0])
    shown = _where(path) if len(path) <= 6 else _where(path[:6]) + "..."
    where = "" if len(path) == 1 else f" (at {shown})"
    message = f"input {_where(path[:1])}{where} {problem}"
    raise GatewayError(
        400,
        f"the inputs are invalid: {message}",
        errors=[{"field": field_name, "message": f"{problem}{where}"}],
    )


def _setting(name: str) -> str:
    """The environment variable of a setting, for messages that tell an operator what to raise."""
    prefix = PipeDeploySettings.model_config.get("env_prefix") or "PREFECT_INTEGRATIONS_PIPEDEPLOY_"
    return f"{prefix}{name}".upper()


def format_bytes(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"


def inputs_limit() -> str:
    """The limit on an execution's inputs other than files, in words (it is below the body's)."""
    limit = get_current_settings().server.api.max_parameter_size
    if limit <= 0:
        return "inputs other than files have no limit of their own"
    return (
        f"inputs other than files may take at most {format_bytes(limit)} once encoded as "
        "JSON, what the Prefect server stores for one execution "
        "(PREFECT_SERVER_API_MAX_PARAMETER_SIZE)"
    )


@dataclass(frozen=True)
class BodyLimits:
    """How much of a request body the gateway reads; past a limit it answers 413 (a size) or
    400 (a count), naming the setting."""

    body_bytes: int
    """The whole body (`gateway_max_body_bytes`), declared in Content-Length or streamed."""
    fields: int
    """Text fields of a form, or keys of a JSON object (`gateway_max_fields`)."""
    files: int
    """File parts of a multipart body (`gateway_max_files`)."""
    part_bytes: int
    """One text field of a form, held in memory (`gateway_max_part_bytes`); file parts are
    spooled to temporary files and bounded by `body_bytes` only."""

    @classmethod
    def from_settings(cls) -> BodyLimits:
        settings = get_settings()
        return cls(
            body_bytes=settings.gateway_max_body_bytes,
            fields=settings.gateway_max_fields,
            files=settings.gateway_max_files,
            part_bytes=settings.gateway_max_part_bytes,
        )

    def body_too_large(self) -> GatewayError:
        return GatewayError(
            413,
            f"the body is larger than this gateway's limit of {format_bytes(self.body_bytes)} "
            f"({_setting('gateway_max_body_bytes')}), files included; {inputs_limit()}; send "
            "less, or ask the gateway's operator to raise the limit",
        )

    def too_many_fields(self) -> GatewayError:
        return GatewayError(
            400,
            f"the body has more than {self.fields} fields, this gateway's limit "
            f"({_setting('gateway_max_fields')}); send only the endpoint's inputs",
        )

    def too_many_files(self) -> GatewayError:
        return GatewayError(
            400,
            f"the body has more than {self.files} file parts, this gateway's limit "
            f"({_setting('gateway_max_files')}); send one file part per file input",
        )

    def part_too_large(self, name: str) -> GatewayError:
        return GatewayError(
            413,
            f"form field {name!r} is larger than this gateway's limit of "
            f"{format_bytes(self.part_bytes)} for one text field "
            f"({_setting('gateway_max_part_bytes')}); send large values in a JSON body "
            "(application/json), or ask the gateway's operator to raise the limit",
        )


def close_files(items: Sequence[tuple[str, Any]]) -> None:
    """Close the uploaded files among a body's fields: their temporary files are deleted."""
    for _, value in items:
        if isinstance(value, UploadedFile):
            value.close()


async def _within(body: AsyncIterable[bytes], limits: BodyLimits) -> AsyncGenerator[bytes, None]:
    """The chunks of a body, refused with 413 as soon as they add up to more than the limit."""
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > limits.body_bytes:
            raise limits.body_too_large()
        if chunk:
            yield chunk


def _header_param(value: str, header: str, param: str) -> str | None:
    """A parameter of a header value, quoted or not, RFC 2231 (`filename*=UTF-8''...`) too."""
    message = email.message.Message()
    message[header] = value
    found = message.get_param(param, header=header)
    if isinstance(found, tuple):  # RFC 2231 (charset, language, value)
        found = email.utils.collapse_rfc2231_value(found)
    return str(found) if found is not None else None


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _MultiPartParser(MultiPartParser):
    """Starlette's multipart parser (python-multipart underneath; file parts spooled to
    temporary files, closed if parsing fails) with the gateway's limits and messages, field and
    file names read by the e-mail parser (so RFC 2231 names work), and a check that the body
    ends with its closing boundary, which python-multipart does not make.

    Relies on Starlette's callback methods and its `_current_part` and `_charset` (checked
    against Starlette 1.10; the tests of multipart bodies pin what they give)."""

    def __init__(self, content_type: str, chunks: AsyncGenerator[bytes, None], limits: BodyLimits):
        super().__init__(
            Headers({"content-type": content_type}),
            chunks,
            max_files=limits.files,
            max_fields=limits.fields,
        )
        self.max_part_size = limits.part_bytes  # not a constructor argument in Starlette 0.40
        self.limits = limits
        self.fields = 0
        self.files = 0
        self.parts = 0
        self.ended = False
        self.spooled: list[UploadFile] = []

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self.parts += 1

    def on_headers_finished(self) -> None:
        part = self._current_part
        charset = self._charset or "utf-8"
        disposition = (part.content_disposition or b"").decode(charset, "replace")
        name = _header_param(disposition, "content-disposition", "name")
        if not name:
            raise GatewayError(
                400,
                "a part of the multipart/form-data body has no field name; give each part a "
                "header 'Content-Disposition: form-data; name=\"<input>\"'",
            )
        filename = _header_param(disposition, "content-disposition", "filename")
        if filename is None:
            self.fields += 1
            if self.fields > self.limits.fields:
                raise self.limits.too_many_fields()
            plain = f"form-data; name={_quoted(name)}"
        else:
            self.files += 1
            if self.files > self.limits.files:
                raise self.limits.too_many_files()
            plain = f"form-data; name={_quoted(name)}; filename={_quoted(filename)}"
        part.content_disposition = plain.encode(charset, "replace")  # what Starlette reads
        super().on_headers_finished()
        if part.file is not None:
            self.spooled.append(part.file)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is None and len(part.data) + (end - start) > self.limits.part_bytes:
            raise self.limits.part_too_large(part.field_name)
        super().on_part_data(data, start, end)

    def on_end(self) -> None:
        super().on_end()
        self.ended = True

    def close(self) -> None:
        for upload in self.spooled:
            upload.file.close()


def _uploaded(upload: UploadFile) -> UploadedFile:
    return UploadedFile(
        filename=upload.filename or "",
        content_type=upload.content_type or "application/octet-stream",
        content=upload.file,
    )


async def _parse_multipart(
    content_type: str, chunks: AsyncGenerator[bytes, None], limits: BodyLimits
) -> list[tuple[str, str | UploadedFile]]:
    _, params = parse_options_header(content_type)
    if not params.get(b"boundary"):
        raise GatewayError(400, "the multipart/form-data body has no boundary in its Content-Type")
    parser = _MultiPartParser(content_type, chunks, limits)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise GatewayError(
            400,
            f"the multipart/form-data body is not well formed{cause}: each part starts with "
            "'--<boundary>', then its headers, a blank line and its content",
        ) from None
    if not parser.ended:
        parser.close()
        if not parser.parts:
            raise GatewayError(400, "the multipart/form-data body has no parts")
        raise GatewayError(
            400, "the multipart/form-data body is cut short: it has no closing boundary"
        )
    return [
        (name, _uploaded(value) if isinstance(value, UploadFile) else value)
        for name, value in form.multi_items()
    ]


def json_as_form() -> GatewayError:
    """A urlencoded body that starts with `{` or `[` (a form encodes them): JSON sent with
    the wrong Content-Type; its text is not echoed back as a field name (it may hold secrets)."""
    return GatewayError(
        400,
        "the body looks like JSON but its Content-Type is application/x-www-form-urlencoded "
        "(what `curl -d` sends unless told otherwise); send it with the header "
        "'Content-Type: application/json'",
    )


class _UrlencodedFields:
    """The fields of an application/x-www-form-urlencoded body through python-multipart's
    streaming parser, decoded as UTF-8 as `urllib.parse.parse_qsl` does (Starlette's
    `FormParser` reads bytes that are not percent-encoded as latin-1)."""

    def __init__(self, limits: BodyLimits) -> None:
        self.limits = limits
        self.items: list[tuple[str, str]] = []
        self.name = bytearray()
        self.value = bytearray()

    def on_field_start(self) -> None:
        self.name, self.value = bytearray(), bytearray()

    def _grow(self, target: bytearray, data: bytes) -> None:
        target += data
        if len(self.name) + len(self.value) > self.limits.part_bytes:
            raise self.limits.part_too_large(self._text(self.name))

    def on_field_name(self, data: bytes, start: int, end: int) -> None:
        self._grow(self.name, data[start:end])

    def on_field_data(self, data: bytes, start: int, end: int) -> None:
        self._grow(self.value, data[start:end])

    def on_field_end(self) -> None:
        if len(self.items) >= self.limits.fields:
            raise self.limits.too_many_fields()
        self.items.append((self._text(self.name), self._text(self.value)))

    @staticmethod
    def _text(raw: bytearray) -> str:
        return unquote_plus(raw.decode("utf-8", "replace"))

    async def parse(self, chunks: AsyncIterator[bytes]) -> list[tuple[str, str]]:
        callbacks: QuerystringCallbacks = {
            "on_field_start": self.on_field_start,
            "on_field_name": self.on_field_name,
            "on_field_data": self.on_field_data,
            "on_field_end": self.on_field_end,
        }
        parser = QuerystringParser(callbacks)
        started = False
        try:
            async for chunk in chunks:
                if not started and chunk.strip():
                    started = True
                    if chunk.lstrip()[:1] in (b"{", b"["):  # a form would encode them
                        raise json_as_form()
                parser.write(chunk)
            parser.finalize()
        except FormParserError as exc:
            raise GatewayError(400, f"the urlencoded form body is not well formed: {exc}") from None
        return self.items


async def _one_chunk(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def parse_body(
    content_type: str | None,
    body: bytes | AsyncIterable[bytes],
    limits: BodyLimits | None = None,
) -> tuple[list[tuple[str, Any]], bool]:
    """The fields of a request body, and whether they came from a form (text values and
    `UploadedFile`s; the caller closes those with `close_files`).

    The body is read as it streams, within `limits` (the settings' by default): 413 past a size,
    400 past a count or for a body that is not well formed, 415 for another content type.
    """
    limits = limits or BodyLimits.from_settings()
    chunks = _within(_one_chunk(body) if isinstance(body, bytes) else body, limits)
    media = (content_type or "").split(";")[0].strip().lower()
    if media in ("", "application/json") or media.endswith("+json"):
        raw = b"".join([chunk async for chunk in chunks])
        if not raw.strip():
            return [], False
        try:
            data = json.loads(raw, parse_constant=refuse_json_constant)
        except UnicodeDecodeError:
            raise GatewayError(400, "the body is not UTF-8 JSON") from None
        except RecursionError:
            raise GatewayError(
                400,
                f"the body is nested deeper than {MAX_DEPTH} levels of arrays and objects; "
                "send a JSON object of the inputs with flatter values",
            ) from None
        except ValueError as exc:
            raise GatewayError(
                400, f"the body is not valid JSON ({exc}); send a JSON object of the inputs"
            ) from None
        if not isinstance(data, dict):
            raise GatewayError(
                400, f"the body must be a JSON object of the inputs, not {json_type(data)}"
            )
        if len(data) > limits.fields:
            raise limits.too_many_fields()
        refuse_unusable_json(data)
        return list(data.items()), False
    if media == "multipart/form-data":
        return list(await _parse_multipart(content_type or "", chunks, limits)), True
    if media == "application/x-www-form-urlencoded":
        return list(await _UrlencodedFields(limits).parse(chunks)), True
    raise GatewayError(
        415,
        f"content type {media!r} is not accepted; send application/json, or "
        "multipart/form-data when the endpoint takes a file",
    )


async def read_body(request: Request) -> tuple[list[tuple[str, Any]], bool]:
    """The fields of a request's body (see `parse_body`), read within the settings' limits: a
    body that declares a Content-Length over the limit is refused before it is read, a chunked
    one as soon as it goes over."""
    limits = BodyLimits.from_settings()
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limits.body_bytes:
        raise limits.body_too_large()
    return await parse_body(request.headers.get("content-type"), request.stream(), limits)


#: The header the reference platform's client (`craft-ai-sdk`) sends with every request.
PLATFORM_CLIENT_HEADER = "craft-ai-client"


def from_platform_client(request: Request) -> bool:
    """Whether a request comes from the reference platform's client (`gateway.platform`)."""
    return PLATFORM_CLIENT_HEADER in request.headers


def json_string_fields(items: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A form's text fields that are JSON strings ('"hello"'), decoded; every other field as
    it is (numbers, objects and files are read as before). The platform's client JSON-encodes
    every non-file value of a multipart body, strings included: only its forms get this."""
    decoded = []
    for name, value in items:
        if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                text = json.loads(value)
            except ValueError:
                text = value
            value = text if isinstance(text, str) else value
        decoded.append((name, value))
    return decoded
