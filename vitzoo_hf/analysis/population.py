"""The one place analysis reads a `Zoo`: everything the tables and figures need, as plain records and arrays.

Per-checkpoint statistics come from the metadata (`zoo.checkpoints`: computed at publish time) and are computed
from the weights only where missing; predictions come from the stored ones (`zoo.predictions`); distances between
final checkpoints come from the weights ("exact": one streaming Gram pass) or from the metadata's sketches
("sketch": no weights at all). Nothing below this module knows where the zoo lives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitzoo_hf.analysis.checkpoint import STAT_COLUMNS, WEIGHT_STATS, checkpoint_statistics, column
from vitzoo_hf.analysis.weights import DEFAULT_DEFINITION, check_definition
from vitzoo_hf.errors import ZooError

DISTANCE_METHODS = ("auto", "exact", "sketch")


@dataclass
class Population:
    """A zoo as analysis sees it. `models`: one dict per complete model (its `models` row plus the statistics
    of its final checkpoint and, for fine-tunes, its final `predictions`); `checkpoints`: every checkpoint row
    with statistics filled; `distances`: the final checkpoints' distance matrix, rows in `distance_names` order
    (pre-trained models first, then the fine-tunes grouped by parent)."""

    name: str
    models: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]
    distance_names: list[str] = field(default_factory=list)
    distances: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    distance_method: str = "exact"
    filled: int = 0  # checkpoints whose statistics were computed here (missing from the metadata)
    statistics: str = DEFAULT_DEFINITION  # the weight-statistics definition in `models` (analysis.weights)

    def select(self, **factors: Any) -> list[dict[str, Any]]:
        return [m for m in self.models if all(m.get(k) == v for k, v in factors.items())]

    @property
    def pretrained(self) -> list[dict[str, Any]]:
        return self.select(stage="pretraining")

    @property
    def finetuned(self) -> list[dict[str, Any]]:
        return self.select(stage="finetuning")

    def distance(self, a: str, b: str) -> float:
        i, j = self.distance_names.index(a), self.distance_names.index(b)
        return float(self.distances[i, j])


def _missing(row: dict[str, Any], has_parent: bool, definition: str = DEFAULT_DEFINITION) -> bool:
    """Statistics to compute: the definition's own columns (metadata published before they existed has only the
    unsuffixed ones, whose definition was then `flat`: they are never taken for another)."""
    return (any(row.get(c) is None for c in (*(column(s, definition) for s in WEIGHT_STATS), "sketch"))
            or (has_parent and row.get("l2_to_parent") is None))


def collect(zoo, distances: str = "auto", local: bool | None = None, progress: bool = True,
            statistics: str = DEFAULT_DEFINITION) -> Population:
    """Read `zoo` (a `vitzoo_hf.zoo.Zoo`) into a `Population`.

    `distances`: "exact" (from the weights), "sketch" (from the metadata's sketches) or "auto" (exact for a local
    zoo, sketches for a published one when every final checkpoint has one). `local`: whether the weights are on
    disk (default: the zoo has a `root` folder). `statistics`: the weight-statistics definition the models'
    skewness, kurtosis and L2 norm follow (`analysis.weights.DEFINITIONS`)."""
    from tqdm.auto import tqdm

    check_definition(statistics)
    if distances not in DISTANCE_METHODS:
        raise ZooError(f"unknown distance method {distances!r}; allowed: {', '.join(DISTANCE_METHODS)}")
    local = hasattr(zoo, "root") if local is None else local
    rows = [dict(r) for r in zoo.models]
    by_name = {r["name"]: r for r in rows}
    complete = [r for r in rows if r.get("final_epoch") is not None]
    if not complete:
        raise ZooError(f"zoo {zoo.name!r} has no complete model yet; train it first (`vitzoo generate`)")
    checkpoints = [dict(r) for r in zoo.checkpoints]

    todo = [c for c in checkpoints if _missing(c, by_name.get(c["name"], {}).get("parent") is not None, statistics)]
    for c in tqdm(todo, desc="weight statistics", unit="ckpt", disable=not progress or not todo):
        parent = by_name[c["name"]].get("parent")
        parent_path = zoo.weights_path(parent) if parent else None
        c.update(checkpoint_statistics(zoo.weights_path(c["name"], c["epoch"]), parent_path))

    final = {(c["name"], c["epoch"]): c for c in checkpoints}
    models = []
    for r in complete:
        ckpt = final.get((r["name"], r["final_epoch"]))
        if ckpt is None:
            continue
        m = {**r, **{k: ckpt.get(k) for k in STAT_COLUMNS},
             **{s: ckpt.get(column(s, statistics)) for s in WEIGHT_STATS}}
        m["predictions"] = (np.asarray(zoo.predictions(r["name"]), dtype=np.int64)
                            if r["stage"] == "finetuning" else None)
        models.append(m)

    pop = Population(zoo.name, models, checkpoints, filled=len(todo), statistics=statistics)
    method = distances
    if method == "auto":
        method = "exact" if local or any(m["sketch"] is None for m in models) else "sketch"
    _final_distances(pop, zoo, method, progress)
    return pop


def _final_distances(pop: Population, zoo, method: str, progress: bool) -> None:
    """The distance matrix of every final checkpoint, pre-trained models first (the centring reference of the
    exact Gram pass is the first of them)."""
    from vitzoo_hf.analysis.distances import pairwise_distances
    from vitzoo_hf.analysis.sketch import sketch_distances

    order = pop.pretrained + sorted(pop.finetuned, key=lambda m: (m["parent"], m["name"]))
    pop.distance_names = [m["name"] for m in order]
    pop.distance_method = method
    if method == "sketch":
        missing = [m["name"] for m in order if m["sketch"] is None]
        if missing:
            raise ZooError(f"{len(missing)} final checkpoints (e.g. {missing[0]}) have no sketch in the metadata; "
                           "use --distances exact (downloads the weights) or republish with statistics")
        pop.distances = sketch_distances([m["sketch"] for m in order])
    else:
        pop.distances = pairwise_distances([zoo.weights_path(n) for n in pop.distance_names], progress=progress)
