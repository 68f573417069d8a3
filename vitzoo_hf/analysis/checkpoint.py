"""The analysis columns of one checkpoint, as the metadata dataset's `checkpoints` config stores them.

Computed once at publish time (`vitzoo_hf.metadata` calls `checkpoint_statistics` for every checkpoint) or by
`vitzoo analyze SOURCE --update-metadata`, so that a published zoo's tables regenerate from its metadata alone.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from vitzoo_hf.analysis.backbone import open_checkpoint
from vitzoo_hf.analysis.distances import squared_distance
from vitzoo_hf.analysis.sketch import SKETCH_DIM, accumulate
from vitzoo_hf.analysis.weights import DEFAULT_DEFINITION, DEFINITIONS, Moments, by_definition

WEIGHT_STATS = ("skewness", "kurtosis", "l2_norm")
# every definition's statistics, e.g. kurtosis_flat; the unsuffixed columns hold the default definition's
DEFINITION_COLUMNS = tuple(f"{s}_{d.replace('-', '_')}" for d in DEFINITIONS for s in WEIGHT_STATS)
STAT_COLUMNS = ("skewness", "kurtosis", "l2_norm", "l2_to_parent", "sketch", *DEFINITION_COLUMNS)


def column(stat: str, definition: str) -> str:
    return f"{stat}_{definition.replace('-', '_')}"


def checkpoint_statistics(weights_path: str | Path, parent_weights_path: str | Path | None = None) -> dict[str, Any]:
    """Skewness, excess kurtosis and L2 norm of the checkpoint's backbone under every definition of
    `weights.DEFINITIONS` (unsuffixed: the default one), its L2 distance to the parent's backbone (the parent's
    final checkpoint, which a fine-tune starts from; None without a parent) and its sketch
    (`vitzoo_hf.analysis.sketch`: 1024 float32 values as floats), in one pass over each tensor."""
    parts: dict[str, tuple[tuple[int, ...], Moments]] = {}
    sk = np.zeros(SKETCH_DIM)
    to_parent = None
    with ExitStack() as stack:
        ckpt = stack.enter_context(open_checkpoint(weights_path))
        parent = stack.enter_context(open_checkpoint(parent_weights_path)) if parent_weights_path else None
        squared, shared = 0.0, 0
        for name, x in ckpt.items():
            parts[name] = (ckpt.shape(name), Moments.of(x))
            accumulate(sk, name, x)
            if parent is not None and name in parent.keys and parent.shape(name) == ckpt.shape(name):
                squared += squared_distance(x, parent.array(name))
                shared += 1
        if parent is not None and shared:
            to_parent = math.sqrt(squared)
    # NaN (a diverged checkpoint, or zero variance) is a computed value; None means "not computed"
    stats = by_definition(parts)
    return {**stats[DEFAULT_DEFINITION], "l2_to_parent": to_parent, "sketch": sk.astype(np.float32).tolist(),
            **{column(s, d): stats[d][s] for d in DEFINITIONS for s in WEIGHT_STATS}}
