"""Where a demo's (or any zoo's) time goes: per stage (DIR/report/timings.json, DIR/demo_state.json) and, inside
generation, per model and per epoch, split into evaluation and training.

    python benchmarks/demo_time.py DIR          # a `vitzoo demo --out DIR`
    python benchmarks/demo_time.py ZOO --zoo    # a `vitzoo generate --out ZOO` folder

Epoch 0 of every model is evaluation only (the initial checkpoint is evaluated on the train subset and the
validation split, then saved), so its wall time bounds each epoch's evaluation + checkpoint cost from above (it
also carries the model's one-time start-up: data loading, first-call warm-up; on a loaded machine the bound can
exceed the total, then read it as "evaluation is most of it"); the rest of an epoch is the training steps.
Sums are seconds of model work (with --jobs N, N models run at once).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def epochs(result: Path) -> list[dict]:
    return [json.loads(line) for line in result.read_text().splitlines() if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--zoo", action="store_true", help="DIR is a zoo folder, not a demo")
    args = p.parse_args()
    zoo = args.dir if args.zoo else args.dir / "zoo"
    if not args.zoo:
        state = json.loads((args.dir / "demo_state.json").read_text())
        seen = state.get("_seconds", {})
        total = sum(seen.values())
        print("| stage | seconds (last run that did the work) | share |\n|---|---|---|")
        for stage, secs in seen.items():
            print(f"| {stage} | {secs:.0f} | {100 * secs / total:.0f} % |")
        print(f"| all | {total:.0f} | |\n")
    print("| stage | models | epochs | model-seconds | evaluation + checkpoint (upper bound) | training (rest) |")
    print("|---|---|---|---|---|---|")
    for stage in ("pretraining", "finetuning"):
        results = sorted((zoo / stage).glob("**/result.json"))
        runs = [epochs(r) for r in results]
        runs = [r for r in runs if r]
        if not runs:
            continue
        secs = sum(e["seconds"] for run in runs for e in run)
        n_epochs = sum(len(run) for run in runs)
        evaluation = sum(run[0]["seconds"] * len(run) for run in runs)  # every epoch evaluates like epoch 0
        print(f"| {stage} | {len(runs)} | {n_epochs} | {secs:.0f} | {evaluation:.0f} ({100 * evaluation / secs:.0f} %) "
              f"| {secs - evaluation:.0f} ({100 * (secs - evaluation) / secs:.0f} %) |")


if __name__ == "__main__":
    main()
