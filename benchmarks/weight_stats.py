"""Weight statistics (skewness + excess kurtosis + L2 norm of the backbone) of one ViT-S-sized checkpoint:
vitzoo_hf vs scipy.stats vs the memory-bandwidth roofline (one np.dot(x, x) pass over the same memory-mapped
bytes), side by side in one run, best of --repeats with a warm page cache.

    python benchmarks/weight_stats.py [--weights model.safetensors] [--repeats 5]

Targets: >= 10x scipy, within 2x of the roofline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.stats
from safetensors import safe_open
from safetensors.numpy import save_file
from vit_weights import random_state  # benchmarks/ (the script's folder) is on sys.path

from vitzoo_hf.analysis import checkpoint_statistics
from vitzoo_hf.analysis.backbone import open_checkpoint
from vitzoo_hf.analysis.weights import weight_statistics


def ours(path: Path) -> tuple[float, float, float]:
    s = weight_statistics(path)
    return s["skewness"], s["kurtosis"], s["l2_norm"]


def with_scipy(path: Path) -> tuple[float, float, float]:
    """The usual way: read the backbone, concatenate, and ask scipy (float64, as our statistics are)."""
    with safe_open(str(path), framework="np") as f:
        x = np.concatenate([f.get_tensor(k).reshape(-1) for k in sorted(f.keys()) if not k.startswith("classifier.")])
    x = x.astype(np.float64)
    return float(scipy.stats.skew(x)), float(scipy.stats.kurtosis(x)), float(np.linalg.norm(x))


def roofline(path: Path) -> float:
    """One BLAS dot product per tensor over the same memory-mapped bytes: the memory-bandwidth floor."""
    total = 0.0
    with open_checkpoint(path) as ckpt:
        for _, x in ckpt.items():
            total += float(np.dot(x, x))
    return total


def best(fn, path: Path, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(path)
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, help="a model.safetensors (default: a random ViT-S/16 checkpoint)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vitzoo-bench-") as tmp:
        path = args.weights
        if path is None:
            path = Path(tmp) / "model.safetensors"
            save_file(random_state(0), str(path))
        parent = Path(tmp) / "parent.safetensors"
        save_file(random_state(1), str(parent))  # any checkpoint of the same architecture
        checkpoint_statistics(path, parent)  # compile
        with open_checkpoint(path) as ckpt:
            n = sum(ckpt.array(k).size for k in ckpt.keys)
            nbytes = sum(ckpt.array(k).nbytes for k in ckpt.keys)
        ours(path)  # compile (numba caches it) and warm the page cache
        t_ours, r_ours = best(ours, path, args.repeats)
        t_scipy, r_scipy = best(with_scipy, path, max(1, args.repeats // 2))
        t_roof, _ = best(roofline, path, args.repeats)
        t_all, _ = best(lambda p: checkpoint_statistics(p, parent), path, args.repeats)
    rel = max(abs(a - b) / abs(b) for a, b in zip(r_ours, r_scipy, strict=True))
    print(f"backbone: {n / 1e6:.1f} M parameters, {nbytes / 2**20:.0f} MiB")
    print(f"{'method':<34}{'seconds':>10}{'GB/s':>8}")
    for name, t in (("vitzoo_hf (skew+kurtosis+norm)", t_ours), ("scipy.stats (skew+kurtosis+norm)", t_scipy),
                    ("roofline: np.dot(x, x) per tensor", t_roof)):
        print(f"{name:<34}{t:>10.4f}{nbytes / t / 1e9:>8.2f}")
    print(f"speed-up over scipy: {t_scipy / t_ours:.1f}x (target >= 10x)")
    print(f"ours / roofline time: {t_ours / t_roof:.2f}x (target <= 2x)")
    print(f"publish-time columns (checkpoint_statistics: statistics + 4 KB sketch + distance to a parent): "
          f"{t_all:.4f} s per checkpoint")
    print(f"max relative difference to scipy: {rel:.2e}  (skewness {r_ours[0]:.6g}, kurtosis {r_ours[1]:.6g}, "
          f"norm {r_ours[2]:.6g})")


if __name__ == "__main__":
    main()
