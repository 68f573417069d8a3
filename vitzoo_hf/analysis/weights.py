"""Weight statistics of a checkpoint: skewness, excess kurtosis and L2 norm (the paper's Tables 1 and 2).

One pass per tensor at memory bandwidth: a compiled loop accumulates, in float64, the power sums of the weights
shifted by an estimate of the tensor's mean (the mean of ~1000 evenly spaced entries), which keeps the central
moments free of cancellation without a second pass. Tensors are then merged exactly with the pairwise update
formulas for central moments (Chan et al.; Pébay 2008). Skewness and kurtosis are the biased (population)
Fisher definitions, i.e. `scipy.stats.skew(x)` and `scipy.stats.kurtosis(x)` with their defaults.

The paper does not say over which weights its statistics are taken, so three definitions are offered
(`DEFINITIONS`); `benchmarks/stat_definitions.py` shows which one gives values of the paper's order on a ViT-S.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from vitzoo_hf.analysis.backbone import flat, open_checkpoint

_SHIFT_SAMPLES = 1024
# Let LLVM vectorise the float64 sums (reassociation) but keep IEEE NaN/inf: a diverged checkpoint's
# statistics come out NaN, not garbage.
REASSOCIATE = {"reassoc", "contract", "nsz"}


@njit(cache=True, fastmath=REASSOCIATE, nogil=True)
def _shifted_power_sums(x, c):  # pragma: no cover - compiled
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    s4 = 0.0
    for i in range(x.size):
        d = np.float64(x[i]) - c
        d2 = d * d
        s1 += d
        s2 += d2
        s3 += d2 * d
        s4 += d2 * d2
    return s1, s2, s3, s4


@dataclass(frozen=True)
class Moments:
    """Count, mean and central moment sums M_k = sum (x - mean)^k of a set of numbers; mergeable with `+`."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0
    sum_squares: float = 0.0  # sum x^2, kept separately for the L2 norm (positive terms only: no cancellation)

    @classmethod
    def of(cls, array) -> Moments:
        """The moments of one tensor/array (any shape), in one pass."""
        x = flat(array)
        n = x.size
        if n == 0:
            return cls()
        c = float(np.mean(x[:: max(1, n // _SHIFT_SAMPLES)], dtype=np.float64))
        s1, s2, s3, s4 = _shifted_power_sums(x, c)
        m = s1 / n
        m2 = max(s2 - s1 * m, 0.0)
        m3 = s3 - 3.0 * m * s2 + 2.0 * n * m**3
        m4 = max(s4 - 4.0 * m * s3 + 6.0 * m * m * s2 - 3.0 * n * m**4, 0.0)
        mean = c + m
        return cls(n, mean, m2, m3, m4, m2 + n * mean * mean)

    def __add__(self, other: Moments) -> Moments:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        na, nb = self.n, other.n
        n = na + nb
        d = other.mean - self.mean
        m2 = self.m2 + other.m2 + d * d * na * nb / n
        m3 = (self.m3 + other.m3 + d**3 * na * nb * (na - nb) / n**2
              + 3.0 * d * (na * other.m2 - nb * self.m2) / n)
        m4 = (self.m4 + other.m4 + d**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
              + 6.0 * d * d * (na * na * other.m2 + nb * nb * self.m2) / n**2
              + 4.0 * d * (na * other.m3 - nb * self.m3) / n)
        return Moments(n, self.mean + d * nb / n, m2, m3, m4, self.sum_squares + other.sum_squares)

    @property
    def skewness(self) -> float:
        var = self.m2 / self.n if self.n else 0.0
        return self.m3 / self.n / var**1.5 if var > 0 else math.nan

    @property
    def kurtosis(self) -> float:
        """Excess (Fisher) kurtosis: 0 for a normal distribution."""
        var = self.m2 / self.n if self.n else 0.0
        return self.m4 / self.n / var**2 - 3.0 if var > 0 else math.nan

    @property
    def l2_norm(self) -> float:
        return math.sqrt(self.sum_squares)

    def summary(self) -> dict[str, float]:
        return {"skewness": self.skewness, "kurtosis": self.kurtosis, "l2_norm": self.l2_norm, "count": self.n}


DEFINITIONS = {
    "matrices": "the transformer blocks' weight matrices (attention and MLP projections) flattened together: no "
                "LayerNorm, no biases, no embeddings, no head",
    "per-matrix": "each of those weight matrices' own skewness and kurtosis, averaged over the matrices (L2 norm: "
                  "of the matrices together)",
    "flat": "every backbone parameter flattened together (LayerNorm gains and biases, embeddings included)",
}
DEFAULT_DEFINITION = "matrices"  # of the paper's order on a ViT-S (benchmarks/stat_definitions.py; README)


def check_definition(definition: str) -> str:
    from vitzoo_hf.errors import ZooError

    if definition not in DEFINITIONS:
        raise ZooError(f"unknown weight-statistics definition {definition!r}; choose from "
                       f"{', '.join(DEFINITIONS)} (default {DEFAULT_DEFINITION})")
    return definition


def is_block_matrix(name: str, shape: tuple[int, ...]) -> bool:
    """A 2-D weight of a linear layer outside the embeddings and the head (normalised key)."""
    return len(shape) == 2 and name.endswith(".weight") and not name.startswith(("embeddings.", "classifier."))


def by_definition(parts: Mapping[str, tuple[tuple[int, ...], Moments]]) -> dict[str, dict[str, float]]:
    """{definition: {skewness, kurtosis, l2_norm}} from per-tensor moments (normalised name -> (shape, moments))."""
    flat_m = sum((m for _, m in parts.values()), Moments())
    mats = [m for name, (shape, m) in sorted(parts.items()) if is_block_matrix(name, shape)]
    mat_m = sum(mats, Moments())
    nan = math.nan
    per = {"skewness": float(np.mean([m.skewness for m in mats])) if mats else nan,
           "kurtosis": float(np.mean([m.kurtosis for m in mats])) if mats else nan,
           "l2_norm": mat_m.l2_norm if mats else nan}
    out = {"flat": flat_m.summary(), "matrices": mat_m.summary() if mats else dict(per), "per-matrix": per}
    return {k: {s: v[s] for s in ("skewness", "kurtosis", "l2_norm")} for k, v in out.items()}


def moments(tensors: Iterable) -> Moments:
    """The moments of several tensors taken together (as if flattened and concatenated)."""
    return sum((Moments.of(t) for t in tensors), Moments())


def weight_statistics(weights: Mapping | str | Path, scope: str = "backbone",
                      per_tensor: bool = False, definition: str = "flat") -> dict:
    """Skewness, excess kurtosis and L2 norm of a checkpoint's weights (a safetensors path, or a mapping of
    normalised names to tensors, taken as given).

    `scope`: "backbone" (default: every parameter except the classification head) or "all". `per_tensor=True`
    returns {name: statistics} instead of one summary over the flattened scope. `definition` (of `DEFINITIONS`):
    "flat" (default here: the whole scope, with its element count) or one restricted to weight matrices."""
    check_definition(definition)
    if isinstance(weights, Mapping):
        parts = {k: (tuple(np.shape(v)), Moments.of(v)) for k, v in sorted(weights.items())}
    else:
        with open_checkpoint(weights, scope) as ckpt:
            parts = {k: (ckpt.shape(k), Moments.of(v)) for k, v in ckpt.items()}
    if per_tensor:
        return {k: m.summary() for k, (_, m) in parts.items()}
    if definition != "flat":
        return by_definition(parts)[definition]
    return sum((m for _, m in parts.values()), Moments()).summary()
