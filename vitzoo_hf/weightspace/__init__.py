"""Weights as data: weight-space datasets, function-preserving augmentation, lineage splits, property prediction
and representation similarity for any zoo, local or on the Hub.

* `dataset` — `WeightSpaceDataset` / `WeightSpaceStream` (torch; `.to_hf()`: a `datasets.IterableDataset`) of
  checkpoints with metadata targets;
* `representations` — `flat` (+ `LayerIndex`), SANE-style `tokens`, Unterthiner-style `stats`;
* `augment` — `PermutationAugment`: a random ViT symmetry per sample (rules: `vitzoo_hf.symmetries`);
* `splits` — train/test splits and folds by lineage, seeded and recorded;
* `predict` — `vitzoo predict`: property-prediction baselines against controls;
* `cka` — linear and debiased CKA between checkpoints (`vitzoo analyze --cka`).

Names are imported on first use (the CLI never imports torch just to parse its arguments).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PermutationAugment": "augment", "FACTORS": "dataset", "NUMERIC_TARGETS": "dataset", "TARGETS": "dataset",
    "WeightSpaceDataset": "dataset", "WeightSpaceStream": "dataset", "collate": "dataset", "sample_rows": "dataset",
    "Split": "splits", "folds": "splits", "split": "splits",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"vitzoo_hf.weightspace.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'vitzoo_hf.weightspace' has no attribute {name!r}")
