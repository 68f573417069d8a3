"""Weights as data: weight-space datasets, function-preserving augmentation, lineage splits, property prediction
and representation similarity for any zoo, local or on the Hub.

* `dataset` — `WeightSpaceDataset` / `WeightSpaceStream` (torch; `.to_hf()`: a `datasets.IterableDataset`) of
  checkpoints with metadata targets;
* `representations` — `flat` (+ `LayerIndex`), SANE-style `tokens`, Unterthiner-style `stats`;
* `augment` — `PermutationAugment`: a random ViT symmetry per sample (rules: `vitzoo_hf.symmetries`);
* `splits` — train/test splits and folds by lineage, seeded and recorded;
* `predict` — `vitzoo predict`: property-prediction baselines against controls;
* `cka` — linear and debiased CKA between checkpoints (`vitzoo analyze --cka`).
"""

from vitzoo_hf.weightspace.augment import PermutationAugment
from vitzoo_hf.weightspace.dataset import (
    FACTORS,
    NUMERIC_TARGETS,
    TARGETS,
    WeightSpaceDataset,
    WeightSpaceStream,
    collate,
    sample_rows,
)
from vitzoo_hf.weightspace.splits import Split, folds, split

__all__ = ["FACTORS", "NUMERIC_TARGETS", "TARGETS", "PermutationAugment", "Split", "WeightSpaceDataset",
           "WeightSpaceStream", "collate", "folds", "sample_rows", "split"]
