"""All pairwise L2 distances of N ViT-S-sized checkpoints (safetensors files): vitzoo_hf's streaming Gram pass
vs the naive way (for each pair, load both files and torch.dist), side by side, each in a fresh process with its
peak RSS; then the count sketch's distance error on a real zoo, by kind of pair and by true distance.

    python benchmarks/pairwise.py [--n 32] [--dir /tmp] [--naive-pairs 0] [--zoo /work/data/mini-zoo]

N = 32 writes 32 x 88 MB = 2.8 GB to --dir. The models are 4 independent "pre-trained" ones, each followed by 7
near-identical "fine-tunes" (0.2 % of the weight scale apart, like SGD children), so the matrix mixes
between-cluster and near-identical pairs. --naive-pairs K times the naive way on K pairs only and extrapolates
(0 = all pairs). Targets: >= 10x the naive way, peak RSS <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from vit_weights import check_disk, random_state  # benchmarks/ (the script's folder) is on sys.path

OURS = """
import json, resource, sys, time, numpy as np, psutil
from vitzoo_hf.analysis.distances import pairwise_distances
paths = json.loads(sys.argv[1])
base = psutil.Process().memory_info().rss
t = time.perf_counter()
d = pairwise_distances(paths)
seconds = time.perf_counter() - t
np.save(sys.argv[2], d)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "base_rss": base, "peak_rss": peak}))
"""

NAIVE = """
import json, resource, sys, time, torch, psutil
from safetensors.torch import load_file
paths, pairs = json.loads(sys.argv[1]), json.loads(sys.argv[3])
base = psutil.Process().memory_info().rss
out = {}
t = time.perf_counter()
for i, j in pairs:
    a, b = load_file(paths[i]), load_file(paths[j])
    keys = [k for k in a if not k.startswith("classifier.")]
    out[f"{i},{j}"] = sum(float(torch.dist(a[k], b[k])) ** 2 for k in keys) ** 0.5
seconds = time.perf_counter() - t
json.dump(out, open(sys.argv[2], "w"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "base_rss": base, "peak_rss": peak}))
"""


def run(code: str, *args: str) -> dict:
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def write_models(folder: Path, n: int) -> list[Path]:
    from safetensors.numpy import save_file

    paths, parent = [], None
    for i in range(n):
        state = random_state(i) if i % 8 == 0 else random_state(i, base=parent)
        if i % 8 == 0:
            parent = state
        paths.append(folder / f"model{i:03d}.safetensors")
        save_file(state, str(paths[-1]))
        print(f"\rwrote {i + 1}/{n} checkpoints", end="", flush=True)
    print()
    return paths


def pairwise_benchmark(args: argparse.Namespace, folder: Path) -> None:
    check_disk(folder, args.n * 88_000_000)
    paths = write_models(folder, args.n)
    names = json.dumps([str(p) for p in paths])
    ours = run(OURS, names, str(folder / "ours.npy"))
    d = np.load(folder / "ours.npy")
    all_pairs = list(itertools.combinations(range(args.n), 2))
    pairs = all_pairs if not args.naive_pairs else all_pairs[:: max(1, len(all_pairs) // args.naive_pairs)]
    naive = run(NAIVE, names, str(folder / "naive.json"), json.dumps(pairs))
    ref = json.loads((folder / "naive.json").read_text())
    naive_all = naive["seconds"] * len(all_pairs) / len(pairs)
    rel = max(abs(d[i, j] - ref[f"{i},{j}"]) / ref[f"{i},{j}"] for i, j in pairs)
    close = [(i, j) for i, j in pairs if i // 8 == j // 8]
    print(f"N = {args.n} ViT-S-sized checkpoints (21.7 M backbone parameters each); {len(all_pairs)} pairs")
    print(f"{'method':<40}{'seconds':>10}{'peak RSS (GiB)':>16}{'after imports':>15}")
    print(f"{'vitzoo_hf pairwise_distances (1 pass)':<40}{ours['seconds']:>10.2f}{ours['peak_rss'] / 2**30:>16.2f}"
          f"{ours['base_rss'] / 2**30:>15.2f}")
    label = f"naive load+torch.dist ({len(pairs)} pairs)"
    print(f"{label:<40}{naive['seconds']:>10.2f}{naive['peak_rss'] / 2**30:>16.2f}{naive['base_rss'] / 2**30:>15.2f}")
    if len(pairs) < len(all_pairs):
        print(f"{'naive, extrapolated to all pairs':<40}{naive_all:>10.2f}")
    print(f"speed-up: {naive_all / ours['seconds']:.1f}x (target >= 10x); peak RSS {ours['peak_rss'] / 2**30:.2f} GiB "
          "(target <= 1.5 GB)")
    print(f"max relative difference to the naive float32 torch.dist: {rel:.2e} "
          f"(near-identical pairs included: {len(close)} of {len(pairs)} compared)")
    exact = float64_distances(paths, close[:4] + [p for p in pairs if p not in close][:4])
    worst = max(abs(d[i, j] - v) / v for (i, j), v in exact.items())
    print(f"max relative error against a direct float64 difference ({len(exact)} pairs, "
          f"{min(len(close), 4)} near-identical): {worst:.1e}")
    # sketch error on these ViT-S-sized models
    from vitzoo_hf.analysis.sketch import sketch_file
    from vitzoo_hf.analysis.weights import weight_statistics

    sk = np.stack([sketch_file(p).astype(np.float64) for p in paths])
    norms = [weight_statistics(p)["l2_norm"] for p in paths]
    report_sketch([(d[i, j], float(np.linalg.norm(sk[i] - sk[j])), plain_estimate(norms[i], norms[j], sk[i], sk[j]),
                    "same cluster (0.2 %)" if i // 8 == j // 8 else "different clusters") for i, j in all_pairs],
                  "ViT-S-sized random checkpoints")


def float64_distances(paths: list[Path], pairs: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """Ground truth for a few pairs: the float64 difference of the backbones, summed with math.fsum."""
    from safetensors.numpy import load_file

    out = {}
    for i, j in pairs:
        a, b = load_file(str(paths[i])), load_file(str(paths[j]))
        out[(i, j)] = math.sqrt(math.fsum(float(np.square(a[k].astype(np.float64) - b[k]).sum()) for k in a
                                          if not k.startswith("classifier.")))
    return out


def plain_estimate(norm_a: float, norm_b: float, sa: np.ndarray, sb: np.ndarray) -> float:
    """The 'plain JL' estimator for contrast: exact norms, sketched inner product (cancels for close pairs)."""
    return math.sqrt(max(norm_a**2 + norm_b**2 - 2 * float(sa @ sb), 0.0))


def report_sketch(rows: list[tuple[float, float, float, str]], title: str) -> None:
    """rows: (true distance, linear sketch estimate, norms+inner-product estimate, kind)."""
    print(f"\nsketch distance error ({title}); relative error = estimate / true - 1")
    print(f"{'kind of pair':<34}{'pairs':>6}{'median d':>11}{'mean |err|':>12}{'max |err|':>11}"
          f"{'plain JL mean |err|':>21}")
    kinds = sorted({r[3] for r in rows})
    for kind in kinds:
        sel = [r for r in rows if r[3] == kind and r[0] > 0]
        if not sel:
            continue
        err = np.array([abs(r[1] / r[0] - 1) for r in sel])
        plain = np.array([abs(r[2] / r[0] - 1) for r in sel if math.isfinite(r[2])])
        plain_txt = f"{plain.mean():.3g}" if plain.size else "n/a"
        print(f"{kind:<34}{len(sel):>6}{np.median([r[0] for r in sel]):>11.4g}{err.mean():>12.4f}{err.max():>11.4f}"
              f"{plain_txt:>21}")


def zoo_sketch_error(zoo_dir: Path) -> None:
    """Exact vs sketched distances on a real zoo folder, by kind of pair and by true distance / norm."""
    from vitzoo_hf.analysis.distances import l2_distance_files
    from vitzoo_hf.analysis.sketch import sketch_file
    from vitzoo_hf.analysis.weights import weight_statistics

    ckpts: dict[tuple[str, int], Path] = {}
    parent_of: dict[str, str | None] = {}
    for w in sorted(zoo_dir.rglob("checkpoint_*/model.safetensors")):
        model = w.parent.parent
        stage = "pretraining" if model.parent.name == "pretraining" else "finetuning"
        parent_of[model.name] = model.parent.name if stage == "finetuning" else None
        ckpts[(model.name, int(w.parent.name.split("_")[1]))] = w
    final = {m: max(e for n, e in ckpts if n == m) for m in parent_of}
    t = time.perf_counter()
    sk = {k: sketch_file(p).astype(np.float64) for k, p in ckpts.items()}
    norm = {k: weight_statistics(p)["l2_norm"] for k, p in ckpts.items()}
    pairs: list[tuple[tuple, tuple, str]] = []
    for m, p in parent_of.items():
        if p:
            pairs.append(((m, final[m]), (p, final[p]), "fine-tune vs parent"))
        epochs = sorted(e for n, e in ckpts if n == m)
        pairs += [((m, a), (m, b), "epoch k vs k+1") for a, b in itertools.pairwise(epochs) if a > 0 or not p]
    pre = [m for m, p in parent_of.items() if not p]
    pairs += [((a, final[a]), (b, final[b]), "pre-trained vs pre-trained") for a, b in itertools.combinations(pre, 2)]
    for p in pre:
        kids = sorted(m for m, q in parent_of.items() if q == p)
        pairs += [((a, final[a]), (b, final[b]), "siblings (same parent)") for a, b in itertools.pairwise(kids)]
    rows = []
    for a, b, kind in pairs:
        true = l2_distance_files(ckpts[a], ckpts[b])
        lin = float(np.linalg.norm(sk[a] - sk[b]))
        rows.append((true, lin, plain_estimate(norm[a], norm[b], sk[a], sk[b]), kind, true / norm[a]))
    print(f"\nzoo {zoo_dir}: {len(ckpts)} checkpoints sketched in {time.perf_counter() - t:.1f} s "
          f"({len(pairs)} pairs compared)")
    report_sketch([r[:4] for r in rows], f"zoo {zoo_dir.name}")
    print(f"\n{'true d / |a|':<18}{'pairs':>6}{'linear sketch mean |err|':>26}{'p95 |err|':>11}"
          f"{'plain JL mean |err|':>21}")
    edges = [0, 1e-4, 1e-3, 1e-2, 1e-1, math.inf]
    for lo, hi in itertools.pairwise(edges):
        sel = [r for r in rows if lo < r[4] <= hi]
        if not sel:
            continue
        err = np.array([abs(r[1] / r[0] - 1) for r in sel])
        plain = np.array([abs(r[2] / r[0] - 1) for r in sel])
        print(f"({lo:g}, {hi:g}]".ljust(18) + f"{len(sel):>6}{err.mean():>26.4f}{np.quantile(err, 0.95):>11.4f}"
              f"{plain.mean():>21.3g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="number of ViT-S-sized checkpoints (default 32)")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--naive-pairs", type=int, default=0, help="time the naive way on this many pairs (0 = all)")
    p.add_argument("--zoo", type=Path, default=None,
                   help="zoo folder for the sketch error (default: /work/data/mini-zoo when complete, else skip)")
    args = p.parse_args()
    if args.n >= 2:
        with tempfile.TemporaryDirectory(prefix="vitzoo-pairwise-", dir=args.dir) as tmp:
            pairwise_benchmark(args, Path(tmp))
    zoo = args.zoo
    if zoo is None and Path("/work/data/mini-zoo.DONE").exists():
        zoo = Path("/work/data/mini-zoo")
    if zoo is not None:
        zoo_sketch_error(zoo)


if __name__ == "__main__":
    main()
