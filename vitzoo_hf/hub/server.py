"""HTTP plumbing of the local hub: a threaded stdlib server that routes on the raw path.

``http.server`` keeps ``self.path`` undecoded, which the Hub protocol needs: revisions and tree paths arrive as
single segments with ``%2F`` inside, so the path is split on ``/`` first and each segment is decoded afterwards.
The Hub semantics live in :mod:`vitzoo_hf.hub.api`; this module only turns sockets into :class:`Request` objects
and :class:`Response` objects back into bytes, with keep-alive hygiene (every response has a ``Content-Length``,
every request body is read in full) and file bodies streamed from disk.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from .errors import BadRequest, HubError
from .names import check_repo_part
from .wire import BodyReader, Request, Response, error_response, header_value, json_response

_SEND_BUFFER = 1 << 20


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubHTTPServer
    timeout = 300  # idle keep-alive connections are dropped after this many seconds

    def _handle(self) -> None:
        raw_path, _, raw_query = self.path.partition("?")
        length_header = self.headers.get("Content-Length")
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        try:
            length = int(length_header) if length_header else None
            if length is not None and length < 0:
                raise ValueError
        except ValueError:
            self._send(error_response(BadRequest("Invalid Content-Length header.")), close=True)
            return
        body = BodyReader(self.rfile, length, chunked)
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        try:
            if raw_path.startswith(("http://", "https://")) or not raw_path.startswith("/"):
                raise BadRequest("Request target must be an absolute path.")
            segments = [unquote(s, errors="strict") for s in raw_path.split("/")[1:]]
            if segments and segments[-1] == "" and len(segments) > 1:
                segments.pop()
            request = Request(self.command, raw_path, segments, parse_qs(raw_query, keep_blank_values=True),
                              self.headers, body, f"http://{host}")
            response = self.server.app.handle(request)
        except HubError as e:
            response = error_response(e)
        except UnicodeDecodeError:
            response = error_response(BadRequest("Path is not valid percent-encoded UTF-8."))
        except Exception:  # a bug, not a client error: report 500 and keep serving
            traceback.print_exc(file=sys.stderr)
            response = json_response({"error": "Internal server error"}, 500)
        try:
            close = not body.drain()
        except BadRequest as e:  # a body the handler did not read turned out malformed: refuse the request
            response, close = error_response(e), True
        self._send(response, close=close)

    def _send(self, response: Response, close: bool = False) -> None:
        self.send_response(response.status)
        length = response.file[2] if response.file else len(response.body)
        for k, v in response.headers.items():
            self.send_header(k, header_value(v))
        self.send_header("Content-Length", str(length))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        try:
            if response.file:
                self._send_file(*response.file)
            else:
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_file(self, path: Path, offset: int, count: int) -> None:
        """Stream a file body from disk in 1 MiB steps; memory stays flat whatever the file size.

        Measured on loopback, ``readinto`` + ``sendall`` with a 1 MiB buffer beats ``os.sendfile`` (which moves
        at most a socket buffer per call) and 64 KiB copies (``python -m http.server``).
        """
        buf = memoryview(bytearray(_SEND_BUFFER))
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            while count > 0:
                n = f.readinto(buf[: min(len(buf), count)])
                if not n:
                    raise ConnectionResetError("file shrank while being sent")
                self.connection.sendall(buf[:n])
                count -= n

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.verbose:  # the path only: queries may carry upload signatures
            sys.stderr.write(f"{self.address_string()} {format % args}\n".replace(self.path, self.path.split("?")[0]))


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: Any, verbose: bool = False) -> None:
        self.app = app
        self.verbose = verbose
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake up keep-alive handler threads so they exit instead of holding sockets open."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


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
    in the foreground (``vitzoo hub serve``). ``port=0`` picks a free port.
    """

    def __init__(self, root: str | Path, tokens: list[str], host: str = "127.0.0.1", port: int = 8470,
                 user: str = "vitzoo", allow_remote: bool = False, page_size: int = 1000,
                 verbose: bool = False, orgs: list[str] | None = None) -> None:
        from .api import HubApp
        from .storage import Store

        if not is_loopback(host) and not allow_remote:
            raise ValueError(f"refusing to bind {host}: not a loopback address (pass allow_remote=True)")
        check_repo_part(user, "user name")  # before the store is made: a bad call creates nothing
        self.store = Store(root)
        try:
            self.app = HubApp(self.store, tokens, user=user, page_size=page_size, orgs=orgs)
            self.httpd = HubHTTPServer((host, port), self.app, verbose=verbose)
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
