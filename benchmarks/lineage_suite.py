"""The lineage development loop (issue 20): Table 3 on a suite of small zoos whose fine-tuning recipes differ
(weight decay 0 / 0.03 / 0.05 / 0.1, SGD momentum 0.9 / 0.95 / 0.99, learning-rate grids, 4-12 epochs, batch sizes,
both optimizers, heads and pre-training tasks), for every method and both tree-count modes, plus the F1 of every
single fine-tuning run on its own (root + all its epochs, one tree) per optimizer.

    python benchmarks/lineage_suite.py [--zoos /tmp/lineage-zoos] [--draws 8] [--heldout] [--truth lineage]

Blueprints: benchmarks/lineage/*.yaml (each `extends: smoke`). A zoo missing from --zoos is generated first with
`vitzoo generate BLUEPRINT --out DIR --jobs 1` (2-5 minutes each on a shared 2-core CPU); an interrupted one resumes.
Blueprints named `heldout-*` are left out of development and reported separately (only with --heldout).
Draws: per (zoo, setting, draw) its own seeded generator (independent draws; see `table3.evaluate`).
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitzoo_hf import lineage  # noqa: E402
from vitzoo_hf.lineage.table3 import SETTINGS, available, evaluate  # noqa: E402

BLUEPRINTS = ROOT / "benchmarks" / "lineage"
METHODS = ("mother", "mother-official", "mother-modeltree", "ours")


def zoo_dir(zoos: Path, blueprint: Path) -> Path:
    return zoos / f"lin-{blueprint.stem}"


def ensure(zoos: Path, blueprint: Path) -> Path:
    """Generate the zoo unless a finished one is there (`vitzoo generate` skips finished models)."""
    out = zoo_dir(zoos, blueprint)
    done = out / ".lineage-suite-complete"  # holds the blueprint it was generated from
    if done.is_file() and done.read_text() == blueprint.read_text():
        return out
    t = time.time()
    print(f"generating {out.name} from {blueprint.relative_to(ROOT)} ...", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    log = zoos / f"{out.name}.generate.log"
    with log.open("w") as f:
        code = subprocess.call([sys.executable, "-m", "vitzoo_hf.cli", "generate", str(blueprint), "--out", str(out),
                                "--jobs", "1"], stdout=f, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        sys.exit(f"generating {out.name} failed (exit {code}); see {log} and rerun (finished models are kept)")
    done.write_text(blueprint.read_text())
    print(f"  done in {time.time() - t:.0f} s", flush=True)
    return out


def open_zoo(path: Path):
    from vitzoo_hf.lineage.weights import backbone
    from vitzoo_hf.zoo import Zoo

    zoo = Zoo.open(str(path))
    rows = [{**r, "checkpoint_epochs": zoo.epochs(r["name"])} for r in zoo.models]

    @functools.cache
    def load(name: str, epoch: int):
        return backbone(zoo.weights_path(name, epoch))

    return zoo, rows, load


def table3_rows(rows, load, methods, draws, truth, seed) -> list[dict]:
    settings = [s for s in SETTINGS if available(rows, s)]
    results, _ = evaluate(rows, load, list(methods), settings, draws=draws, seed=seed, truth=truth,
                          trees=("given", "estimated"), progress=False)
    return results


def single_chains(rows, load, methods) -> list[dict]:
    """Every fine-tune alone: its backbone and all its trained epochs, one tree (trees given)."""
    final = {r["name"]: r["checkpoint_epochs"][-1] for r in rows if r["stage"] == "pretraining"}
    out = []
    for r in rows:
        if r["stage"] != "finetuning":
            continue
        nodes = [(r["parent"], final[r["parent"]])] + [(r["name"], e) for e in r["checkpoint_epochs"] if e >= 1]
        truth = list(zip(nodes[:-1], nodes[1:], strict=True))
        order = np.random.default_rng(len(out)).permutation(len(nodes))
        shuffled = [nodes[i] for i in order]
        weights = [load(*n) for n in shuffled]
        for m in methods:
            pred = [(shuffled[p], shuffled[c]) for p, c in lineage.method(m, 1)(weights)]
            out.append({"zoo": None, "method": m, "optimizer": r["optimizer"], "run": r["name"],
                        "f1": lineage.score(pred, truth, nodes)["f1"]})
    return out


def fmt(vals) -> str:
    return f"{np.mean(vals):.2f} ± {np.std(vals):.2f}" if vals else "–"


def print_tables(title: str, t3: list[dict], chains: list[dict], methods) -> list[str]:
    lines = [f"### {title}", "", "F1 on directed edges, mean ± std over draws; `min` = the worst setting's mean.", "",
             "| zoo | trees | method | " + " | ".join(SETTINGS) + " | min |", "|---" * (len(SETTINGS) + 4) + "|"]
    for zoo in dict.fromkeys(r["zoo"] for r in t3):
        for trees in ("given", "estimated"):
            for m in methods:
                sel = [r for r in t3 if r["zoo"] == zoo and r["trees"] == trees and r["method"] == m]
                cells = [[r["f1"] for r in sel if r["setting"] == s] for s in SETTINGS]
                worst = min((np.mean(c) for c in cells if c), default=float("nan"))
                lines.append(f"| {zoo} | {trees} | {m} | " + " | ".join(fmt(c) for c in cells) + f" | {worst:.2f} |")
    lines += ["", "Single runs (backbone + every epoch of one fine-tune, one tree), F1 per optimizer:", "",
              "| zoo | method | adamw | sgd |", "|---|---|---|---|"]
    for zoo in dict.fromkeys(r["zoo"] for r in chains):
        for m in methods:
            cells = [[r["f1"] for r in chains if r["zoo"] == zoo and r["method"] == m and r["optimizer"] == o]
                     for o in ("adamw", "sgd")]
            lines.append(f"| {zoo} | {m} | " + " | ".join(f"{np.mean(c):.2f} ({len(c)} runs)" if c else "–"
                                                          for c in cells) + " |")
    print("\n".join(lines) + "\n", flush=True)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoos", type=Path, default=Path("/tmp/lineage-zoos"), help="where the suite's zoos live")
    p.add_argument("--draws", type=int, default=8, help="random sub-zoos per setting and tree-count mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", choices=("lineage", "backbone"), default="lineage")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--only", nargs="+", help="blueprint stems to run (default: every development zoo)")
    p.add_argument("--heldout", action="store_true", help="also run the held-out zoo(s), reported separately")
    p.add_argument("--out", type=Path, help="also write the per-draw rows as CSV here")
    args = p.parse_args(argv)
    args.zoos.mkdir(parents=True, exist_ok=True)
    blueprints = sorted(BLUEPRINTS.glob("*.yaml"))
    if args.only:
        blueprints = [b for b in blueprints if b.stem in args.only]
    dev = [b for b in blueprints if not b.stem.startswith("heldout")]
    held = [b for b in blueprints if b.stem.startswith("heldout")] if (args.heldout or args.only) else []
    all_t3, all_chains = [], []
    t0 = time.time()
    for group, title in ((dev, "Development zoos"), (held, "Held-out zoo (not used while developing)")):
        if not group:
            continue
        t3, chains = [], []
        for bp in group:
            path = ensure(args.zoos, bp)
            _, rows, load = open_zoo(path)
            t = time.time()
            t3 += [{**r, "zoo": bp.stem} for r in table3_rows(rows, load, args.methods, args.draws, args.truth,
                                                               args.seed)]
            chains += [{**r, "zoo": bp.stem} for r in single_chains(rows, load, args.methods)]
            print(f"{bp.stem}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
        print_tables(f"{title}, truth `{args.truth}`, {args.draws} draws per setting", t3, chains, args.methods)
        all_t3 += t3
        all_chains += chains
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, data in (("table3_draws.csv", all_t3), ("single_runs.csv", all_chains)):
            with (args.out / name).open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(data[0]), extrasaction="ignore")
                w.writeheader()
                w.writerows(data)
    print(f"total {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
