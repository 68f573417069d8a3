"""Train/test splits by lineage: a backbone and all its descendants fall on one side, so no meta-model is tested
on a checkpoint whose run (or whose parent's run) it saw in training.

Two checkpoints of one run share almost all their weights and their targets; a split by checkpoint leaks the
answer. The unit here is the lineage (the root backbone of a model's tree, `level="lineage"`) or, for zoos with
too few trees, the run (`level="run"`: all epochs of one model together, backbones and fine-tunes apart). Splits
are seeded, and `Split.save` records exactly which groups went where.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vitzoo_hf.errors import ZooError

LEVELS = ("lineage", "run")


def roots(parents: Mapping[str, str | None]) -> dict[str, str]:
    """Model name → the root of its tree (the backbone it descends from; itself for a backbone)."""
    out: dict[str, str] = {}
    for name in parents:
        seen, node = [], name
        while parents.get(node):
            if node in seen:
                raise ZooError(f"the lineage of {name!r} has a cycle ({' → '.join(seen)}); the models table is broken")
            seen.append(node)
            node = parents[node]
        out[name] = node
    return out


def group_of(rows: Iterable[Mapping[str, Any]], parents: Mapping[str, str | None], level: str = "lineage") -> list[str]:
    """The split group of every sample row (a dict with a `name`)."""
    if level not in LEVELS:
        raise ZooError(f"split level {level!r} is unknown; use one of {', '.join(LEVELS)}")
    root = roots(parents)
    return [root[r["name"]] if level == "lineage" else r["name"] for r in rows]


@dataclass(frozen=True)
class Split:
    """Which groups are in the training and the test part (both sorted), and how they were drawn."""

    level: str
    seed: int
    train: tuple[str, ...]
    test: tuple[str, ...]
    fold: int | None = None

    def masks(self, groups: Sequence[str]) -> tuple[list[bool], list[bool]]:
        train, test = set(self.train), set(self.test)
        return [g in train for g in groups], [g in test for g in groups]

    def indices(self, groups: Sequence[str]) -> tuple[list[int], list[int]]:
        train, test = set(self.train), set(self.test)
        return [i for i, g in enumerate(groups) if g in train], [i for i, g in enumerate(groups) if g in test]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"], d["test"] = list(self.train), list(self.test)
        return d

    def save(self, path: str | Path) -> Path:
        from vitzoo_hf.checkpoints import write_json_atomic

        write_json_atomic(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Split:
        d = json.loads(Path(path).read_text())
        return cls(d["level"], d["seed"], tuple(d["train"]), tuple(d["test"]), d.get("fold"))


def _shuffled(groups: Iterable[str], seed: int) -> list[str]:
    unique = sorted(set(groups))
    random.Random(seed).shuffle(unique)
    return unique


def split(groups: Sequence[str], test_fraction: float = 0.25, seed: int = 0, level: str = "lineage") -> Split:
    """One seeded split of the groups: about `test_fraction` of them (at least one, never all) to test."""
    if not 0.0 < test_fraction < 1.0:
        raise ZooError(f"test fraction {test_fraction:g} must lie strictly between 0 and 1")
    order = _shuffled(groups, seed)
    if len(order) < 2:
        raise ZooError(f"a {level} split needs at least two {level}s, this selection has {len(order)}; select "
                       "more models or use level='run'")
    n_test = min(max(1, round(test_fraction * len(order))), len(order) - 1)
    return Split(level, seed, tuple(sorted(order[n_test:])), tuple(sorted(order[:n_test])))


def folds(groups: Sequence[str], k: int | None = None, seed: int = 0, level: str = "lineage") -> list[Split]:
    """k-fold cross-validation over groups (default: one fold per group up to 5, leave-one-lineage-out for a zoo
    of a few backbones): every group is tested exactly once, by a model that never saw it."""
    order = _shuffled(groups, seed)
    if len(order) < 2:
        raise ZooError(f"cross-validation by {level} needs at least two {level}s, this selection has {len(order)}; "
                       "select more models or use level='run'")
    k = min(k or 5, len(order))
    parts = [order[i::k] for i in range(k)]
    return [Split(level, seed, tuple(sorted(g for j, p in enumerate(parts) if j != i for g in p)), tuple(sorted(part)),
                  fold=i) for i, part in enumerate(parts)]
