"""Siblings differ in exactly their named factor; one precision rule on every launch path."""

import json

import pytest
import torch
import yaml

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand, load_blueprint
from vitzoo_hf.data import class_names, load_splits
from vitzoo_hf.errors import ZooError
from vitzoo_hf.recipe import batch_mixer, supervised_loaders
from vitzoo_hf.training import seed_epoch, train_model


def _first_batch(bp, spec):
    d = bp.finetuning.dataset
    splits = load_splits(d.name, d.max_train, d.max_validation)
    generator = torch.Generator()
    loader = supervised_loaders(bp, bp.finetuning.augmentation, splits, spec.batch_size, generator)["train"]
    seed_epoch(generator, spec, epoch=1)
    mix = batch_mixer(bp.finetuning.augmentation, len(class_names(splits)))
    return mix(*next(iter(loader)))  # as the training loop does, on the device batch


def test_siblings_sharing_parent_and_head_seed_draw_the_same_batches(tmp_path):
    path = tmp_path / "two-seeds.yaml"
    path.write_text(yaml.safe_dump({"extends": "smoke", "name": "two-seeds",
                                    "finetuning": {"grid": {"head_seed": [1, 2]}}}))
    bp = load_blueprint(path)
    kids = [m for m in expand(bp) if m.stage == "finetuning" and m.task == "supervised"]
    a = next(m for m in kids if (m.head, m.optimizer, m.seed) == ("linear", "adamw", 1))
    b = next(m for m in kids if (m.head, m.optimizer, m.seed) == ("mlp", "sgd", 1))  # differs in head and optimizer
    c = next(m for m in kids if (m.head, m.optimizer, m.seed) == ("linear", "adamw", 2))  # another head seed
    assert a.data_seed == b.data_seed != c.data_seed
    (xa, ya), (xb, yb), (xc, _) = _first_batch(bp, a), _first_batch(bp, b), _first_batch(bp, c)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)  # same order, same augmentation, same MixUp/CutMix draw
    assert not torch.equal(xa, xc)  # control: the head seed does change the data stream


def test_precision_is_ours_on_every_path_and_a_resume_must_match(tmp_path, monkeypatch):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"extends": "smoke", "name": "tiny",
                                    "pretraining": {"dataset": {"max_train": 64, "max_validation": 32}}}))
    bp = load_blueprint(path)
    spec = next(m for m in expand(bp) if m.stage == "pretraining" and m.task == "supervised")
    # `accelerate launch` exports its own precision; the run must still follow the blueprint (auto → fp32 on CPU).
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    model_path = train_model(bp, spec, tmp_path / "zoo", progress=False)
    config = json.loads((model_path / layout.CONFIG_FILE).read_text())
    assert config["distribution"]["mixed_precision"] == "no"
    assert config["seeds"]["data"] == spec.seed and "head seed" in config["seeds"]["rule"]
    # Interrupted after epoch 1 (the newest checkpoint lost), then resumed in another precision: refused.
    last = layout.checkpoint_dir(model_path, spec.epochs)
    for f in last.iterdir():
        f.unlink()
    last.rmdir()
    with pytest.raises(ZooError, match="mixed precision 'no'.*resumed with 'bf16'"):
        train_model(bp, spec, tmp_path / "zoo", progress=False, mixed_precision="bf16")
    train_model(bp, spec, tmp_path / "zoo", progress=False, mixed_precision="no")
    assert spec.epochs in layout.checkpoints(model_path)
