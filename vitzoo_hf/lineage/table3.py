"""The paper's Table 3 protocol on any zoo: sub-zoos of P pre-trained models x N children, the children varying
by fine-tuning epochs only, or by seed, learning rate, head or optimizer (filled up with epochs).

Nodes are checkpoints: a pre-trained backbone (its final epoch) or a fine-tune at epoch e >= 1. Epoch 0 of a
fine-tune is left out: its backbone is bit-identical to the parent's. True edges:

- truth="lineage" (default): every checkpoint's parent is its nearest ancestor present in the sub-zoo: the
  fine-tune's previous selected epoch, or, for its first selected epoch, the pre-trained backbone. In the
  "epochs" setting this is the paper's chain ("every model ... a descendant of the model with the next-lower
  number of training epochs").
- truth="backbone": in the branching settings every child's parent is the pre-trained backbone (the reading of
  the paper under which MoTHeR's F1 of 0.08-0.09 is about one correct edge per tree; the "epochs" setting stays
  a chain).

Each sub-zoo: P backbones drawn at random; per backbone, one group of fine-tunes that agree on every factor but
the varied one (drawn at random among the groups), and the N children spread as evenly as possible over the
group's variants, each variant contributing a random, sorted subset of its epochs 1..E.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vitzoo_hf.errors import ZooError

SETTINGS = {"epochs": None, "seed": "head_seed", "lr": "lr", "head": "head", "optimizer": "optimizer"}
"""Table 3's columns and the fine-tuning factor each one varies."""
FACTORS = ("head", "head_seed", "optimizer", "lr", "weight_decay", "momentum", "dataset", "batch_size")
OPTIMIZER_SETTINGS = ("weight_decay", "momentum")  # belong to the optimizer: they vary with it

Node = tuple[str, int]  # (model name, epoch)


@dataclass
class SubZoo:
    setting: str
    nodes: list[Node]
    edges: list[tuple[Node, Node]]
    backbone_of: dict[Node, str]


def _final_epoch(row: Mapping) -> int:
    e = row.get("final_epoch")
    return int(e if e is not None else row.get("epochs") or 0)


def _trained_epochs(row: Mapping) -> list[int]:
    """The fine-tune's checkpoints after epoch 0: `checkpoint_epochs` where the caller knows them (a zoo may
    hold only some epochs), else 1..final_epoch."""
    held = row.get("checkpoint_epochs")
    return sorted(e for e in held if e >= 1) if held is not None else list(range(1, _final_epoch(row) + 1))


def draw(models: Sequence[Mapping], setting: str, rng: random.Random, n_pretrained: int = 10,
         n_children: int = 12, truth: str = "lineage") -> SubZoo:
    """One random sub-zoo for one Table 3 setting, from the zoo's model rows (`Zoo.models`)."""
    if setting not in SETTINGS:
        raise ZooError(f"unknown Table 3 setting {setting!r}; use {', '.join(SETTINGS)}")
    if truth not in ("lineage", "backbone"):
        raise ZooError(f"unknown truth {truth!r}; use lineage or backbone")
    factor = SETTINGS[setting]
    eligible = _eligible(models, factor)
    if not eligible:
        raise ZooError(f"the zoo has no pre-trained model whose fine-tunes vary by {setting} alone "
                       "(with at least one trained epoch); choose another setting or a zoo with that factor")
    backbones = sorted(eligible)
    chosen = rng.sample(backbones, min(n_pretrained, len(backbones)))
    nodes: list[Node] = []
    edges: list[tuple[Node, Node]] = []
    backbone_of: dict[Node, str] = {}
    final = {row["name"]: _final_epoch(row) for row in models}
    for b in chosen:
        root: Node = (b, final.get(b, 0))
        nodes.append(root)
        backbone_of[root] = b
        variants = list(rng.choice(eligible[b]))
        rng.shuffle(variants)
        counts = _spread(n_children, [len(_trained_epochs(v)) for v in variants], rng)
        for variant, k in zip(variants, counts, strict=True):
            epochs = sorted(rng.sample(_trained_epochs(variant), k))
            previous = root
            for e in epochs:
                node = (variant["name"], e)
                nodes.append(node)
                backbone_of[node] = b
                parent = root if truth == "backbone" and factor is not None else previous
                edges.append((parent, node))
                previous = node
    return SubZoo(setting, nodes, edges, backbone_of)


def _eligible(models: Sequence[Mapping], factor: str | None) -> dict[str, list[list[Mapping]]]:
    """Per pre-trained model, its groups of fine-tunes varying by `factor` alone (at least one trained epoch)."""
    children: dict[str, list[Mapping]] = defaultdict(list)
    for row in models:
        if row["stage"] == "finetuning" and _trained_epochs(row):
            children[row["parent"]].append(row)
    eligible = {}
    for parent, kids in children.items():
        groups = _groups(kids, factor)
        if groups:
            eligible[parent] = groups
    return eligible


def available(models: Sequence[Mapping], setting: str) -> bool:
    """Whether the zoo has fine-tunes that vary by this setting's factor alone."""
    return bool(_eligible(models, SETTINGS[setting]))


def _groups(kids: Sequence[Mapping], factor: str | None) -> list[list[Mapping]]:
    """Fine-tunes of one backbone that differ only in `factor` (for "epochs": single fine-tunes)."""
    if factor is None:
        return [[k] for k in kids]
    by_rest: dict[tuple, dict] = defaultdict(dict)
    for k in kids:
        ignored = (factor, *OPTIMIZER_SETTINGS) if factor == "optimizer" else (factor,)
        rest = tuple(k.get(f) for f in FACTORS if f not in ignored)
        by_rest[rest].setdefault(k.get(factor), k)
    return [list(g.values()) for g in by_rest.values() if len(g) >= 2]


def _spread(n: int, capacity: Sequence[int], rng: random.Random) -> list[int]:
    """n children over variants, as evenly as possible within each variant's number of epochs; at least one each."""
    counts = [1] * len(capacity) if n >= len(capacity) else [0] * len(capacity)
    if n < len(capacity):
        for i in rng.sample(range(len(capacity)), n):
            counts[i] = 1
        return counts
    left = n - len(capacity)
    while left > 0:
        open_ = [i for i, c in enumerate(capacity) if counts[i] < c]
        if not open_:
            break  # fewer checkpoints than children asked for: take them all
        low = min(counts[i] for i in open_)
        i = rng.choice([i for i in open_ if counts[i] == low])
        counts[i] += 1
        left -= 1
    return counts


Loader = Callable[[str, int], object]


Method = Callable[[int | None], Callable[[list], list[tuple[int, int]]]]
"""A method factory: number of trees (None: estimate it) -> function(weights) -> (parent, child) index pairs."""


def _names(value: str | Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    for v in names:
        if v not in allowed:
            raise ZooError(f"unknown {what} {v!r}; use {' or '.join(allowed)}")
    if not names:
        raise ZooError(f"give at least one {what}")
    return names


def evaluate(models: Sequence[Mapping], load: Loader, methods: Sequence[str] | Mapping[str, Method],
             settings: Sequence[str], draws: int = 5, seed: int = 0, n_pretrained: int = 10, n_children: int = 12,
             truth: str | Sequence[str] = "lineage", trees: str | Sequence[str] = "given",
             progress: bool = True) -> tuple[list[dict], dict]:
    """Run every method on `draws` random sub-zoos per setting. Each method sees only the weights, in a shuffled
    order, and the number of trees (the number of pre-trained models drawn; trees="estimated": not even that).
    `methods`: names of `vitzoo_hf.lineage.METHODS`, or name -> `Method` factory. `truth` and `trees` may each
    be a sequence: every draw is then scored under each truth reading and run in each tree-count mode.
    Returns one row per (truth, trees, setting, draw, method) and, per setting, the first draw's sub-zoo and
    predictions under the first truth and tree-count mode (for plotting). Settings the zoo cannot support (no
    fine-tunes varying by that factor alone) are skipped.

    Draws: draw d of a setting uses its own generator, seeded by (seed, setting, d), for both the sub-zoo and the
    order the methods see; draws are independent, so two draws may share nodes (never all of them unless the
    zoo offers one sub-zoo only). The truth reading changes only the true edges, not the nodes drawn."""
    from tqdm.auto import tqdm

    from vitzoo_hf.lineage import method
    from vitzoo_hf.lineage.clusters import cosine_distance, estimate_trees, matrices
    from vitzoo_hf.lineage.metrics import score

    truths = _names(truth, ("lineage", "backbone"), "truth")
    tree_modes = _names(trees, ("given", "estimated"), "trees option")
    builtin = not isinstance(methods, Mapping)
    factories: Mapping[str, Method] = (methods if isinstance(methods, Mapping)
                                       else {name: (lambda k, name=name: method(name, k)) for name in methods})
    cache: dict[Node, object] = {}
    rows: list[dict] = []
    examples: dict = {}
    settings = [s for s in settings if available(models, s)]
    if not settings:
        raise ZooError("the zoo has no fine-tunes with a trained epoch that vary by epochs, seed, lr, head or "
                       "optimizer; lineage needs a zoo with fine-tuned models")
    jobs = [(s, d) for s in settings for d in range(draws)]
    for setting, d in tqdm(jobs, desc="table3", unit="draw", disable=not progress):
        key = f"{seed}/{setting}/{d}"
        rng = random.Random(key)
        sub = draw(models, setting, rng, n_pretrained, n_children, truths[0])
        order = list(range(len(sub.nodes)))
        rng.shuffle(order)
        shuffled = [sub.nodes[i] for i in order]
        true_edges = {truths[0]: sub.edges}
        for t in truths[1:]:  # the same generator state gives the same nodes; only the parents differ
            other = draw(models, setting, random.Random(key), n_pretrained, n_children, t)
            assert other.nodes == sub.nodes
            true_edges[t] = other.edges
        for node in shuffled:
            if node not in cache:
                cache[node] = load(*node)
        weights = [cache[node] for node in shuffled]
        given = len({sub.backbone_of[n] for n in sub.nodes})
        # Built-in methods estimate the number of trees with exactly this call (`clusters.cluster`), so a run
        # with the estimate is the run with None; it is made once per number.
        estimate = estimate_trees(cosine_distance(matrices(weights))) if builtin else None
        made: dict = {}
        for mode in tree_modes:
            n_trees = given if mode == "given" else None
            for name, factory in factories.items():
                memo = (name, n_trees if n_trees is not None or not builtin else estimate)
                if memo not in made:
                    made[memo] = [(shuffled[p], shuffled[c]) for p, c in factory(memo[1])(weights)]
                pred = made[memo]
                for t in truths:
                    s = score(pred, true_edges[t], sub.nodes)
                    rows.append({"truth": t, "trees": mode, "setting": setting, "draw": d, "method": name,
                                 "nodes": len(sub.nodes), "true_edges": len(true_edges[t]), **s})
                if d == 0 and mode == tree_modes[0]:
                    examples.setdefault(setting, (sub, {}))[1][name] = pred
    return rows, examples


def summarise(rows: Sequence[Mapping], settings: Sequence[str]) -> list[dict]:
    """Per method and metric: mean and std over draws for each setting."""
    import numpy as np

    out = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        for metric in ("accuracy", "f1"):
            entry = {"method": method, "metric": metric}
            for s in settings:
                vals = [r[metric] for r in rows if r["method"] == method and r["setting"] == s]
                entry[s] = (float(np.mean(vals)), float(np.std(vals))) if vals else None
            out.append(entry)
    return out


def markdown(summary: Sequence[Mapping], settings: Sequence[str], digits: int = 3) -> str:
    head = ["method", "metric", *settings]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [f"{e[s][0]:.{digits}f} ± {e[s][1]:.{digits}f}" if e[s] else "–" for s in settings]
        lines.append("| " + " | ".join([e["method"], e["metric"], *cells]) + " |")
    return "\n".join(lines) + "\n"
