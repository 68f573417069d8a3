"""Which models share a pre-trained ancestor: clustering, and the number of trees when it is not given.

Pre-trained models of a zoo start from independent initialisations, so two of them are nearly orthogonal weight
vectors, while fine-tuning moves a model by a fraction of its norm. `estimate_trees` therefore works on the cosine
distance of the weight matrices and cuts the single-linkage tree (the minimum spanning tree) at its largest gap on
a linear scale: between the longest within-tree step and the shortest link between trees. A log scale would put
the gap inside a tree whenever two learning rates differ tenfold (steps 0.05 vs 0.5); on a linear scale those are
both small beside the ~1 between trees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.cluster.hierarchy import ClusterWarning, fcluster, linkage
from scipy.spatial.distance import squareform

from vitzoo_hf.errors import ZooError
from vitzoo_hf.lineage.weights import Weights, common_layers

MIN_GAP_RATIO = 2.0  # the link above the gap must be this many times the step below it, else one tree


def matrices(models: Sequence[Weights]) -> np.ndarray:
    """(n, size): every tensor with two or more axes, concatenated (LayerNorm gains and biases left out)."""
    names = [k for k in common_layers(models) if models[0][k].ndim >= 2] or common_layers(models)
    return np.stack([np.concatenate([m[k].ravel() for k in names]) for m in models]).astype(np.float64)


def cosine_distance(x: np.ndarray) -> np.ndarray:
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    d = 1.0 - np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(d, 0.0)
    return np.maximum(d, 0.0)


def estimate_trees(dist: np.ndarray, min_ratio: float = MIN_GAP_RATIO) -> int:
    """Number of trees: one more than the number of minimum-spanning-tree links above the largest (linear) gap
    between successive link lengths, if the link above the gap is at least `min_ratio` times the one below."""
    n = len(dist)
    if n <= 2:
        return 1
    heights = np.sort(linkage(squareform(dist, checks=False), method="single")[:, 2])
    gaps = np.diff(heights)
    best = int(np.argmax(gaps))
    if heights[best + 1] < min_ratio * max(heights[best], 1e-12):
        return 1
    return n - 1 - best  # links best+1 .. n-2 join trees


def cluster(models: Sequence[Weights] | None, dist: np.ndarray, n_clusters: int | None = None,
            method: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Cluster label per model.

    kmeans     k-means on the flattened weights (the paper's Appendix B: clustering by L2)
    ward       Ward linkage on the condensed `dist` (official MoTHeR code)
    ward_rows  Ward linkage with the rows of the square `dist` as observations (ModelTree: `linkage(D)`)
    single     single linkage on the condensed `dist` (ours: trees are chains of small steps)

    Without `n_clusters`, the number of trees is `estimate_trees` on the cosine distance of the weights.
    """
    n = len(dist)
    if n_clusters is None:
        if models is None:
            raise ZooError("estimating the number of trees needs the weights")
        k = estimate_trees(cosine_distance(matrices(models)))
    else:
        k = int(n_clusters)
    if not 1 <= k <= n:
        raise ZooError(f"cannot make {k} clusters of {n} models; give 1 <= --trees <= number of models")
    if k == 1:
        return np.zeros(n, dtype=int)
    if method == "kmeans":
        if models is None:
            raise ZooError("k-means clustering needs the weights, not only a distance matrix")
        from sklearn.cluster import KMeans

        names = common_layers(models)
        x = np.stack([np.concatenate([m[k_].ravel() for k_ in names]) for m in models])
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    if method in ("ward", "single"):
        z = linkage(squareform(dist, checks=False), method=method)
    elif method == "ward_rows":
        import warnings

        with warnings.catch_warnings():  # scipy rightly suspects a square distance matrix: ModelTree passes one
            warnings.simplefilter("ignore", ClusterWarning)
            z = linkage(dist, method="ward")
    else:
        raise ZooError(f"unknown clustering {method!r}; use kmeans, ward, ward_rows or single")
    return fcluster(z, k, criterion="maxclust") - 1
