"""A model that does not learn fails here: a short fine-tune on digits must land far above chance, while the same
fine-tune on the same images with shuffled labels (a `folder:` data set) must stay near chance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand, load_blueprint
from vitzoo_hf.checkpoints import read_results
from vitzoo_hf.runner import generate

CHANCE = 0.1  # digits: 10 classes


def _write_digits(root: Path, shuffle_labels: bool) -> Path:
    """scikit-learn's digits as an image folder (train/ and validation/, one sub-folder per class)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 255 / 16).round().astype(np.uint8)
    labels = digits.target.copy()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    if shuffle_labels:  # every image keeps its pixels, but its label is drawn from someone else's
        labels = labels[rng.permutation(len(labels))]
    for split, idx in (("train", order[:512]), ("validation", order[512:612])):
        for i in idx:
            folder = root / split / str(labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{i}.png")
    return root


def _blueprint(tmp_path: Path, dataset: str, head_seed: int) -> Path:
    """`smoke` with one supervised backbone (1 epoch) and one fine-tune (3 epochs, lr 3e-3, no MixUp/CutMix)."""
    no_mixing = {"resize": 16, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "random_erasing": 0.0}
    data = {
        "extends": "smoke", "name": "learn",
        "pretraining": {"dataset": {"name": "digits", "max_train": 512, "max_validation": 100}, "epochs": 1,
                        "lr": 3.0e-3,
                        "tasks": {"supervised": {"runs": [{"seed": 42, "batch_size": 32}], "augmentation": no_mixing},
                                  "contrastive": {"runs": []}}},
        "finetuning": {"dataset": {"name": dataset, "max_train": 512, "max_validation": 100}, "epochs": 3,
                       "augmentation": no_mixing,
                       "grid": {"head": ["linear"], "optimizer": ["adamw"], "lr": [3.0e-3], "head_seed": [head_seed]}},
    }
    path = tmp_path / f"learn-{head_seed}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _final_accuracy(zoo: Path, bp_path: Path) -> float:
    bp = load_blueprint(bp_path)
    child = expand(bp)[1]
    rows = read_results(layout.model_dir(zoo, child))
    assert len(rows) == child.epochs + 1
    return rows[-1]["validation_accuracy"]


def test_a_fine_tune_learns_digits_and_not_shuffled_labels(tmp_path):
    zoo = tmp_path / "zoo"
    real = _blueprint(tmp_path, "digits", head_seed=1)
    shuffled = _write_digits(tmp_path / "shuffled digits", shuffle_labels=True)
    control = _blueprint(tmp_path, f"folder:{shuffled}", head_seed=2)  # same backbone, another fine-tune
    generate(real, zoo, progress=False)
    generate(control, zoo, progress=False)  # the backbone is complete: only the control fine-tune trains
    learned, chance = _final_accuracy(zoo, real), _final_accuracy(zoo, control)
    summary = json.dumps({"digits": learned, "shuffled": chance})
    assert learned >= 4 * CHANCE, summary  # far above chance
    assert chance <= 2.5 * CHANCE, summary  # near chance: 100 validation images, majority class ~0.15
    assert learned - chance >= 0.25, summary
