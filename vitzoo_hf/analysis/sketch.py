"""A 4 KB fingerprint of a checkpoint's weights from which L2 distances are estimated without the weights.

The sketch is a count sketch (Charikar et al. 2002; a sparse Johnson–Lindenstrauss map): every weight w_i is
added with a sign s(i) in {-1, +1} to one of k = 1024 buckets h(i); ||S a - S b|| estimates ||a - b||, unbiased
in the square, with a relative error of about 1/sqrt(2k) ~ 2 % (std) on the distance.

Because S is linear, S a - S b = S (a - b) exactly: the estimate for two near-identical checkpoints (a fine-tune
and its parent, epoch k and k+1) is the sketch of their small difference, so its relative error does not grow as
the distance shrinks. (A sketch that keeps only norms and sketched inner products, d^2 = |a|^2 + |b|^2 - 2 <Sa, Sb>,
has an absolute error of the order of |a||b|/sqrt(k): useless once d is below ~10 % of the norm.) Storing the
buckets as float32 adds an error of ~1e-7 |a| in absolute terms, negligible down to d ~ 1e-5 |a|.

(h, s) come from a multiply-shift hash of the element's index in its tensor, keyed by the tensor's normalised
name (sha256), so any machine, library version or thread count computes the same bits, and checkpoints that
share a parameter (a fine-tune's backbone and its parent's) map it identically. Scope: the backbone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from numba import njit

from vitzoo_hf.analysis.backbone import flat, open_checkpoint

SKETCH_DIM = 1024
SKETCH_VERSION = "vitzoo-count-sketch-v1"
_BITS = int(math.log2(SKETCH_DIM))


@njit(cache=True, nogil=True)
def _count_sketch_add(x, a, b, out):  # pragma: no cover - compiled
    bits = np.uint64(64 - _BITS)
    one = np.uint64(1)
    for i in range(x.size):
        h = a * np.uint64(i) + b  # wraps modulo 2^64: the multiply-shift hash
        v = np.float64(x[i])
        if (h >> (bits - one)) & one:
            out[h >> bits] -= v
        else:
            out[h >> bits] += v


def _hash_keys(name: str) -> tuple[np.uint64, np.uint64]:
    digest = hashlib.sha256(f"{SKETCH_VERSION}:{name}".encode()).digest()
    return np.uint64(int.from_bytes(digest[:8], "little") | 1), np.uint64(int.from_bytes(digest[8:16], "little"))


def accumulate(out: np.ndarray, name: str, tensor) -> None:
    """Add one named tensor to a sketch being built (`out`: float64 zeros of SKETCH_DIM; cast to float32 at the
    end). Tensors must be added in sorted-name order for bit-identical results."""
    _count_sketch_add(flat(tensor), *_hash_keys(name), out)


def sketch(named_tensors: Mapping | Iterable[tuple[str, object]]) -> np.ndarray:
    """The sketch (float32[SKETCH_DIM]) of (normalised name, tensor) pairs, in any order."""
    items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
    out = np.zeros(SKETCH_DIM)
    for name, t in sorted(items, key=lambda kv: kv[0]):
        accumulate(out, name, t)
    return out.astype(np.float32)


def sketch_file(path: str | Path, scope: str = "backbone") -> np.ndarray:
    """The sketch of a safetensors checkpoint (backbone by default), streamed tensor by tensor."""
    with open_checkpoint(path, scope) as ckpt:
        return sketch(ckpt.items())


def sketch_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Estimated L2 distance between the two checkpoints two sketches were made from."""
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def sketch_distances(sketches: Sequence[Sequence[float]]) -> np.ndarray:
    """Estimated N x N distance matrix from N sketches."""
    s = np.asarray(sketches, dtype=np.float64)
    return np.sqrt(np.clip(((s[:, None, :] - s[None, :, :]) ** 2).sum(-1), 0.0, None))
