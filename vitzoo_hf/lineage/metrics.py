"""Scores of a recovered model tree, as in the paper's Table 3: accuracy over the full directed adjacency
matrix (n x n, diagonal included, so dominated by true negatives) and F1 on directed edges."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np

Edge = tuple[Hashable, Hashable]


def adjacency(edges: Iterable[Edge], nodes: Sequence[Hashable]) -> np.ndarray:
    """A[i, j] = 1 iff nodes[i] is the parent of nodes[j]."""
    index = {node: i for i, node in enumerate(nodes)}
    a = np.zeros((len(nodes), len(nodes)), dtype=np.int8)
    for parent, child in edges:
        a[index[parent], index[child]] = 1
    return a


def score_adjacency(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    if pred.shape != truth.shape or pred.ndim != 2 or pred.shape[0] != pred.shape[1]:
        raise ValueError(f"adjacency matrices must be square and alike, got {pred.shape} and {truth.shape}")
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    tn = int(pred.size - tp - fp - fn)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / pred.size, "precision": precision, "recall": recall, "f1": f1,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def score(pred: Iterable[Edge], truth: Iterable[Edge], nodes: Sequence[Hashable] | None = None) -> dict[str, float]:
    """Accuracy / precision / recall / F1 of predicted (parent, child) edges against the true ones."""
    pred, truth = list(pred), list(truth)
    if nodes is None:
        nodes = sorted({n for e in pred + truth for n in e}, key=str)
    return score_adjacency(adjacency(pred, nodes), adjacency(truth, nodes))
