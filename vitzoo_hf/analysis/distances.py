"""L2 distances between checkpoints: one pair exactly, and all pairs of N checkpoints in one streaming pass.

A pair: the float64 sum of squared differences over the parameters both checkpoints share (same normalised key,
same shape), computed on the difference itself, so near-identical models lose nothing to cancellation.

All pairs: a block-wise Gram matrix. Each block holds the same slice of every model (N x B, float64), centred on
one reference model before G += X X^T, and d_ij^2 = G_ii + G_jj - 2 G_ij. Centring makes the Gram entries the
size of the differences instead of the size of the weights (an SGD child differs from its parent by ~0.2 % of the
norm), so the subtraction stays accurate; memory is bounded by the block, whatever N and the model size.

Cluster summaries follow the paper's Table 1: "within cluster" = each fine-tune to its pre-trained ancestor,
"between cluster" = pairwise between pre-trained models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from numba import njit

from vitzoo_hf.analysis.backbone import flat, open_checkpoint
from vitzoo_hf.analysis.weights import REASSOCIATE
from vitzoo_hf.errors import ZooError

BLOCK_MEMORY = 128 << 20  # bytes of float64 block (N models x block elements) held at a time


@njit(cache=True, fastmath=REASSOCIATE, nogil=True)
def _squared_difference(x, y):  # pragma: no cover - compiled
    s = 0.0
    for i in range(x.size):
        d = np.float64(x[i]) - np.float64(y[i])
        s += d * d
    return s


def squared_distance(a, b) -> float:
    """sum (a - b)^2 in float64 for two tensors/arrays of the same shape."""
    x, y = flat(a), flat(b)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs {y.shape}")
    return float(_squared_difference(x, y))


def shared_keys(shapes_a: Mapping[str, tuple], shapes_b: Mapping[str, tuple]) -> list[str]:
    """Parameters two checkpoints share: same name and same shape (a head for another class count is not)."""
    keys = sorted(k for k in shapes_a.keys() & shapes_b.keys() if tuple(shapes_a[k]) == tuple(shapes_b[k]))
    if not keys:
        raise ZooError("the two checkpoints share no parameter (same name and shape); they are not from the same "
                       "architecture, so no distance is defined")
    return keys


def l2_distance(a: Mapping, b: Mapping) -> float:
    """L2 distance between two state dicts (normalised names -> tensors) over their shared parameters."""
    keys = shared_keys({k: tuple(np.shape(v)) for k, v in a.items()}, {k: tuple(np.shape(v)) for k, v in b.items()})
    return math.sqrt(sum(squared_distance(a[k], b[k]) for k in keys))


def l2_distance_files(path_a: str | Path, path_b: str | Path, scope: str = "backbone") -> float:
    """L2 distance between two safetensors checkpoints over their shared parameters (backbone by default)."""
    with open_checkpoint(path_a, scope) as ra, open_checkpoint(path_b, scope) as rb:
        keys = shared_keys({k: ra.shape(k) for k in ra.keys}, {k: rb.shape(k) for k in rb.keys})
        return math.sqrt(sum(squared_distance(ra.array(k), rb.array(k)) for k in keys))


# ---------------------------------------------------------------------------------------------------------------
# All pairs


class GramAccumulator:
    """Accumulates the Gram matrix of N models block by block, centred on model `reference`."""

    def __init__(self, n: int, reference: int = 0) -> None:
        if not 0 <= reference < n:
            raise ValueError(f"reference {reference} out of range for {n} models")
        self.gram = np.zeros((n, n))
        self.reference = reference

    def add(self, block: np.ndarray) -> None:
        """`block`: N x B float64, row i = the same slice of model i (modified in place)."""
        from threadpoolctl import threadpool_limits

        block -= block[self.reference].copy()  # a view of `block` itself would make numpy copy the whole block
        # One BLAS thread: a short-and-wide product is never the bottleneck on one core (~1 GFlop per block), while
        # OpenBLAS threads spinning on a busy machine made it 8-50x slower in our measurements.
        with threadpool_limits(1, user_api="blas"):
            self.gram += block @ block.T

    def distances(self) -> np.ndarray:
        diag = np.diag(self.gram)
        d2 = diag[:, None] + diag[None, :] - 2.0 * self.gram
        d = np.sqrt(np.clip(d2, 0.0, None))
        d[self.reference, :] = d[:, self.reference] = np.sqrt(diag)  # exact: no subtraction
        np.fill_diagonal(d, 0.0)
        return d


def _segments(shapes: Mapping[str, tuple], block: int) -> list[list[tuple[str, int, int, int]]]:
    """Cut the parameters (in name order) into blocks of at most ~`block` elements: lists of
    (name, first row, end row, elements), whole rows of the first dimension."""
    blocks: list[list[tuple[str, int, int, int]]] = []
    current: list[tuple[str, int, int, int]] = []
    size = 0
    for name in sorted(shapes):
        shape = shapes[name]
        rows = shape[0] if len(shape) > 1 else 1
        row_size = int(np.prod(shape[1:])) if len(shape) > 1 else int(np.prod(shape))
        step = max(1, block // max(row_size, 1))
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            n = (stop - start) * row_size
            if current and size + n > block:
                blocks.append(current)
                current, size = [], 0
            current.append((name, start, stop, n))
            size += n
    if current:
        blocks.append(current)
    return blocks


def pairwise_distances(paths: Sequence[str | Path], scope: str = "backbone", reference: int = 0,
                       block: int | None = None, progress: bool = False) -> np.ndarray:
    """The N x N L2 distance matrix of safetensors checkpoints over the parameters all of them share, in one
    streaming pass: each file is opened (memory-mapped) once per block and closed again, so at most one block of
    every model (N x `block` float64; default: BLOCK_MEMORY in all) and one file's touched pages are in memory.

    `reference`: the model every block is centred on; pick the most central one (a parent among its
    children) for the best accuracy on near-identical pairs."""
    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        return np.zeros((len(paths), len(paths)))
    shapes, bf16 = None, False
    for p in paths:
        with open_checkpoint(p, scope, "np") as r:  # names, shapes and dtypes only
            mine = {k: r.shape(k) for k in r.keys}
            bf16 = bf16 or any(r.dtype(k) == "BF16" for k in r.keys)
        shapes = mine if shapes is None else {k: shapes[k] for k in shared_keys(shapes, mine)}
    framework = "pt" if bf16 else "np"  # slices are copied into the block anyway: no need for torch
    acc = GramAccumulator(len(paths), reference)
    plan = _segments(shapes, block or _block_size(len(paths)))
    buf = np.empty(len(paths) * max(sum(s[3] for s in b) for b in plan))
    for segs in tqdm(plan, desc="pairwise distances", unit="block", disable=not progress):
        width = sum(s[3] for s in segs)
        x = buf[:len(paths) * width].reshape(len(paths), width)  # contiguous: the Gram product copies nothing
        for i, p in enumerate(paths):
            with open_checkpoint(p, scope, framework) as r:
                off = 0
                for name, start, stop, n in segs:
                    x[i, off:off + n] = r.rows(name, start, stop)
                    off += n
        acc.add(x)
    return acc.distances()


def _block_size(n: int) -> int:
    return max(4096, BLOCK_MEMORY // (8 * n))


def pairwise_distances_arrays(state_dicts: Sequence[Mapping], reference: int = 0,
                              block: int | None = None) -> np.ndarray:
    """`pairwise_distances` for in-memory state dicts (normalised names -> tensors)."""
    if len(state_dicts) < 2:
        return np.zeros((len(state_dicts), len(state_dicts)))
    shapes: dict = {k: tuple(np.shape(v)) for k, v in state_dicts[0].items()}
    for sd in state_dicts[1:]:
        shapes = {k: shapes[k] for k in shared_keys(shapes, {k: tuple(np.shape(v)) for k, v in sd.items()})}
    acc = GramAccumulator(len(state_dicts), reference)
    for segs in _segments(shapes, block or _block_size(len(state_dicts))):
        x = np.empty((len(state_dicts), sum(s[3] for s in segs)))
        for i, sd in enumerate(state_dicts):
            off = 0
            for name, start, stop, n in segs:
                t = sd[name]
                x[i, off:off + n] = flat(t if len(shapes[name]) <= 1 else t[start:stop])
                off += n
        acc.add(x)
    return acc.distances()


# ---------------------------------------------------------------------------------------------------------------
# Cluster summaries


def upper_triangle(matrix: np.ndarray, rows: Sequence[int] | None = None) -> np.ndarray:
    """The distinct pairwise values (i < j) of a symmetric matrix, optionally among a subset of indices."""
    idx = np.arange(len(matrix)) if rows is None else np.asarray(rows, dtype=int)
    sub = matrix[np.ix_(idx, idx)]
    return sub[np.triu_indices(len(idx), k=1)]


def between_cluster(matrix: np.ndarray, groups: Sequence[str]) -> dict[str, np.ndarray]:
    """Pairwise distances between pre-trained models, per group (pre-training task) and overall ("all")."""
    out = {g: upper_triangle(matrix, [i for i, x in enumerate(groups) if x == g]) for g in dict.fromkeys(groups)}
    out["all"] = upper_triangle(matrix)
    return out


def within_cluster(to_parent: Mapping[str, float], group_of: Callable[[str], str]) -> dict[str, np.ndarray]:
    """Distances of fine-tunes to their pre-trained ancestor, per group of the ancestor and overall ("all")."""
    out: dict[str, list[float]] = {}
    for child, d in to_parent.items():
        if d is not None:
            out.setdefault(group_of(child), []).append(d)
            out.setdefault("all", []).append(d)
    return {k: np.asarray(v) for k, v in out.items()}
