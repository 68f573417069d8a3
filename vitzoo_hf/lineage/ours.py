"""Our lineage method: find each cluster's ancestor from the geometry of the fine-tuning runs (plus weight
arrows), then give every checkpoint its parent among the checkpoints nearer that ancestor.

Why MoTHeR collapses when siblings branch: it orients edges by kurtosis, which barely moves (and not
monotonically) over a fine-tuning run, and its minimum spanning arborescence on plain L2 happily chains a
sibling onto a sibling or onto a slower run that lies near the same path. What we use instead:

1. Rays from the ancestor. Each fine-tuning run is a ray leaving the pre-trained weights; different runs leave
   in different, roughly orthogonal directions (independent noise), with a shared drift (the same new task).
   So, seen from the true ancestor r:
   - every other model is reachable along a time-ordered tree with little detour (cost of `tree_from_root`);
   - no two of r's children lie on opposite sides of r (an interior checkpoint of a run has its predecessor
     and successor in opposite directions);
   - r is an extreme point: no model lies behind r with respect to the cloud's mean (a slow run's early
     checkpoints, almost on top of r, have r itself behind them).
2. Arrows for what geometry cannot decide (a single run: both ends look alike). Fine-tuning changes a weight
   tensor in one of two ways, and each says which end came first:
   - sideways: the update is nearly orthogonal to the weights (gradient noise, Adam's normalised steps), so
     the norm grows downstream, by Pythagoras (the paper's zoo: mean L2 norm 1636 -> 1689 supervised);
   - a rescaling: weight decay pulls the tensor towards zero along itself, so the norm shrinks downstream
     (SGD with weight decay 0.1 in the suite: 13.0 -> 9.8 in 8 epochs, every step within 1 degree of radial).
   Seen from both of its ends, a rescaling step is radial (|cos(step, weights)| large at both ends, inwards
   at one, outwards at the other); a sideways step is orthogonal to the weights at its start, even when Adam
   makes it radial at its end (cosines +0.1 / -0.9 on the suite's AdamW runs). `arrows` classifies every
   pair and tensor so and votes; "fine-tuning adds norm" alone reversed all 24 SGD runs of the weight-decay
   suite zoo (F1 0.00), the two-way rule orients all of them.
3. Parents. With the ancestor r fixed, the distance from r orders the checkpoints in time; an edge p -> c costs
   d(p, c) + alpha * (d(r, p) + d(p, c) - d(r, c)): the step plus the detour that passing through p would add.
   An earlier checkpoint of c's own run is almost on the way; a sibling run is a long detour, except a sibling
   with a smaller learning rate (same data order, same head seed): it follows the same path more slowly, so
   its checkpoints lie on the way too. Hence a structural prior: runs branch only at the pre-trained model
   (every other checkpoint has one successor at most), and the cheapest split into runs is an assignment
   problem (`runs_from_root`). On the suite it lifts lr F1 from 0.92 to 0.97 (weight decay 0.1 zoo) and
   0.83 to 0.87 (no weight decay, mini's lr grid), seed from 0.94 to 1.00. A zoo whose fine-tunes have
   fine-tunes of their own breaks the prior: `OursOptions(runs=False)` takes each node's cheapest parent.

Clusters (one per pre-trained model): single linkage on the cosine distance of the weight matrices, the number
of trees given or estimated from the largest gap of the minimum spanning tree (`clusters.estimate_trees`).
Only backbone tensors are used; node order does not matter. The constants (alpha, beta, delta, margin) were set
on an earlier development zoo (the smoke architecture with the mini grid), RESCALING on the suite of
benchmarks/lineage_suite.py (its held-out zoo not used), not on the zoo whose Table 3 is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitzoo_hf.errors import ZooError
from vitzoo_hf.lineage.clusters import cluster, cosine_distance, matrices
from vitzoo_hf.lineage.mother import distance_matrix
from vitzoo_hf.lineage.weights import Weights, common_layers

Edge = tuple[int, int]


RESCALING = 0.15  # both ends see the step over 0.15 in cosine off sideways, one inwards, one outwards: decay


@dataclass
class OursOptions:
    n_clusters: int | None = None
    clustering: str = "single"
    alpha: float = 1.0  # weight of the detour in a parent's cost
    beta: float = 2.0  # root score: per pair of the root's children on opposite sides
    delta: float = 2.0  # root score: per model lying behind the root
    margin: float | None = 1.0  # candidates within this of the best geometric score; the arrows pick among them
    # (None: the arrows alone)
    runs: bool = True  # runs branch only at the pre-trained model (`runs_from_root`); False: greedy parents
    seed: int = 0


def tensors(models: Sequence[Weights]) -> list[str]:
    """The weight tensors with two or more axes (matrices, the patch convolution, class token, position
    embeddings); LayerNorm gains and biases are left out."""
    names = [k for k in common_layers(models) if models[0][k].ndim >= 2]
    if not names:
        raise ZooError("the models have no weight matrix; our lineage method needs at least one")
    return names


def layer_norms(models: Sequence[Weights]) -> np.ndarray:
    """(n models, n tensors): the norm of every tensor of `tensors`."""
    return np.array([[float(np.linalg.norm(m[k].astype(np.float64))) for k in tensors(models)] for m in models])


def arrows(models: Sequence[Weights], rescaling: float = RESCALING) -> np.ndarray:
    """A[i, j] in [-1, 1]: the share of weight tensors whose change says "i is upstream of j", minus the share
    that says the opposite (antisymmetric). Module docstring, point 2: per tensor, a change that is largely a
    rescaling (the step x_j - x_i makes a cosine above `rescaling` in size with both x_i and x_j, inwards at one
    end, outwards at the other) is weight decay, and the norm shrinks downstream; any other change (sideways at
    one end at least) adds norm downstream."""
    names = tensors(models)
    n = len(models)
    a = np.zeros((n, n))
    for k in names:
        x = np.stack([m[k].ravel() for m in models]).astype(np.float64)
        g = x @ x.T
        sq = np.diag(g)
        norm = np.sqrt(sq)
        step2 = np.maximum(sq[:, None] + sq[None, :] - 2 * g, 1e-300)
        step = np.sqrt(step2)
        out_of_i = (g - sq[:, None]) / (step * np.maximum(norm[:, None], 1e-300))  # cos(x_j - x_i, x_i)
        rescaled = (np.minimum(np.abs(out_of_i), np.abs(out_of_i.T)) > rescaling) & (out_of_i * out_of_i.T < 0)
        grows = np.sign(norm[None, :] - norm[:, None])  # +1 where j has the larger norm
        a += np.where(rescaled, -grows, grows)
    np.fill_diagonal(a, 0.0)
    return a / len(names)


def tree_from_root(dist: np.ndarray, root: int, alpha: float = 1.0) -> list[Edge]:
    """Parent of each node: among nodes nearer the root, the one with the smallest step + alpha * detour."""
    t = dist[root]
    order = sorted(range(len(dist)), key=lambda i: (i != root, t[i], i))  # root first, then by distance from it
    edges = []
    for pos in range(1, len(order)):
        c = order[pos]
        earlier = np.array(order[:pos])
        cost = dist[earlier, c] + alpha * (t[earlier] + dist[earlier, c] - t[c])
        edges.append((int(earlier[int(np.argmin(cost))]), c))
    return sorted(edges)


def runs_from_root(dist: np.ndarray, root: int, alpha: float = 1.0) -> list[Edge]:
    """Parents under "runs branch only at the pre-trained model": every checkpoint but the root has at most one
    child (the next checkpoint of its run), so the non-root nodes split into runs leaving the root. The cheapest
    split (step + alpha * detour per edge) is an assignment problem, solved exactly; parents are nearer the root
    than their children, so there are no cycles. Module docstring, point 3."""
    from scipy.optimize import linear_sum_assignment

    n = len(dist)
    t = dist[root]
    kids = [i for i in range(n) if i != root]
    if not kids:
        return []
    big = 1e6 * (float(dist.max()) + 1.0)
    # rows: the root, once per child it may take, then every other node once; columns: the children
    rows = [root] * len(kids) + kids
    cost = np.full((len(rows), len(kids)), big)
    for j, c in enumerate(kids):
        for i, p in enumerate(rows):
            if p == c or (p != root and (t[p], p) >= (t[c], c)):
                continue
            cost[i, j] = dist[p, c] + alpha * (t[p] + dist[p, c] - t[c])
    r, c = linear_sum_assignment(cost)
    return sorted((int(rows[i]), int(kids[j])) for i, j in zip(r, c, strict=True))


def tree_cost(dist: np.ndarray, root: int, edges: Sequence[Edge], alpha: float) -> float:
    t = dist[root]
    return float(sum(dist[p, c] + alpha * (t[p] + dist[p, c] - t[c]) for p, c in edges))


def root_scores(x: np.ndarray, dist: np.ndarray, o: OursOptions) -> np.ndarray:
    """Geometric ancestor score, lower is more ancestor-like (module docstring, point 1).
    x: (n, size) flattened weights; dist: their L2 distances."""
    n = len(x)
    positive = dist[dist > 0]
    scale = float(np.median(positive)) if positive.size else 1.0
    out = np.zeros(n)
    for r in range(n):
        edges = tree_from_root(dist, r, o.alpha)
        rel = x - x[r]
        length = np.linalg.norm(rel, axis=1) + 1e-12
        kids = [c for p, c in edges if p == r]
        unit = rel[kids] / length[kids, None]
        cos = unit @ unit.T
        opposite = int(np.sum(cos[np.triu_indices(len(kids), 1)] < -0.5))
        towards_mean = x.mean(axis=0) - x[r]
        behind = int(np.sum(rel @ towards_mean / (length * (np.linalg.norm(towards_mean) + 1e-12)) < -0.05))
        out[r] = tree_cost(dist, r, edges, o.alpha) / scale + o.beta * opposite + o.delta * behind
    return out


def find_root(x: np.ndarray, dist: np.ndarray, arrow: np.ndarray, o: OursOptions) -> int:
    """The geometric score narrows the candidates (a single run leaves both of its ends close); the arrows
    (point 2) pick among those within `margin` of the best: the candidate most of the others lie downstream of."""
    votes = arrow.sum(axis=1)
    if o.margin is None:
        return int(np.argmax(votes))
    score = root_scores(x, dist, o)
    candidates = np.flatnonzero(score <= score.min() + o.margin)
    return int(candidates[np.argmax(votes[candidates])])


def ours(models: Sequence[Weights], options: OursOptions | None = None) -> list[Edge]:
    """Predicted (parent, child) index pairs over `models`."""
    o = options or OursOptions()
    dist = distance_matrix(models, "l2")
    labels = cluster(models, cosine_distance(matrices(models)), o.n_clusters, o.clustering, o.seed)
    names = common_layers(models)
    edges: list[Edge] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) == 1:
            continue
        members = [models[i] for i in idx]
        x = np.stack([np.concatenate([m[k].ravel() for k in names]) for m in members]).astype(np.float64)
        d = dist[np.ix_(idx, idx)]
        root = find_root(x, d, arrows(members), o)
        tree = runs_from_root(d, root, o.alpha) if o.runs else tree_from_root(d, root, o.alpha)
        edges += [(int(idx[p]), int(idx[c])) for p, c in tree]
    return sorted(edges)
