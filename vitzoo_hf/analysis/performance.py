"""Performance of a population: accuracy, generalisation gap, and mean ± std summaries.

GGap (the paper's Table 2) = train accuracy - validation accuracy of the final checkpoint, where the train
accuracy is the one recorded during training: measured on the *clean* training images (the evaluation transform,
no augmentation, no MixUp/CutMix), so both terms see the same kind of input. Percent points in the tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to the labels."""
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape:
        raise ValueError(f"{p.shape[0] if p.ndim else 0} predictions for {y.shape[0] if y.ndim else 0} labels")
    return float((p == y).mean()) if p.size else math.nan


def generalisation_gap(train_accuracy: float, validation_accuracy: float) -> float:
    """GGap = train accuracy - validation accuracy (same unit as the inputs)."""
    return train_accuracy - validation_accuracy


@dataclass(frozen=True)
class Summary:
    """Mean, population standard deviation (ddof = 0), min and max of a set of values (NaN when empty)."""

    n: int
    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Summary:
        v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
        if v.size == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(int(v.size), float(v.mean()), float(v.std()), float(v.min()), float(v.max()))
