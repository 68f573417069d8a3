"""`vitzoo generate --jobs 2` vs `--jobs 1` on the same models, side by side in one run: wall time of each, their
ratio (target <= 0.65 on a 2-core machine), and whether both produce the same weights (bitwise, else the largest
difference).

    python benchmarks/jobs.py [--blueprint mini] [--children 24] [--only NAME ...] [--jobs 2]

By default it times the first `--children` fine-tunes of the blueprint's first backbone (fine-tunes are 72 of the
mini zoo's 75 models). Their parents are trained once beforehand, untimed, and copied into both output folders.
The machine's load average is printed before and after each run: on a shared machine the timings move with it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand, find_model, load_blueprint


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def generate(blueprint: str, out: Path, names: list[str], extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "vitzoo_hf.cli", "generate", blueprint, "--out", str(out), "--only", *names, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blueprint", default="mini")
    p.add_argument("--children", type=int, default=24, help="fine-tunes of the first backbone to time")
    p.add_argument("--only", nargs="+", default=None, help="time exactly these models instead")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=None, help="work directory (default: a fresh temporary one)")
    p.add_argument("--reverse", action="store_true", help="run --jobs N first, then --jobs 1 (load drifts)")
    args = p.parse_args()
    bp = load_blueprint(args.blueprint)
    models = expand(bp)
    if args.only:
        chosen = [find_model(bp, n) for n in args.only]
    else:
        first = next(m for m in models if m.stage == "pretraining")
        chosen = [m for m in models if m.parent == first.name][: args.children]
    names = [m.name for m in chosen]
    parents = sorted({m.parent for m in chosen if m.parent and m.parent not in names})
    work = Path(args.out or tempfile.mkdtemp(prefix="jobs-bench-"))
    print(f"blueprint {bp.name}: timing {len(chosen)} models; {os.cpu_count()} CPU cores; work dir {work}")
    if parents:
        t = generate(args.blueprint, work / "parents", parents, [])
        print(f"parents trained once, untimed ({t:.0f} s): {', '.join(parents)}")
    runs = {"--jobs 1": work / "jobs1", f"--jobs {args.jobs}": work / f"jobs{args.jobs}"}

    def with_parents(out: Path) -> Path:
        for parent in parents:
            spec = find_model(bp, parent)
            shutil.copytree(layout.model_dir(work / "parents", spec), layout.model_dir(out, spec), dirs_exist_ok=True)
        return out

    wall = {}
    for label, out in (reversed(runs.items()) if args.reverse else runs.items()):
        with_parents(out)
        before = load()
        wall[label] = generate(args.blueprint, out, names, label.split())
        print(f"{label:>9}: {wall[label]:7.1f} s wall   (load average before {before}; after {load()})")
    one, many = wall["--jobs 1"], wall[f"--jobs {args.jobs}"]
    print(f"ratio --jobs {args.jobs} / --jobs 1: {many / one:.2f}  (target <= 0.65)")

    a_dir, b_dir = runs.values()
    equal, worst = compare(chosen, a_dir, b_dir)
    print(f"same models: {equal}/{len(chosen)} bitwise identical; largest weight difference {worst:.3g}")
    if equal < len(chosen):
        # Which difference is it? Retrain the first model as a job subprocess (0 workers), but with --jobs 1's
        # thread count: bitwise equal to --jobs 1 means the torch thread count (matmul reduction order) is all.
        first = chosen[0]
        out = with_parents(work / "threads")
        env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count()), "MKL_NUM_THREADS": str(os.cpu_count())}
        subprocess.run([sys.executable, "-m", "vitzoo_hf.training", "--blueprint", args.blueprint, "--model",
                        first.name, "--out", str(out), "--no-progress", "--num-workers", "0"], env=env, check=True,
                       capture_output=True)
        same_as_one, _ = compare([first], a_dir, out)
        same_as_many, _ = compare([first], b_dir, out)
        print(f"  {first.name} retrained as a job subprocess with 0 workers and {os.cpu_count()} torch threads: "
              f"{'bitwise identical' if same_as_one else 'different'} to --jobs 1 ({os.cpu_count()} threads, "
              f"default workers), {'identical' if same_as_many else 'different'} to --jobs {args.jobs} "
              f"({max(1, os.cpu_count() // args.jobs)} thread(s)): "
              + ("the torch thread count alone changes the bits (float rounding, amplified by training)"
                 if same_as_one and not same_as_many else "more than the thread count differs"))


def compare(models, a_dir: Path, b_dir: Path) -> tuple[int, float]:
    """(how many final weights are bitwise equal, largest absolute difference)."""
    equal, worst = 0, 0.0
    for m in models:
        a, b = (layout.checkpoint_dir(layout.model_dir(d, m), m.epochs) for d in (a_dir, b_dir))
        wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
        equal += all(torch.equal(wa[k], wb[k]) for k in wa)
        worst = max(worst, max((wa[k] - wb[k]).abs().max().item() for k in wa))
    return equal, worst


if __name__ == "__main__":
    main()
