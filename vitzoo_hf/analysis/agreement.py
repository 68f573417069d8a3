"""Behavioural diversity: how often two models predict the same class for the same validation image.

Computed from the predictions stored with every classifier checkpoint (no model is re-run). The paper reports
the mean ± std of the pairwise agreement over all pairs of models in a configuration group, and overall.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vitzoo_hf.analysis.performance import Summary


def agreement(a, b) -> float:
    """Fraction of validation examples on which two models predict the same class."""
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        raise ValueError(f"predictions over different validation sets ({x.shape} vs {y.shape})")
    return float((x == y).mean())


def agreement_matrix(predictions: Sequence) -> np.ndarray:
    """N x N pairwise agreement (1 on the diagonal)."""
    p = np.stack([np.asarray(x) for x in predictions]) if len(predictions) else np.zeros((0, 0))
    n = len(p)
    out = np.eye(n)
    for i in range(n - 1):
        out[i, i + 1:] = out[i + 1:, i] = (p[i + 1:] == p[i]).mean(axis=1)
    return out


def pairwise_agreements(predictions: Sequence) -> np.ndarray:
    """The agreement of every unordered pair of models (i < j)."""
    m = agreement_matrix(predictions)
    return m[np.triu_indices(len(m), k=1)]


def group_agreement(predictions: Sequence) -> Summary:
    """Mean ± std of the pairwise agreement within a group (empty with fewer than two models)."""
    return Summary.of(pairwise_agreements(predictions).tolist())
