"""The socket layer of the local hub under hostile and slow clients (issue 17 items 4, 5, 7): raw sockets on
loopback, bounded in count and time. Every test here failed on the thread-per-connection ``http.server`` core."""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from hub_fixtures import REPO_ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitzoo_hf.hub.server import HubServer, Limits

TOKEN = "test-token-0123456789"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """Start in-process hubs with given limits; all are closed at teardown."""
    servers: list[HubServer] = []

    def start(**kwargs) -> HubServer:
        s = HubServer(tmp_path / f"root{len(servers)}", [TOKEN], port=0, **kwargs).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def connect(server_or_port, timeout: float = 5.0) -> socket.socket:
    port = server_or_port if isinstance(server_or_port, int) else server_or_port.port
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole response (Content-Length framed) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:n]


def closed_by_server(s: socket.socket, within: float) -> bool:
    """True if the server closes the connection within ``within`` seconds (whatever it sent first)."""
    s.settimeout(within)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def get(port: int, path: str = "/api/models", timeout: float = 5.0) -> int:
    with connect(port, timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return read_response(s)[0]


# ------------------------------------------------------------------------------------------------ item 5: latency
def test_keep_alive_requests_do_not_wait_for_delayed_acks(serve):
    """Responses written in pieces met Nagle + delayed ACK: ~40 ms per keep-alive request instead of < 1 ms."""
    server = serve()
    with httpx2.Client(base_url=server.endpoint) as client:
        client.post("/api/repos/create", json={"name": "r", "organization": "o"},
                    headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
        times = {"GET /api/models": [], "HEAD .gitattributes": []}
        for _ in range(25):
            for what, call in (("GET /api/models", lambda: client.get("/api/models")),
                               ("HEAD .gitattributes", lambda: client.head("/o/r/resolve/main/.gitattributes"))):
                t = time.perf_counter()
                assert call().status_code == 200
                times[what].append(time.perf_counter() - t)
    medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    assert all(m < 15 for m in medians.values()), medians  # 40+ ms with the delayed-ACK stall


# ---------------------------------------------------------------------------------------- item 7: strict framing
BAD_FRAMING = {
    "underscore length": b"Content-Length: 1_0\r\n",
    "signed length": b"Content-Length: +0\r\n",
    "negative length": b"Content-Length: -1\r\n",
    "hex length": b"Content-Length: 0x5\r\n",
    "list length": b"Content-Length: 5, 5\r\n",
    "two equal lengths": b"Content-Length: 0\r\nContent-Length: 0\r\n",
    "two lengths": b"Content-Length: 5\r\nContent-Length: 0\r\n",
    "chunked look-alike": b"Transfer-Encoding: xchunkedx\r\n",
    "chunked in a list": b"Transfer-Encoding: gzip, chunked\r\n",
    "two encodings": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "length and chunked": b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    "folded header": b"X-A: 1\r\n folded\r\n",
    "control byte in value": b"X-A: a\x01b\r\n",
    "space before colon": b"Content-Length : 0\r\n",
}


@pytest.mark.parametrize("framing", list(BAD_FRAMING.values()), ids=list(BAD_FRAMING))
def test_ambiguous_body_framing_is_400_and_closes(serve, framing):
    server = serve()
    with connect(server) as s:
        s.sendall(b"POST /api/validate-yaml HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  + framing + b"\r\n0\r\n\r\n")
        try:
            status, headers, body = read_response(s)
        except TimeoutError:
            pytest.fail("the server waited for a body its framing does not define")
        assert status == 400 and headers.get("connection") == "close", (status, headers)
        assert json.loads(body)["error"]
        assert closed_by_server(s, 2)
    assert get(server.port) == 200


def test_a_valid_chunked_body_still_works(serve):
    server = serve()
    with connect(server) as s:
        body = json.dumps({"name": "c", "organization": "o"}).encode()
        s.sendall(b"POST /api/repos/create HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + TOKEN.encode() + b"\r\nTransfer-Encoding: Chunked\r\n\r\n"
                  + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        assert read_response(s)[0] == 200
        s.sendall(b"GET /api/models/o/c HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # the same connection
        assert read_response(s)[0] == 200


def test_lfs_hrefs_use_the_servers_own_address_not_the_host_header(serve):
    server = serve()
    data = b"x" * 100
    with httpx2.Client(base_url=server.endpoint, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        client.post("/api/repos/create", json={"name": "r", "organization": "o"}).raise_for_status()
        r = client.post("/o/r.git/info/lfs/objects/batch", headers={"Host": "evil.example:8080"},
                        json={"operation": "upload", "transfers": ["basic"],
                              "objects": [{"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}]})
    assert r.status_code == 200, r.text
    actions = r.json()["objects"][0]["actions"]
    for action in ("upload", "verify"):
        assert actions[action]["href"].startswith(server.endpoint + "/"), actions[action]["href"]
    assert "evil" not in r.text


def test_verbose_log_of_a_malformed_request_line_is_400_and_escaped(serve, capfd):
    server = serve(verbose=True)
    with connect(server) as s:
        s.sendall(b"GET /\x1b]0;owned\x07?sig=secret HTTP/1.1 extra\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 400
    with connect(server) as s:
        s.sendall(b"\x1b[2J\r\n\r\n")
        assert read_response(s)[0] == 400
    assert get(server.port, "/api/models?sig=secret") == 200
    err = capfd.readouterr().err
    assert "\x1b" not in err and "\x07" not in err, err
    assert "\\x1b]0;owned\\x07" in err and "\\x1b[2J" in err, err
    assert "secret" not in err and "Traceback" not in err, err
    assert re.search(r'"GET /api/models \.\.\." 200', err), err


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory) -> Iterator[HubServer]:
    with HubServer(tmp_path_factory.mktemp("fuzz"), [TOKEN], port=0, limits=Limits(header_timeout=0.5)) as s:
        yield s


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.one_of(st.binary(max_size=300), st.builds(lambda m, p, v: b"%s %s HTTP/%s" % (m, p, v),
                                                        st.sampled_from([b"GET", b"POST", b"HEAD", b"G\x00T"]),
                                                        st.binary(max_size=40), st.binary(max_size=5))),
       tail=st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\nContent-Length: 2\r\n\r\n{}", b""]))
def test_arbitrary_bytes_get_an_http_answer_and_the_server_keeps_serving(fuzz_server, head, tail):
    """Whatever bytes arrive, the answer is a well-formed response (or a close) within a second, never a 500."""
    server = fuzz_server
    with connect(server, timeout=3) as s:
        s.sendall(head + tail)
        s.shutdown(socket.SHUT_WR) if not tail else None
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and b"connection: close" not in data.lower():
                    break
        except (TimeoutError, ConnectionResetError) as e:
            if isinstance(e, TimeoutError):
                pytest.fail(f"no answer within 3 s to {head + tail!r}")
    if data:
        assert re.match(rb"HTTP/1\.1 [1-5]\d\d ", data), data[:100]
        assert int(data[9:12]) < 500 or int(data[9:12]) in (503, 505), data[:300]
    assert get(server.port) == 200


# ------------------------------------------------------------------------------- item 4: concurrency, slow clients
def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_fd_exhaustion_neither_starves_nor_spins(tmp_path):
    """`ulimit -n 128` and 130 idle connections: the server keeps answering and its accept loop stays idle."""
    env = {**os.environ, "VITZOO_HUB_TOKENS": TOKEN,
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitzoo_hf.hub", "serve", "--root", str(tmp_path / "root"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)))
    idle: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(re.search(r":(\d+)\s*$", proc.stdout.readline()).group(1))
        assert get(port) == 200
        for _ in range(130):
            idle.append(connect(port))
        time.sleep(0.3)
        t = time.monotonic()
        assert get(port, timeout=5) == 200
        assert time.monotonic() - t < 2
        cpu = _cpu_seconds(proc.pid)
        time.sleep(1.5)
        assert _cpu_seconds(proc.pid) - cpu < 0.3, "the server burns CPU while connections wait"
        assert get(port) == 200
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        proc.wait(10)


def test_half_sent_heads_time_out_and_never_block_others(serve):
    server = serve(limits=Limits(header_timeout=1.0))
    slow = [connect(server) for _ in range(60)]
    for s in slow:
        s.sendall(b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    t = time.monotonic()
    assert get(server.port) == 200
    assert time.monotonic() - t < 1
    time.sleep(1.5)
    for s in slow:
        status, headers, _ = read_response(s)  # the server gave up on the head: 408, then closed
        assert status == 408 and closed_by_server(s, 1)
        s.close()


def test_idle_keep_alive_closes_on_its_own_timer_but_a_slow_body_does_not(serve):
    server = serve(limits=Limits(idle_timeout=1.0, header_timeout=1.0, body_timeout=5.0))
    with connect(server) as idle, connect(server) as uploader:
        idle.sendall(b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(idle)[0] == 200
        body = json.dumps({"name": "slow", "organization": "o"}).encode()
        uploader.sendall(b"POST /api/repos/create HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                         b"\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), len(body) // 6 + 1):  # ~2.5 s in all, longer than both other timeouts
            time.sleep(0.4)
            uploader.sendall(body[i: i + len(body) // 6 + 1])
        assert closed_by_server(idle, 0.5)  # closed after ~1 s idle, while the body was still coming
        assert read_response(uploader)[0] == 200


def test_at_the_cap_idle_connections_make_room_and_busy_ones_get_503(serve):
    server = serve(limits=Limits(max_connections=4, workers=2, body_timeout=3.0))
    idle = [connect(server) for _ in range(4)]
    time.sleep(0.2)
    assert get(server.port) == 200  # the longest-idle connection was closed to make room
    assert sum(closed_by_server(s, 0.2) for s in idle) >= 1
    for s in idle:
        s.close()
    time.sleep(0.3)
    busy = [connect(server) for _ in range(4)]  # 4 requests whose bodies never come: 2 workers, 2 queued
    for s in busy:
        s.sendall(b"POST /api/validate-yaml HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n")
    time.sleep(0.3)
    t = time.monotonic()
    with connect(server) as s:
        s.sendall(b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, body = read_response(s)
    assert time.monotonic() - t < 1
    assert status == 503 and headers.get("retry-after") == "1" and "limit" in json.loads(body)["error"]
    for s in busy:
        s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the dropped uploads free their workers and connections
        try:
            if get(server.port, timeout=1) == 200:
                break
        except (ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    else:
        pytest.fail("the server did not recover once the busy clients left")


def test_a_flood_of_connections_never_delays_a_normal_request(serve):
    """1500 connections, half idle and half with half-sent heads, on a hub capped at 1024: a normal request is
    answered at once (the longest-idle connections make room), and nothing is left spinning."""
    server = serve()
    flood = []
    try:
        for i in range(1500):
            s = connect(server)
            if i % 2:
                s.sendall(b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            flood.append(s)
        time.sleep(0.2)
        times = []
        for _ in range(5):
            t = time.monotonic()
            assert get(server.port) == 200
            times.append(time.monotonic() - t)
        assert max(times) < 1, times
        assert server.httpd._open <= server.httpd.max_connections == 1024
    finally:
        for s in flood:
            s.close()
    deadline = time.monotonic() + 5
    while server.httpd._open and time.monotonic() < deadline:  # every close is counted once: back to zero
        time.sleep(0.1)
    assert server.httpd._open == 0 and not server.httpd._waiting
