"""Generate the `mini` zoo on this machine and report what the training issue asks of it: wall time, best
fine-tuned validation accuracy (target >= 90 %), the AdamW-vs-SGD gap, the learning-rate effect, and the
SimCLR backbone's top-1 retrieval accuracy against chance (1 / (2B - 1)).

    python benchmarks/mini_zoo.py [--out DIR] [--blueprint mini]

An existing complete zoo in --out is reported without retraining (its wall time is then the sum of epoch times).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand, load_blueprint


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / layout.RESULT_FILE).read_text().splitlines()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="zoo directory (default: a fresh temporary one)")
    p.add_argument("--blueprint", default="mini")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="mini-zoo-"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vitzoo_hf.cli", "generate", args.blueprint, "--out", str(out)],
                   check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    bp = load_blueprint(args.blueprint)
    models = expand(bp)
    pre_seconds = fine_seconds = 0.0
    print(f"zoo {bp.name}: {len(models)} models in {out}; `vitzoo generate` wall time {wall / 60:.1f} min")
    groups: dict[tuple, list[float]] = defaultdict(list)
    best = (0.0, "")
    for m in models:
        r = rows(layout.model_dir(out, m))
        seconds = sum(x["seconds"] for x in r)
        if m.stage == "pretraining":
            pre_seconds += seconds
            curve = " ".join(f"{x['validation_accuracy']:.3f}" for x in r)
            extra = f" (chance {1 / (2 * m.batch_size - 1):.4f}, top-1 retrieval)" if m.task == "contrastive" else ""
            print(f"  {m.name}: {seconds:.0f} s of epochs; validation accuracy by epoch {curve}{extra}")
            continue
        fine_seconds += seconds
        acc = r[-1]["validation_accuracy"]
        best = max(best, (acc, m.name))
        for key in ("optimizer", "lr", "head", "task"):
            groups[(key, getattr(m, key))].append(acc)
        groups[("optimizer x lr", (m.optimizer, m.lr))].append(acc)
    print(f"  epoch time: pre-training {pre_seconds / 60:.1f} min, fine-tuning {fine_seconds / 60:.1f} min")
    print(f"  best fine-tuned: {best[0] * 100:.1f} % ({best[1]})")
    for (key, value), accs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        print(f"  {key}={value}: n={len(accs)} mean {statistics.mean(accs) * 100:.1f} % "
              f"(sd {statistics.pstdev(accs) * 100:.1f}, max {max(accs) * 100:.1f})")


if __name__ == "__main__":
    main()
