"""Checkpoints a Hugging Face user can use at once: labels, image processor, readable files."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand
from vitzoo_hf.data import class_names, load_splits


def test_pipeline_without_vitzoo_hf_gives_readable_labels_and_the_stored_predictions(smoke_all, tmp_path):
    bp, out = smoke_all
    spec = next(m for m in expand(bp) if m.stage == "finetuning" and m.head == "mlp")
    ckpt = layout.checkpoint_dir(layout.model_dir(out, spec), spec.epochs)
    d = bp.finetuning.dataset
    splits = load_splits(d.name, d.max_train, d.max_validation)
    names = class_names(splits)
    files = []
    for i, image in enumerate(splits["validation"]["image"]):
        files.append(str(tmp_path / f"{i:03d}.png"))
        image.save(files[-1])
    script = f"""
import json, sys
from transformers import pipeline
clf = pipeline("image-classification", model={str(ckpt)!r}, trust_remote_code=True)
assert "vitzoo_hf" not in sys.modules, "vitzoo_hf was imported"
print(json.dumps([r[0]["label"] for r in clf({files!r}, top_k=1)]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = json.loads(proc.stdout.strip().splitlines()[-1])
    stored = load_file(str(ckpt / layout.PREDICTIONS_FILE))["predictions"].long()
    assert labels == [names[i] for i in stored.tolist()]
    config = json.loads((ckpt / "config.json").read_text())
    assert config["id2label"] == {str(i): n for i, n in enumerate(names)}
    assert (ckpt / "preprocessor_config.json").is_file()
    assert torch.unique(stored).numel() > 1  # a real classifier, not a constant


def test_backbones_carry_the_processor_and_files_follow_the_umask(smoke_all):
    bp, out = smoke_all
    mask = os.umask(0)
    os.umask(mask)
    for spec in expand(bp):
        for ckpt in layout.checkpoints(layout.model_dir(out, spec)).values():
            assert (ckpt / "preprocessor_config.json").is_file()
            for f in ckpt.iterdir():
                assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f
