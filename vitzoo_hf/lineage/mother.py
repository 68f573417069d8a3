"""MoTHeR (Horwitz et al. 2024): cluster models by weight distance (one cluster per ancestor), then, inside each
cluster, the minimum spanning arborescence of M = d_c + lambda * mean(d_c) * T + D_inf, where T penalises
edges whose kurtosis change goes the wrong way.

Defaults follow the zoo paper's Appendix B; every point where the paper, the official code
(eliahuhorwitz/MoTHer) and the port the zoo's authors used (kschuerholt/ModelTree) differ is an option:

option            Appendix B (default)        official code                    ModelTree port
clustering        "kmeans" on the weights     "ward" on the condensed sum of   "ward_rows": Ward with the rows of
                  (= clustering by L2)        mean |dW| over square matrices   the square tree distance matrix as
                                                                               observations (`linkage(D)` on D)
distance          "l2" (Euclidean, all)       "linf_minmax" (q,k,v,o), min-max "l2_minmax_mean" (given layers),
                                              statistics per tree              min-max over the whole graph
kurtosis_layers   "matrices"                  "attention_output"               user given
kurtosis_reduce   "mean"                      "sum"                            "mean"
direction         "decrease" (text: kurtosis  "decrease" (rev=False)           "increase" (T not transposed)
                  falls during fine-tuning)
lam               0.3 (not given; official)   0.3                              0.4
mean_diagonal     False (eq. 2: off-diag.)    True                             True

One deliberate deviation from the official code: its L-infinity distance takes the largest element of the
*signed* difference W_i - W_j for i < j in file order, so its edges depend on the order the models are listed
in. We take both signs (the largest |W_i - W_j|, min-max normalised over both orientations), which is the same
distance for every order. The number of trees, when not given, comes from `clusters.estimate_trees` for every
variant (none of the references estimates it: they are given the true number).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import kurtosis as scipy_kurtosis

from vitzoo_hf.errors import ZooError
from vitzoo_hf.lineage.clusters import cluster
from vitzoo_hf.lineage.weights import Weights, common_layers, select

Edge = tuple[int, int]


# ---- distances (pure: stacked layers in, n x n matrix out) -------------------------------------------------

def l2_distance(stacked: dict[str, np.ndarray]) -> np.ndarray:
    """Euclidean distance between the concatenated weights."""
    sq = sum(cdist(x, x, "sqeuclidean") for x in stacked.values())
    return np.sqrt(np.maximum(sq, 0.0))


def l2_minmax_mean(stacked: dict[str, np.ndarray]) -> np.ndarray:
    """ModelTree: per-layer L2, divided by that layer's largest pairwise distance, averaged over layers."""
    out = np.zeros((next(iter(stacked.values())).shape[0],) * 2)
    for x in stacked.values():
        d = cdist(x, x, "euclidean")
        span = d.max() - d.min()
        out += (d - d.min()) / span if span > 0 else 0.0
    return out / len(stacked)


def linf_minmax(stacked: dict[str, np.ndarray]) -> np.ndarray:
    """Official MoTHeR distance: per layer, the differences W_i - W_j of every pair, min-max normalised over all
    pairs and elements, the pair's largest normalised element; the model distance is the maximum over layers.
    Both orientations of each pair count (see the module docstring), so min = -max."""
    n = next(iter(stacked.values())).shape[0]
    out = np.zeros((n, n))
    iu = np.triu_indices(n, 1)
    for x in stacked.values():
        largest = np.abs(x[iu[0]] - x[iu[1]]).max(axis=1)  # max over elements of both W_i - W_j and W_j - W_i
        hi = largest.max() if len(largest) else 0.0
        per_pair = (largest + hi) / (2 * hi) if hi > 0 else np.zeros(len(largest))
        layer = np.zeros((n, n))
        layer[iu] = per_pair
        out = np.maximum(out, layer + layer.T)
    return out


def mean_abs_sum(stacked: dict[str, np.ndarray]) -> np.ndarray:
    """Official clustering distance: sum over layers of mean |W_i - W_j|."""
    return sum(cdist(x, x, "cityblock") / x.shape[1] for x in stacked.values())


DISTANCES = {"l2": l2_distance, "l2_minmax_mean": l2_minmax_mean, "linf_minmax": linf_minmax,
             "mean_abs": mean_abs_sum}
DISTANCE_LAYERS = {"l2": "all", "l2_minmax_mean": "matrices", "linf_minmax": "attention", "mean_abs": "square"}


def distance_matrix(models: Sequence[Weights], kind: str = "l2", layers: str | None = None) -> np.ndarray:
    if kind not in DISTANCES:
        raise ZooError(f"unknown distance {kind!r}; use one of {', '.join(DISTANCES)}")
    names = common_layers(models)
    chosen = select(names, {k: models[0][k].shape for k in names}, layers or DISTANCE_LAYERS[kind])
    return DISTANCES[kind]({k: np.stack([m[k].ravel() for m in models]).astype(np.float64) for k in chosen})


# ---- kurtosis -------------------------------------------------------------------------------------------------

def kurtosis_scores(models: Sequence[Weights], layers: str = "matrices", reduce: str = "mean") -> np.ndarray:
    """Excess (Fisher) kurtosis per model, scipy defaults (bias=True) as the official code; `layers="all"` takes
    one kurtosis over the whole flattened backbone, otherwise one per selected layer, reduced by sum or mean."""
    names = common_layers(models)
    if layers == "all":
        return np.array([scipy_kurtosis(np.concatenate([m[k].ravel() for k in names])) for m in models])
    chosen = select(names, {k: models[0][k].shape for k in names}, layers)
    # one scipy call per layer over every model (axis=1): the per-call overhead of 13 layers x n models x draws
    # x presets was 40 % of the demo's lineage stage
    per_layer = np.stack([scipy_kurtosis(np.stack([m[k].ravel() for m in models]), axis=1) for k in chosen], axis=1)
    if reduce == "sum":
        return per_layer.sum(axis=1)
    if reduce == "mean":
        return per_layer.mean(axis=1)
    raise ZooError(f"unknown kurtosis reduction {reduce!r}; use sum or mean")


# ---- tree -------------------------------------------------------------------------------------------------------

def prior_matrix(dist: np.ndarray, kurt: np.ndarray, lam: float = 0.3, direction: str = "decrease",
                 mean_diagonal: bool = False) -> np.ndarray:
    """M[i, j] = cost of the edge i -> j (i the parent of j): d_ij + lam * mean(d) * T_ij, infinite diagonal.

    direction="decrease": T_ij = 1 iff kurt[j] > kurt[i] (a child is expected to have lower kurtosis).
    direction="increase": T_ij = 1 iff kurt[i] > kurt[j] (Appendix B's formula read with M_ij = edge i -> j).
    """
    n = len(dist)
    if direction == "decrease":
        t = (kurt[None, :] > kurt[:, None]).astype(float)
    elif direction == "increase":
        t = (kurt[:, None] > kurt[None, :]).astype(float)
    else:
        raise ZooError(f"unknown kurtosis direction {direction!r}; use decrease or increase")
    mean = dist.mean() if mean_diagonal else (dist.sum() / (n * n - n) if n > 1 else 0.0)
    m = dist + lam * mean * t
    np.fill_diagonal(m, np.inf)
    return m


def arborescence(cost: np.ndarray) -> list[Edge]:
    """Chu-Liu/Edmonds minimum spanning arborescence over the complete digraph with edge i -> j costing cost[i, j]."""
    import networkx as nx

    n = len(cost)
    if n <= 1:
        return []
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_weighted_edges_from((i, j, float(cost[i, j])) for i in range(n) for j in range(n)
                              if i != j and np.isfinite(cost[i, j]))
    tree = nx.minimum_spanning_arborescence(g, attr="weight", preserve_attrs=False)
    return sorted((int(u), int(v)) for u, v in tree.edges())


@dataclass
class MotherOptions:
    n_clusters: int | None = None
    clustering: str = "kmeans"
    distance: str = "l2"
    kurtosis_layers: str = "matrices"
    kurtosis_reduce: str = "mean"
    direction: str = "decrease"
    lam: float = 0.3
    mean_diagonal: bool = False
    seed: int = 0

    per_tree_distance: bool = False  # official: min-max statistics of the tree distance per tree (cluster)

    @classmethod
    def variant(cls, name: str, **overrides) -> MotherOptions:
        """Named variants: `paper` (Appendix B), `official` (eliahuhorwitz/MoTHer), `modeltree` (the port)."""
        presets = {
            "paper": {},
            "official": dict(clustering="ward", distance="linf_minmax", kurtosis_layers="attention_output",
                             kurtosis_reduce="sum", direction="decrease", lam=0.3, mean_diagonal=True,
                             per_tree_distance=True),
            "modeltree": dict(clustering="ward_rows", distance="l2_minmax_mean", kurtosis_layers="matrices",
                              kurtosis_reduce="mean", direction="increase", lam=0.4, mean_diagonal=True),
        }
        if name not in presets:
            raise ZooError(f"unknown MoTHeR variant {name!r}; use {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})


def mother(models: Sequence[Weights], options: MotherOptions | None = None) -> list[Edge]:
    """Predicted (parent, child) index pairs over `models`."""
    o = options or MotherOptions()
    dist = None if o.per_tree_distance else distance_matrix(models, o.distance)
    if o.clustering == "ward":  # official: its own clustering distance
        labels = cluster(models, distance_matrix(models, "mean_abs"), o.n_clusters, "ward", o.seed)
    else:  # k-means on the weights (the paper), Ward on the rows of the tree distance (ModelTree)
        labels = cluster(models, dist if dist is not None else distance_matrix(models, o.distance), o.n_clusters,
                         o.clustering, o.seed)
    kurt = kurtosis_scores(models, o.kurtosis_layers, o.kurtosis_reduce)
    edges: list[Edge] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) == 1:
            continue
        d = distance_matrix([models[i] for i in idx], o.distance) if dist is None else dist[np.ix_(idx, idx)]
        m = prior_matrix(d, kurt[idx], o.lam, o.direction, o.mean_diagonal)
        edges += [(int(idx[i]), int(idx[j])) for i, j in arborescence(m)]
    return sorted(edges)
