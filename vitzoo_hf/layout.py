"""The zoo's on-disk layout (the paper's Appendix C.2), in one place.

    ZOO_DIR/pretraining/MODEL/                 a pre-trained backbone
    ZOO_DIR/finetuning/PARENT/MODEL/           a fine-tuned child of PARENT
        config.json                            generating factors, resolved recipe, seeds, library versions
        result.json                            one JSON line per epoch, epoch 0 = before any training
        checkpoint_NNNNNN/                     one per epoch, including 0; a `save_pretrained` folder plus
            manifest.json                      sha256 of every file in the checkpoint, and the epoch's metrics
            validation_predictions.safetensors predicted class per validation example (classifiers)
            training_state.safetensors         optimizer state (kept in the two newest checkpoints)
            projection_head.safetensors        contrastive backbones only: the SimCLR projector
"""

from __future__ import annotations

import re
from pathlib import Path

from vitzoo_hf.blueprint import ModelSpec

CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"
MANIFEST_FILE = "manifest.json"
PREDICTIONS_FILE = "validation_predictions.safetensors"
TRAINING_STATE_FILE = "training_state.safetensors"
WEIGHTS_FILE = "model.safetensors"
_CHECKPOINT_RE = re.compile(r"^checkpoint_(\d{6})$")


def model_dir(zoo_dir: str | Path, spec: ModelSpec) -> Path:
    zoo = Path(zoo_dir)
    if spec.stage == "pretraining":
        return zoo / "pretraining" / spec.name
    return zoo / "finetuning" / str(spec.parent) / spec.name


def checkpoint_dir(model_path: Path, epoch: int) -> Path:
    return model_path / f"checkpoint_{epoch:06d}"


def checkpoints(model_path: Path) -> dict[int, Path]:
    """Completed checkpoints by epoch (in-progress ones are hidden under a temporary name)."""
    if not model_path.is_dir():
        return {}
    found = {int(m.group(1)): p for p in model_path.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()}
    return dict(sorted(found.items()))
