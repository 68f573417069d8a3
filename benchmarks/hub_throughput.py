"""Download throughput of a large file: ``vitzoo hub serve`` vs ``python -m http.server``, side by side.

Both servers run as subprocesses on loopback and serve the same bytes (the hub via ``/resolve``, http.server
from a directory holding a copy). Each round downloads the file once from each server, alternating which goes
first, and the best and median rates are reported. Target: hub / http.server >= 1.0.

    python benchmarks/hub_throughput.py [--size-mb 256] [--rounds 7]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sha256_of_download(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    digest = hashlib.sha256()
    while chunk := resp.read(1 << 20):
        digest.update(chunk)
    conn.close()
    return digest.hexdigest()


def _timed_download(port: int, path: str, buf: memoryview) -> tuple[float, int]:
    """Seconds to GET ``path`` in full and the byte count; no hashing, so the client is not the bottleneck."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    total = 0
    while n := resp.readinto(buf):
        total += n
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed, total


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited early")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hub_bench_"))
    procs: list[subprocess.Popen] = []
    try:
        plain_dir = work / "plain"
        plain_dir.mkdir()
        big = plain_dir / "big.bin"
        with open(big, "wb") as f:
            block = os.urandom(1 << 20)
            for i in range(args.size_mb):
                f.write(block[:-4] + i.to_bytes(4, "little"))
        expected = hashlib.sha256(big.read_bytes()).hexdigest()

        token = secrets.token_urlsafe(16)
        env = {**os.environ, "VITZOO_HUB_TOKENS": token, "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HOME": str(work / "hf_home"),
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
        hub = subprocess.Popen([sys.executable, "-m", "vitzoo_hf.hub", "serve", "--root", str(work / "hub"),
                                "--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
        procs.append(hub)
        line = hub.stdout.readline() if hub.stdout else ""
        m = re.search(r"at (http://\S+)", line)
        if not m:
            raise RuntimeError(f"hub did not start: {line!r}")
        endpoint = m.group(1)
        hub_port = int(endpoint.rsplit(":", 1)[1])
        # Upload through the real client, exactly as users do.
        upload = (
            "import sys; from vitzoo_hf.hub import configure_clients; from huggingface_hub import HfApi\n"
            "with configure_clients(sys.argv[1], sys.argv[2]):\n"
            "    api = HfApi(); api.create_repo('bench/big')\n"
            "    api.upload_file(path_or_fileobj=sys.argv[3], path_in_repo='big.bin', repo_id='bench/big')\n"
        )
        subprocess.run([sys.executable, "-c", upload, endpoint, token, str(big)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        plain_port = _free_port()
        plain = subprocess.Popen([sys.executable, "-m", "http.server", str(plain_port), "--bind", "127.0.0.1",
                                  "--directory", str(plain_dir)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        procs.append(plain)
        _wait_port(plain_port, plain)

        targets = {"vitzoo hub serve": (hub_port, "/bench/big/resolve/main/big.bin"),
                   "python -m http.server": (plain_port, "/big.bin")}
        for name, (port, path) in targets.items():  # check the bytes once; also warms the page cache
            assert _sha256_of_download(port, path) == expected, f"{name} served wrong bytes"
        buf = memoryview(bytearray(4 << 20))
        rates: dict[str, list[float]] = {name: [] for name in targets}
        for r in range(args.rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                seconds, total = _timed_download(*targets[name], buf)
                assert total == args.size_mb << 20, f"{name} sent {total} bytes"
                rates[name].append(args.size_mb / seconds)
        print(f"file: {args.size_mb} MiB, {args.rounds} rounds, loopback, {os.cpu_count()} CPUs")
        for name, values in rates.items():
            print(f"  {name:24s} best {max(values):8.0f} MiB/s   median {statistics.median(values):8.0f} MiB/s")
        hub_med = statistics.median(rates["vitzoo hub serve"])
        plain_med = statistics.median(rates["python -m http.server"])
        print(f"  ratio hub / http.server (median): {hub_med / plain_med:.2f}x "
              f"(best: {max(rates['vitzoo hub serve']) / max(rates['python -m http.server']):.2f}x)")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
