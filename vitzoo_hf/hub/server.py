"""HTTP plumbing of the local hub: one selector thread for idle connections, a bounded pool of workers for requests.

Why not ``http.server``'s thread per connection: every idle keep-alive connection or half-sent request head held a
thread (and a 300 s read), nothing capped them, and once file descriptors ran out its accept loop spun. Here

* the **selector thread** owns every connection that is between requests or still sending its request head:
  they cost a file descriptor and a small buffer, no thread. It accepts, reads heads (at most ``_MAX_HEAD`` bytes,
  within ``header_timeout`` of their first byte), closes keep-alive connections idle for ``idle_timeout``, and
  caps the open connections below the descriptor limit: at the cap the longest-idle connection is closed to make
  room, and when every connection is busy the newcomer is answered ``503`` with ``Retry-After`` (so is a
  request that waited ``queue_timeout`` for a worker). When ``accept`` itself fails for lack of descriptors, a
  reserved descriptor is released to answer one ``503`` and accepting pauses briefly instead of spinning;
* a **worker** takes a connection whose request head is complete, parses it strictly (one ``Content-Length`` of
  digits, ``Transfer-Encoding`` exactly ``chunked``, no header folding, no control bytes), runs the Hub app,
  streams the body under ``body_timeout`` (a stall, or an average below ``min_body_rate`` bytes/s, ends the
  request), writes the response in one ``sendall`` (``TCP_NODELAY`` is set too: no response waits for a delayed
  ACK), and hands the connection back.

``self.path`` style raw routing is kept: revisions and tree paths arrive as single segments with ``%2F`` inside,
so the path is split on ``/`` first and each segment is decoded afterwards. The Hub semantics live in
:mod:`vitzoo_hf.hub.api`; this module only turns sockets into :class:`Request` objects and :class:`Response`
objects back into bytes, with keep-alive hygiene (every response has a ``Content-Length``, every request body is
read in full) and file bodies streamed from disk.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import http.client
import ipaddress
import os
import queue
import re
import resource
import select
import selectors
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from .errors import BadRequest, HubError
from .names import check_repo_part
from .wire import BodyReader, Request, Response, error_response, header_value, json_response

_SEND_BUFFER = 1 << 20
_MAX_HEAD = 64 << 10  # request line + headers
_MAX_HEADERS = 100
_RECV = 1 << 16
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_LINE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/(\d)\.(\d)")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls other than HTAB
_HOST = re.compile(r"(?:[A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
_DIGITS = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class Limits:
    """The server's resource bounds; the defaults suit a local hub with a handful of clients."""

    max_connections: int | None = None  # None: 1024, or fewer when RLIMIT_NOFILE is lower (see _connection_cap)
    workers: int = 16  # requests served at once; more wait in a queue
    queue_timeout: float = 10.0  # a request that waited this long for a worker is answered 503
    header_timeout: float = 10.0  # a request head must be complete this long after its first byte
    idle_timeout: float = 30.0  # a keep-alive connection with no request for this long is closed
    body_timeout: float = 60.0  # a request body or response that makes no progress for this long is dropped
    min_body_rate: float = 1024.0  # bytes/s, averaged once a body has taken longer than body_timeout
    retry_after: int = 1  # seconds, in every 503
    keepalive_linger: float = 0.05  # a worker waits this long for a keep-alive client's next request


class _BadHead(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientTimeout(HubError):
    """The client stopped sending (or receiving) mid-request; the connection is closed after the answer."""

    status = 408


class _Conn:
    __slots__ = ("sock", "peer", "local_url", "buf", "idle_since", "head_since", "queued_at", "refuse", "scanned",
                 "gone")

    def __init__(self, sock: socket.socket, peer: str, local_url: str) -> None:
        self.sock = sock
        self.peer = peer
        self.local_url = local_url  # the server's own address as this connection reached it
        self.buf = bytearray()
        self.idle_since = time.monotonic()
        self.head_since: float | None = None  # when the first byte of the pending request head arrived
        self.queued_at = 0.0
        self.refuse = False  # over the cap: answer 503 once the head is in
        self.scanned = 0  # conn.buf[:scanned] holds no end of a request head
        self.gone = False  # closed and off the selector's books


class _Reader:
    """A blocking socket read through an explicit buffer, so bytes read past one request stay with the connection.

    Socket failures surface as :class:`HubError` (408), never as ``OSError``: the app must not mistake a client
    that went away for a disk error.
    """

    def __init__(self, sock: socket.socket, buf: bytearray, limits: Limits) -> None:
        self.sock = sock
        self.buf = buf
        self.limits = limits
        self.broken = False
        self._started: float | None = None  # the first read: the app may take its time before reading a body
        self._received = 0

    def _fill(self, want: int) -> bool:
        if self._started is None:
            self._started = time.monotonic()
        elapsed = time.monotonic() - self._started
        if elapsed > self.limits.body_timeout and self._received < self.limits.min_body_rate * elapsed:
            self.broken = True
            raise ClientTimeout(f"Request body slower than {self.limits.min_body_rate:.0f} bytes/s.")
        try:
            data = self.sock.recv(min(max(want, _RECV), _SEND_BUFFER))
        except TimeoutError:
            self.broken = True
            raise ClientTimeout(f"No request data for {self.limits.body_timeout:.0f} s.") from None
        except OSError:
            self.broken = True
            raise ClientTimeout("The connection was lost while reading the request.") from None
        if not data:
            self.broken = True
            return False
        self._received += len(data)
        self.buf += data
        return True

    def read(self, n: int) -> bytes:
        while len(self.buf) < n and self._fill(n - len(self.buf)):
            pass
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def readline(self, limit: int) -> bytes:
        while True:
            nl = self.buf.find(b"\n", 0, limit)
            if nl >= 0:
                return self.read(nl + 1)
            if len(self.buf) >= limit or not self._fill(1):
                return self.read(limit)


def _head_end(buf: bytearray | bytes, start: int = 0) -> int:
    """Index just past the blank line that ends a request head (CRLF or bare LF lines), or -1; the search starts
    at ``start`` (a head arriving byte by byte is scanned once, not once per byte)."""
    i = buf.find(b"\n\r\n", start)
    j = buf.find(b"\n\n", start)
    ends = [k for k in ((i + 3) if i >= 0 else -1, (j + 2) if j >= 0 else -1) if k >= 0]
    return min(ends) if ends else -1


def _first_line(buf: bytearray | bytes) -> str:
    line = bytes(buf[:1024]).lstrip(b"\r\n").split(b"\n", 1)[0]
    return line.decode("latin-1").rstrip("\r")


def printable(text: str) -> str:
    """Text safe for a terminal: control and non-ASCII characters as ``\\xNN`` escapes."""
    return "".join(c if " " <= c < "\x7f" else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text)


def parse_head(head: bytes) -> tuple[str, str, tuple[int, int], http.client.HTTPMessage]:
    """Method, target, version and headers of a request head, or :class:`_BadHead` with the status to answer."""
    text = head.decode("latin-1").lstrip("\r\n")  # RFC 9112 2.2: ignore empty lines before the request line
    lines = text.split("\n")
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise _BadHead(400, "Empty request line.")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if not m:
        raise _BadHead(400, "Malformed request line: expected 'METHOD /path HTTP/1.1'.")
    method, target, major, minor = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
    if (major, minor) not in ((1, 0), (1, 1)):
        raise _BadHead(505, f"HTTP/{major}.{minor} is not supported: use HTTP/1.1.")
    fields = lines[1:]
    if len(fields) > _MAX_HEADERS:
        raise _BadHead(431, f"More than {_MAX_HEADERS} request headers.")
    for line in fields:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):  # also refuses obsolete line folding (a leading space)
            raise _BadHead(400, "Malformed request header line.")
        if _HEADER_VALUE_BAD.search(value):
            raise _BadHead(400, f"Control character in the {name} header.")
    headers = http.client.parse_headers(_Lines(fields))
    return method, target, (major, minor), headers


class _Lines:
    """The header lines as the file ``http.client.parse_headers`` reads them from."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = [(ln + "\r\n").encode("latin-1") for ln in lines] + [b"\r\n"]

    def readline(self, limit: int = -1) -> bytes:
        return self._lines.pop(0) if self._lines else b""


def body_framing(headers: http.client.HTTPMessage) -> tuple[int | None, bool]:
    """(Content-Length, chunked) of a request, strictly (RFC 9112 6): one length of digits only, or a
    ``Transfer-Encoding`` of exactly ``chunked``, never both."""
    lengths = headers.get_all("Content-Length") or []
    encodings = headers.get_all("Transfer-Encoding") or []
    if len(lengths) > 1:
        raise _BadHead(400, "More than one Content-Length header.")
    if encodings:
        if lengths:
            raise _BadHead(400, "Both Content-Length and Transfer-Encoding: send one of them.")
        if len(encodings) > 1 or encodings[0].strip().lower() != "chunked":
            raise _BadHead(400, "Unsupported Transfer-Encoding: only 'chunked' (alone) is accepted.")
        return None, True
    if lengths:
        value = lengths[0].strip()
        if not _DIGITS.fullmatch(value):
            raise _BadHead(400, "Invalid Content-Length header: it must be a decimal number of bytes.")
        return int(value), False
    return None, False


def _status_line(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}"


def response_head(response: Response, length: int, close: bool) -> bytes:
    lines = [_status_line(response.status), "Server: vitzoo-hub", f"Date: {formatdate(usegmt=True)}"]
    lines += [f"{k}: {header_value(v)}" for k, v in response.headers.items()]
    lines.append(f"Content-Length: {length}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _simple(status: int, message: str, retry_after: int | None = None) -> bytes:
    """A complete small error response (JSON body, Connection: close) for the selector thread to send."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    err = HubError(message, status=status, headers=headers)
    resp = error_response(err)
    return response_head(resp, len(resp.body), close=True) + resp.body


def _connection_cap(limits: Limits) -> int:
    """At most 1024 connections, and enough descriptors left for the listener, the store and every worker's
    open files: a server at its cap never meets EMFILE on its own account."""
    want = limits.max_connections if limits.max_connections is not None else 1024
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return want
    if soft == resource.RLIM_INFINITY:
        return want
    reserve = 32 + 4 * limits.workers
    return max(4, min(want, soft - reserve))


class HubHTTPServer:
    """The socket side of the hub (see the module docstring); ``app.handle(Request) -> Response``."""

    def __init__(self, address: tuple[str, int], app: Any, verbose: bool = False,
                 limits: Limits | None = None) -> None:
        self.app = app
        self.verbose = verbose
        self.limits = limits or Limits()
        self.max_connections = _connection_cap(self.limits)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(1024)
            self.socket.setblocking(False)
        except BaseException:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._reserve: int | None = self._open_reserve()
        self._waiting: dict[socket.socket, _Conn] = {}  # selector stage: idle or receiving a head
        self._all: set[socket.socket] = set()  # every open connection (busy ones too), for close_connections
        self._all_lock = threading.Lock()
        self._open = 0  # connections counted against the cap (selector thread only)
        self._refusing = 0
        self._returned: queue.SimpleQueue[tuple[_Conn, bool]] = queue.SimpleQueue()
        self._ready: collections.deque[_Conn] = collections.deque()
        self._cond = threading.Condition()
        self._idle_workers = 0
        self._workers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._paused_until = 0.0
        self._listening = False

    # ---- lifecycle -------------------------------------------------------------------------------------------

    @staticmethod
    def _open_reserve() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY)
        except OSError:
            return None

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        self._stop.clear()
        for i in range(self.limits.workers - len(self._workers)):
            t = threading.Thread(target=self._work, name=f"vitzoo-hub-worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        self._listen(True)
        next_sweep = 0.0
        try:
            while not self._stop.is_set():
                for key, _ in self._sel.select(poll_interval):
                    if key.fileobj is self.socket:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._on_readable(key.data)
                self._take_returned()
                now = time.monotonic()
                if not self._listening and now >= self._paused_until:
                    self._listen(True)
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + min(0.25, poll_interval)
        finally:
            self._listen(False)
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for conn in list(self._waiting.values()):
            self._close(conn)
        with contextlib.suppress(Exception):
            self._sel.close()
        for s in (self.socket, self._wake_r, self._wake_w):
            s.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    def close_connections(self) -> None:
        """Wake up workers blocked on a client so they exit instead of holding sockets open."""
        with self._all_lock:
            conns = list(self._all)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # the pipe is full (a wake-up is pending anyway) or closed
            pass

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _listen(self, on: bool) -> None:
        if on and not self._listening:
            self._sel.register(self.socket, selectors.EVENT_READ)
        elif not on and self._listening:
            self._sel.unregister(self.socket)
        self._listening = on

    # ---- the selector stage ----------------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._out_of_descriptors()
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            self._admit(sock, addr)

    def _out_of_descriptors(self) -> None:
        """EMFILE at accept: make room (close the longest-idle connection, or use the reserved descriptor to
        answer one 503) and stop watching the listener for a moment, so the loop never spins."""
        if not self._evict():
            if self._reserve is not None:
                os.close(self._reserve)
                self._reserve = None
                try:
                    sock, _ = self.socket.accept()
                except OSError:
                    pass
                else:
                    self._send_and_close(sock, _simple(503, "The hub is out of file descriptors; retry shortly.",
                                                       self.limits.retry_after))
                self._reserve = self._open_reserve()
            self._listen(False)
            self._paused_until = time.monotonic() + 0.1

    def _admit(self, sock: socket.socket, addr: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            local = sock.getsockname()
        except OSError:
            sock.close()
            return
        host = f"[{local[0]}]" if sock.family == socket.AF_INET6 else local[0]
        conn = _Conn(sock, str(addr[0]), f"http://{host}:{local[1]}")
        if self._open >= self.max_connections and not self._evict():
            if self._refusing >= 64:  # no more room even to answer: drop
                sock.close()
                return
            conn.refuse = True
            self._refusing += 1
        else:
            self._open += 1
        with self._all_lock:
            self._all.add(sock)
        self._waiting[sock] = conn
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _evict(self) -> bool:
        """Close the longest-idle connection of the selector stage (one with no pending bytes first)."""
        best, key = None, None
        for c in self._waiting.values():
            if c.refuse:
                continue
            k = (1 if c.buf else 0, c.head_since if c.buf else c.idle_since)
            if key is None or k < key:
                best, key = c, k
        if best is None:
            return False
        if best.buf:
            self._answer(best, _simple(503, "The hub is at its connection limit; retry shortly.",
                                       self.limits.retry_after))
        else:
            self._close(best)
        return True

    def _on_readable(self, conn: _Conn) -> None:
        if conn.gone:
            return
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        if not conn.buf:
            conn.head_since = time.monotonic()
        conn.scanned = max(0, len(conn.buf) - 2)
        conn.buf += data
        self._dispatch_if_complete(conn)

    def _dispatch_if_complete(self, conn: _Conn) -> None:
        end = _head_end(conn.buf, conn.scanned)
        if end < 0:
            if len(conn.buf) > _MAX_HEAD:
                self._answer(conn, _simple(431, f"Request head larger than {_MAX_HEAD} bytes."))
            return
        if end > _MAX_HEAD + 4:
            self._answer(conn, _simple(431, f"Request head larger than {_MAX_HEAD} bytes."))
            return
        if conn.refuse:
            self._answer(conn, _simple(503, f"The hub is at its limit of {self.max_connections} connections; "
                                       "retry shortly.", self.limits.retry_after))
            return
        with self._cond:
            if not self._idle_workers and len(self._ready) >= 4 * self.limits.workers:
                full = True
            else:
                full = False
                self._sel.unregister(conn.sock)
                del self._waiting[conn.sock]
                conn.queued_at = time.monotonic()
                self._ready.append(conn)
                self._cond.notify()
        if full:
            self._answer(conn, _simple(503, "The hub is busy; retry shortly.", self.limits.retry_after))

    def _answer(self, conn: _Conn, data: bytes) -> None:
        self._log(conn.peer, _first_line(conn.buf), int(data[9:12]))
        self._forget(conn)
        self._send_and_close(conn.sock, data)

    @staticmethod
    def _send_and_close(sock: socket.socket, data: bytes) -> None:
        """A small answer from the selector thread: fits the socket buffer, so a non-blocking send suffices."""
        try:
            sock.setblocking(False)
            sock.send(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()

    def _close(self, conn: _Conn) -> None:
        self._forget(conn)
        try:
            conn.sock.close()
        except OSError:
            pass

    def _forget(self, conn: _Conn) -> None:
        """Drop a closed connection from the selector's books (once: an evicted one may still be in this round's
        select results)."""
        if conn.gone:
            return
        conn.gone = True
        if self._waiting.pop(conn.sock, None) is not None:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        with self._all_lock:
            self._all.discard(conn.sock)
        if conn.refuse:
            self._refusing -= 1
        else:
            self._open -= 1

    def _take_returned(self) -> None:
        while True:
            try:
                conn, keep = self._returned.get_nowait()
            except queue.Empty:
                return
            if not keep or self._stop.is_set():
                conn.sock.close()  # (closed already unless kept)
                with self._all_lock:
                    self._all.discard(conn.sock)
                self._open -= 1
                continue
            conn.idle_since = time.monotonic()
            conn.head_since = conn.idle_since if conn.buf else None
            conn.scanned = 0
            try:
                conn.sock.setblocking(False)
                self._waiting[conn.sock] = conn
                self._sel.register(conn.sock, selectors.EVENT_READ, conn)
            except (OSError, ValueError):
                self._close(conn)
                continue
            self._dispatch_if_complete(conn)

    def _sweep(self, now: float) -> None:
        lim = self.limits
        for conn in list(self._waiting.values()):
            if conn.buf:
                if now - (conn.head_since or now) > lim.header_timeout:
                    self._answer(conn, _simple(408, f"Request head not complete within {lim.header_timeout:.0f} s."))
            elif now - conn.idle_since > (1.0 if conn.refuse else lim.idle_timeout):
                self._close(conn)
        with self._cond:
            late = []
            while self._ready and now - self._ready[0].queued_at > lim.queue_timeout:
                late.append(self._ready.popleft())
        for conn in late:  # neither waiting nor registered any more: _forget only updates the counts
            self._answer(conn, _simple(503, "The hub is busy; retry shortly.", lim.retry_after))

    # ---- the workers -----------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                self._idle_workers += 1
                while not self._ready and not self._stop.is_set():
                    self._cond.wait()
                self._idle_workers -= 1
                if self._stop.is_set() and not self._ready:
                    return
                conn = self._ready.popleft()
            keep = False
            try:
                keep = self._serve(conn)
            except Exception:  # a bug in this module: drop the connection, keep serving
                traceback.print_exc(file=sys.stderr)
            if not keep:
                try:
                    conn.sock.close()
                except OSError:
                    pass
            self._returned.put((conn, keep))
            self._wake()

    def _serve(self, conn: _Conn) -> bool:
        """Serve the complete request head(s) in ``conn.buf``; True if the connection stays open."""
        conn.sock.setblocking(True)
        conn.sock.settimeout(self.limits.body_timeout)
        while True:
            end = _head_end(conn.buf)
            if end < 0:
                next_head = self._linger(conn)
                if next_head is None:
                    return False
                if not next_head:
                    return True
                continue
            head = bytes(conn.buf[:end])
            del conn.buf[:end]
            if not self._one_request(conn, head):
                return False

    def _linger(self, conn: _Conn) -> bool | None:
        """Wait ``keepalive_linger`` seconds on this worker for the next request head (a client sending requests one
        after another sends it within a millisecond): that saves two thread hand-offs per request, which cost
        milliseconds on a loaded machine. Only while no request waits for a worker. True: a whole head is in;
        False: hand the connection back to the selector; None: the client closed it."""
        deadline = time.monotonic() + self.limits.keepalive_linger
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        while _head_end(conn.buf) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or self._ready or len(conn.buf) > _MAX_HEAD or not poller.poll(left * 1000):
                return False
            try:
                data = conn.sock.recv(_RECV)
            except OSError:
                return None
            if not data:
                return None
            conn.buf += data
        return True

    def _one_request(self, conn: _Conn, head: bytes) -> bool:
        first_line = _first_line(head)
        try:
            method, target, version, headers = parse_head(head)
            length, chunked = body_framing(headers)
        except _BadHead as e:
            self._log(conn.peer, first_line, e.status)
            self._write(conn, "GET", error_response(HubError(e.message, status=e.status)), close=True)
            return False
        reader = _Reader(conn.sock, conn.buf, self.limits)
        if (headers.get("Expect") or "").strip().lower() == "100-continue" and version == (1, 1):
            try:
                conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                return False
        body = BodyReader(reader, length, chunked)
        response = self._respond(conn, method, target, headers, body)
        try:
            complete = body.drain()
        except BadRequest as e:  # a body the handler did not read turned out malformed: refuse the request
            response, complete = error_response(e), False
        connection = {t.strip().lower() for t in (headers.get("Connection") or "").split(",")}
        close = not complete or reader.broken or version != (1, 1) or "close" in connection
        self._log(conn.peer, first_line, response.status)
        return self._write(conn, method, response, close) and not close

    def _respond(self, conn: _Conn, method: str, target: str, headers: Any, body: BodyReader) -> Response:
        raw_path, _, raw_query = target.partition("?")
        host = (headers.get("Host") or "").strip()
        base_url = f"http://{host}" if _HOST.fullmatch(host) else conn.local_url
        try:
            if raw_path.startswith(("http://", "https://")) or not raw_path.startswith("/"):
                raise BadRequest("Request target must be an absolute path.")
            segments = [unquote(s, errors="strict") for s in raw_path.split("/")[1:]]
            if segments and segments[-1] == "" and len(segments) > 1:
                segments.pop()
            query = parse_qs(raw_query, keep_blank_values=True, errors="strict")
            request = Request(method, raw_path, segments, query, headers, body, base_url, conn.local_url)
            return self.app.handle(request)
        except HubError as e:
            return error_response(e)
        except UnicodeDecodeError:
            return error_response(BadRequest("Path or query is not valid percent-encoded UTF-8."))
        except Exception:  # a bug, not a client error: report 500 and keep serving
            traceback.print_exc(file=sys.stderr)
            return json_response({"error": "Internal server error"}, 500)

    def _write(self, conn: _Conn, method: str, response: Response, close: bool) -> bool:
        """The whole response; head and (the first MiB of) body in one ``sendall``. False if the client left."""
        length = response.file[2] if response.file else len(response.body)
        head = response_head(response, length, close)
        try:
            if method == "HEAD" or length == 0:
                conn.sock.sendall(head)
            elif response.file:
                self._send_file(conn.sock, head, *response.file)
            else:
                conn.sock.sendall(head + response.body)
        except OSError:  # BrokenPipe, ConnectionReset, a client that stopped reading (timeout)
            return False
        return True

    @staticmethod
    def _send_file(sock: socket.socket, head: bytes, path: Path, offset: int, count: int) -> None:
        """Stream a file body from disk in 1 MiB steps, the first step sharing a write with the head; memory
        stays flat whatever the file size.

        Measured on loopback, ``readinto`` + ``sendall`` with a 1 MiB buffer beats ``os.sendfile`` (which moves
        at most a socket buffer per call) and 64 KiB copies (``python -m http.server``).
        """
        buf = memoryview(bytearray(len(head) + _SEND_BUFFER))
        buf[: len(head)] = head
        start = len(head)
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            while count > 0:
                n = f.readinto(buf[start: start + min(_SEND_BUFFER, count)])
                if not n:
                    raise ConnectionResetError("file shrank while being sent")
                sock.sendall(buf[: start + n])
                count -= n
                start = 0

    def _log(self, peer: str, request_line: str, status: int) -> None:
        """One line per request when verbose: the path only (queries may carry upload signatures), escaped."""
        if self.verbose:
            line = request_line.split("?", 1)[0] + (" ..." if "?" in request_line else "")
            stamp = time.strftime("%d/%b/%Y %H:%M:%S")
            sys.stderr.write(f'{peer} - - [{stamp}] "{printable(line)}" {status} -\n')


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HubServer:
    """The local hub: a :class:`~vitzoo_hf.hub.storage.Store` served over HTTP.

    Use :meth:`start` for a background thread (tests, :func:`vitzoo_hf.hub.local_hub`) or :meth:`serve_forever`
    in the foreground (``vitzoo hub serve``). ``port=0`` picks a free port; ``limits`` bounds connections,
    workers and timeouts (:class:`Limits`).
    """

    def __init__(self, root: str | Path, tokens: list[str], host: str = "127.0.0.1", port: int = 8470,
                 user: str = "vitzoo", allow_remote: bool = False, page_size: int = 1000,
                 verbose: bool = False, orgs: list[str] | None = None, limits: Limits | None = None) -> None:
        from .api import HubApp
        from .storage import Store

        if not is_loopback(host) and not allow_remote:
            raise ValueError(f"refusing to bind {host}: not a loopback address (pass allow_remote=True)")
        check_repo_part(user, "user name")  # before the store is made: a bad call creates nothing
        self.store = Store(root)
        try:
            self.app = HubApp(self.store, tokens, user=user, page_size=page_size, orgs=orgs)
            self.httpd = HubHTTPServer((host, port), self.app, verbose=verbose, limits=limits)
        except BaseException:
            self.store.close()
            raise
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="vitzoo-hub", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.close_connections()
        self.httpd.server_close()
        self.store.close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
