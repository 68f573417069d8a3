"""Latency of small Hub requests, keep-alive vs fresh connections, against a plain ``http.server`` baseline in the
same run; then the publish time of a zoo (default: the smoke zoo, generated into a temporary folder) to a fresh
in-process local hub, as `vitzoo demo` runs it, with the requests it sent per kind and the hub's time on each.

    python benchmarks/hub_latency.py [--zoo ZOO_DIR] [--requests 200] [--jobs 4]

Both servers run as subprocesses (the client's GIL is not theirs); the client is httpx2, the client
huggingface_hub uses. "fresh" sends ``Connection: close``, so every request opens a new TCP connection.
Targets (issue 17): keep-alive median <= fresh-connection median; the mini zoo's publish stage <= 60 s for
its 526 commits then (6 epochs). Since issue 19 mini has 25 epochs, 1,899 commits: 77-93 s in two `vitzoo demo`
runs, 41-49 ms a commit (60 ms before).
"""

from __future__ import annotations

import argparse
import collections
import inspect
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a Hub server needs
    def _answer(self):
        body = json.dumps([]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    do_GET = do_HEAD = _answer
    def log_message(self, *args):
        pass

s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"serving at http://127.0.0.1:{s.server_address[1]}", flush=True)
s.serve_forever()
"""


def start(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"{cmd[:3]} did not start")
        if m := re.search(r"at (http://\S+)", line):
            return proc, m.group(1)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1e3 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]


def latency(n: int) -> bool:
    """Every (server, connection mode) in rotation, one request each per round: a shared machine's load swings
    hit all of them alike."""
    import httpx2

    token = secrets.token_urlsafe(16)
    env = {**os.environ, "VITZOO_HUB_TOKENS": token}
    root = Path(tempfile.mkdtemp(prefix="latency-hub-"))
    hub, hub_url = start([sys.executable, "-m", "vitzoo_hf.hub", "serve", "--root", str(root / "hub"), "--port", "0"],
                         env)
    base, base_url = start([sys.executable, "-c", BASELINE], env)
    requests = [("GET", "/api/models"), ("GET", "/api/models/o/r"), ("GET", "/api/models/o/r/refs"),
                ("HEAD", "/o/r/resolve/main/.gitattributes")]
    combos = [(name, mode) for name in ("vitzoo hub", "http.server") for mode in ("keep-alive", "fresh")]
    clients = {(name, mode): httpx2.Client(base_url=hub_url if name == "vitzoo hub" else base_url,
                                           headers={"Connection": "close"} if mode == "fresh" else {})
               for name, mode in combos}
    samples: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    try:
        httpx2.post(f"{hub_url}/api/repos/create", json={"name": "r", "organization": "o"},
                    headers={"Authorization": f"Bearer {token}"}).raise_for_status()
        for method, path in requests:
            for client in clients.values():
                client.request(method, path).raise_for_status()  # warm up (a connection, for keep-alive)
            for _ in range(n):
                for combo, client in clients.items():
                    t = time.perf_counter()
                    r = client.request(method, path)
                    samples[(*combo, f"{method} {path}")].append(time.perf_counter() - t)
                    r.raise_for_status()
    finally:
        for client in clients.values():
            client.close()
        for p in (hub, base):
            p.terminate()
            p.wait(10)
    print(f"{'server':12s} {'connection':10s} {'request':40s} {'median ms':>9s} {'p99 ms':>8s}   ({n} requests each, "
          "interleaved)")
    medians: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for (name, mode, req), values in samples.items():
        med, p99 = percentiles(values)
        medians[(name, mode)].append(med)
        print(f"{name:12s} {mode:10s} {req:40s} {med:9.2f} {p99:8.2f}")
    ok = True
    for name in ("vitzoo hub", "http.server"):
        ka, fr = statistics.median(medians[(name, "keep-alive")]), statistics.median(medians[(name, "fresh")])
        print(f"{name}: keep-alive median {ka:.2f} ms vs fresh {fr:.2f} ms -> keep-alive <= fresh: "
              f"{'PASS' if ka <= fr else 'FAIL'}")
        ok &= name != "vitzoo hub" or ka <= fr
    return ok


def kind_of(segments: list[str], method: str) -> str:
    s = segments
    if s[:1] == ["_lfs"]:
        return f"{method} lfs upload"
    if s[:1] == ["api"] and len(s) > 4 and s[1] in ("models", "datasets"):
        return f"{method} {s[1]}/{{repo}}/{s[4]}"
    if s[:1] == ["api"]:
        return f"{method} api/{s[1] if len(s) > 1 else ''}{'/...' if len(s) > 2 else ''}"
    return f"{method} {{repo}}.git/.../{s[-1]}" if s else method


def publish_time(zoo: Path, jobs: int) -> float:
    """One publish of `zoo` to a fresh in-process hub (as `vitzoo demo`), with the requests it sent per kind."""
    from vitzoo_hf.hub import HubServer, configure_clients
    from vitzoo_hf.publish import publish

    root = Path(tempfile.mkdtemp(prefix="latency-pub-"))
    token = secrets.token_urlsafe(16)
    server = HubServer(root / "hub", [token], port=0).start()
    counts: collections.Counter[str] = collections.Counter()
    spent: collections.Counter[str] = collections.Counter()
    handle = server.app.handle

    def counted(req):
        t = time.perf_counter()
        try:
            return handle(req)
        finally:
            k = kind_of(req.segments, req.method)
            counts[k] += 1
            spent[k] += time.perf_counter() - t

    server.app.handle = counted
    kwargs = {"jobs": jobs} if "jobs" in inspect.signature(publish).parameters else {}
    try:
        with configure_clients(server.endpoint, token, local=True):
            import datasets  # noqa: F401 - imported by any earlier demo stage; not publishing time
            import sklearn.datasets  # noqa: F401

            t = time.perf_counter()
            report = publish(zoo, "zoo-org", endpoint=server.endpoint, progress=False, **kwargs)
            seconds = time.perf_counter() - t
    finally:
        server.close()
    repos = report.repos + 1
    print(f"publish {zoo}: {seconds:.1f} s ({seconds / repos:.2f} s per repo, {repos} repos, "
          f"{sum(counts.values())} requests = {sum(counts.values()) / repos:.1f} per repo; "
          f"{kwargs.get('jobs', 1)} repo(s) at once); hub busy {sum(spent.values()):.1f} s")
    print(f"  {report.summary()}")
    for k, v in counts.most_common():
        print(f"  {v:6d} x {k:42s} {spent[k] / v * 1e3:7.2f} ms each in the hub")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=None, help="zoo folder to publish (default: generate smoke)")
    parser.add_argument("--requests", type=int, default=200, help="requests per (server, connection, kind)")
    parser.add_argument("--jobs", type=int, default=4, help="repos published at once")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    ok = True if args.skip_latency else latency(args.requests)
    zoo = args.zoo
    if zoo is None:
        from vitzoo_hf.cli import main as cli

        zoo = Path(tempfile.mkdtemp(prefix="latency-smoke-"))
        assert cli(["generate", "smoke", "--out", str(zoo)]) == 0
    publish_time(zoo, args.jobs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
