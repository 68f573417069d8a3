"""Request and response objects of the local hub, independent of the socket layer.

:class:`BodyReader` reads a request body incrementally (``Content-Length`` or chunked), so LFS uploads and NDJSON
commits stream instead of being buffered whole, and can always be drained for keep-alive.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs

from .errors import BadRequest, HubError

_DRAIN_LIMIT = 16 << 20
_JSON_LIMIT = 64 << 20
_CHUNK_LIMIT = 1 << 40  # no single chunk of a request body is larger than 1 TiB
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")  # hex digits only: int(..., 16) also takes -5, 0x10 and 1_0


class BodyReader:
    """Reads a request body framed by ``Content-Length`` or chunked encoding, never past its end."""

    def __init__(self, rfile: BinaryIO, length: int | None, chunked: bool) -> None:
        self._rfile = rfile
        self._chunked = chunked
        self._remaining = 0 if chunked else (length or 0)  # bytes left in the body or current chunk
        self._eof = not chunked and not length
        self._pending = b""
        self.malformed = False  # the body's framing is broken: the connection cannot carry another request

    def _next_chunk(self) -> None:
        line = self._rfile.readline(1024)
        digits = line.split(b";")[0].strip()
        if not _CHUNK_SIZE.fullmatch(digits) or int(digits, 16) > _CHUNK_LIMIT:
            self._eof = self.malformed = True  # nothing more can be read from this connection
            raise BadRequest("Malformed chunked request body: chunk sizes are hex digits, at most 1 TiB.")
        size = int(digits, 16)
        if size == 0:
            while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
            self._eof = True
        self._remaining = size

    def read(self, n: int = 1 << 20) -> bytes:
        if self._pending:
            out, self._pending = self._pending[:n], self._pending[n:]
            return out
        if self._eof:
            return b""
        if self._chunked and self._remaining == 0:
            self._next_chunk()
            if self._eof:
                return b""
        data = self._rfile.read(min(n, self._remaining))
        if not data:
            raise BadRequest("Request body ended early.")
        self._remaining -= len(data)
        if self._remaining == 0:
            if self._chunked:
                self._rfile.readline(16)
            else:
                self._eof = True
        return data

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        while chunk := self.read(size):
            yield chunk

    def readline(self, limit: int) -> bytes:
        """One line including its ``\\n`` (or the tail of the body); 400 if longer than ``limit``."""
        buf = b""
        while True:
            nl = buf.find(b"\n")
            if nl >= 0:
                self._pending = buf[nl + 1:] + self._pending
                return buf[: nl + 1]
            if len(buf) > limit:
                raise BadRequest(f"Request line longer than {limit} bytes.")
            chunk = self.read(1 << 16)
            if not chunk:
                return buf
            buf += chunk

    def read_all(self, limit: int = _JSON_LIMIT) -> bytes:
        parts, total = [], 0
        for chunk in self.chunks():
            total += len(chunk)
            if total > limit:
                raise BadRequest(f"Request body larger than {limit} bytes.")
            parts.append(chunk)
        return b"".join(parts)

    def drain(self, limit: int = _DRAIN_LIMIT) -> bool:
        """Discard what is left; False if more than ``limit`` bytes remained (the connection must close).

        Raises :class:`BadRequest` if the rest of the body is malformed, so the caller answers 400.
        """
        if self.malformed:
            return False
        total = 0
        try:
            for chunk in self.chunks():
                total += len(chunk)
                if total > limit:
                    return False
        except BadRequest:
            raise
        except (HubError, OSError):
            return False
        return True


@dataclass
class Request:
    method: str
    raw_path: str
    segments: list[str]  # decoded path segments
    query: dict[str, list[str]]
    headers: Any
    body: BodyReader
    base_url: str  # scheme://host[:port] exactly as the client addressed us (the Host header)
    server_url: str = ""  # the server's own address as the connection reached it: never taken from a header

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def qbool(self, name: str) -> bool:
        return (self.q(name) or "").lower() in ("1", "true", "yes")

    def qlist(self, name: str) -> list[str]:
        return self.query.get(name, []) + self.query.get(name + "[]", [])

    @property
    def token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        return value.strip() or None if scheme.lower() == "bearer" else None

    def json(self) -> Any:
        raw = self.body.read_all()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("Request body is not valid JSON.") from None

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.read_all().decode("utf-8", "replace"), keep_blank_values=True)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: tuple[Path, int, int] | None = None  # (path, offset, length) sent with sendfile instead of body


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


def header_value(value: object) -> str:
    """A header value that cannot end its line early: ASCII, with CR, LF and other controls as spaces."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", str(value).encode("ascii", "replace").decode())


def error_response(err: HubError) -> Response:
    headers = {"X-Error-Message": header_value(err.message)[:1000]}
    headers.update(err.headers)
    if err.code:
        headers["X-Error-Code"] = err.code
    return json_response({"error": err.message, **err.extra}, err.status, headers)
