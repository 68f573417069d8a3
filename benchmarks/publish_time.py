"""Publishing time of a zoo folder to a fresh local hub (`vitzoo hub serve` in a subprocess), then of the no-op
second publish, side by side in one run; also checks that publishing wrote nothing into the zoo folder.

    python benchmarks/publish_time.py /work/data/mini-zoo [--root /tmp/pubhub]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo_dir", type=Path)
    parser.add_argument("--root", type=Path, default=None, help="hub storage (default: a fresh temporary folder)")
    parser.add_argument("--namespace", default="zoo-org")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="pubhub-"))
    token = secrets.token_urlsafe(16)
    env = {**os.environ, "VITZOO_HUB_TOKENS": token, "HF_TOKEN": token}
    hub = subprocess.Popen([sys.executable, "-m", "vitzoo_hf.hub", "serve", "--root", str(root), "--port", "0"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert hub.stdout is not None
        endpoint = ""
        while not endpoint:
            line = hub.stdout.readline()
            if not line:
                raise SystemExit("the hub did not start")
            if m := re.search(r"at (http://\S+)", line):
                endpoint = m.group(1)
        before = snapshot(args.zoo_dir)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "vitzoo_hf.cli", "publish", str(args.zoo_dir),
                                   "--namespace", args.namespace, "--endpoint", endpoint, "--no-progress"],
                                  env=env, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            if proc.returncode:
                raise SystemExit(proc.stderr[-2000:])
            print(proc.stdout.strip().splitlines()[-1])
        print(f"first publish {times[0]:.1f} s; no-op second publish {times[1]:.1f} s "
              f"({times[1] / times[0]:.2f} of the first); hub storage {root}")
        print("zoo folder unchanged:", snapshot(args.zoo_dir) == before)
    finally:
        hub.terminate()
        hub.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
