"""One NDJSON commit of many small files through the local hub, side by side with the file system's own cost.

The baseline writes the same number of small files into a fresh folder with plain ``open``/``write`` (no hub, no
fsync): the least any store of one file per blob can cost on this disk. The hub run sends one raw
``POST /api/{repo}/commit/main`` with N base64 ``file`` lines to an in-process hub, as ``upload_folder`` does for
regular files. Reported: wall and CPU seconds of each and the ratio hub / baseline (wall). Issue 17 measured
31 s for 20k files before the fix (quadratic folder check, 40k fsyncs).

    python benchmarks/hub_commit_files.py [--files 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def baseline(n: int, root: Path) -> tuple[float, float]:
    t, cpu = time.monotonic(), time.process_time()
    for i in range(n):
        d = root / f"d{i % 50}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(str(i).encode())
    return time.monotonic() - t, time.process_time() - cpu


def hub_commit(n: int, root: Path) -> tuple[float, float]:
    from huggingface_hub import HfApi

    from vitzoo_hf.hub import local_hub

    with local_hub(root) as h:
        HfApi().create_repo("bench/files")
        lines = [json.dumps({"key": "header", "value": {"summary": f"{n} files"}})]
        lines += [json.dumps({"key": "file", "value": {"path": f"d{i % 50}/f{i}.txt", "encoding": "base64",
                                                       "content": base64.b64encode(str(i).encode()).decode()}})
                  for i in range(n)]
        body = ("\n".join(lines) + "\n").encode()
        conn = http.client.HTTPConnection(h.endpoint.split("://", 1)[1], timeout=3600)
        t, cpu = time.monotonic(), time.process_time()
        conn.request("POST", "/api/models/bench/files/commit/main", body,
                     {"Authorization": f"Bearer {h.token}", "Content-Type": "application/x-ndjson"})
        resp = conn.getresponse()
        resp.read()
        wall, used = time.monotonic() - t, time.process_time() - cpu
        assert resp.status == 200, resp.status
        assert len(HfApi().list_repo_files("bench/files")) == n + 1
        return wall, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    hub, base = [], []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            base.append(baseline(args.files, Path(tmp) / "plain"))
            hub.append(hub_commit(args.files, Path(tmp) / "hub"))
        print(f"round {r + 1}: hub {hub[-1][0]:.1f} s wall / {hub[-1][1]:.1f} s CPU, "
              f"baseline {base[-1][0]:.1f} s wall / {base[-1][1]:.1f} s CPU", flush=True)
    hw, hc = statistics.median(w for w, _ in hub), statistics.median(c for _, c in hub)
    bw, bc = statistics.median(w for w, _ in base), statistics.median(c for _, c in base)
    print(f"{args.files} files, median of {args.rounds}: hub {hw:.1f} s wall ({hc:.1f} s CPU), plain file writes "
          f"{bw:.1f} s wall ({bc:.1f} s CPU); hub / baseline = {hw / bw:.1f}x wall, {hc / bc:.1f}x CPU")


if __name__ == "__main__":
    main()
