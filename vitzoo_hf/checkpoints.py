"""Checkpoints: the on-disk format of one epoch (atomic, hashed), result.json, and what resume needs.

A checkpoint is written under a temporary name, fsynced and renamed into place, so it exists only when complete;
its manifest lists the sha256 of every file, so a truncated or altered file is caught and named. result.json is
rebuilt from the manifests, so it can never disagree with them. Optimizer state is stored as safetensors (never
pickled) and kept only in the two newest checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vitzoo_hf import layout
from vitzoo_hf.blueprint import ModelSpec
from vitzoo_hf.errors import ZooError
from vitzoo_hf.simclr import ProjectionHead


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, lines: bool = False) -> Any:
    """Parse a zoo JSON file; a damaged one is a user-fixable error that names the file."""
    try:
        text = path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()] if lines else json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ZooError(f"{path} is damaged ({err}); delete it (or its checkpoint folder) and rerun the same "
                       "command to regenerate it") from None


def update_json(path: Path, key: str, value: Any) -> None:
    data = read_json(path)
    if data.get(key) != value:
        write_json_atomic(path, json.dumps({**data, key: value}, indent=1))


def finite(value: Any) -> Any:
    """JSON has no NaN/inf: a diverged run's metrics are recorded as null (the model stays in the zoo)."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def fsync_tree(path: Path) -> None:
    for p in [*path.iterdir(), path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def apply_umask(folder: Path) -> None:
    """Give every file the mode the user's umask asks for: some writers (safetensors' atomic save) create 0600
    files, unreadable to collaborators on a shared file system."""
    mask = os.umask(0)
    os.umask(mask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~mask)


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The optimizer's state as flat tensors + JSON metadata: safetensors, never pickle."""
    sd = optimizer.state_dict()
    tensors = {f"state.{idx}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
               for idx, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": json.dumps(sd["param_groups"])}


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key in f.keys():
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = f.get_tensor(key)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def read_manifest(ckpt: Path) -> dict[str, Any]:
    """A checkpoint's manifest.json, checked to hold what every reader relies on (epoch, metrics, sha256 of each
    file including the weights); anything else is a damaged checkpoint named with its fix."""
    path = ckpt / layout.MANIFEST_FILE
    manifest = read_json(path)
    digests = manifest.get("sha256") if isinstance(manifest, dict) else None
    if not (
        isinstance(digests, dict)
        and isinstance(manifest.get("epoch"), int)
        and isinstance(manifest.get("metrics"), dict)
        and layout.WEIGHTS_FILE in digests
        and all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items())
    ):
        raise ZooError(f"{path} is damaged (it needs 'epoch', 'metrics' and the 'sha256' of every file, including "
                       f"{layout.WEIGHTS_FILE}); delete {ckpt} and rerun the same command to retrain that epoch")
    return manifest


def verify_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Check every file against the manifest's sha256; name the first bad file in the error."""
    manifest_path = ckpt / layout.MANIFEST_FILE
    if not manifest_path.is_file():
        raise ZooError(f"checkpoint {ckpt} has no {layout.MANIFEST_FILE}; it is not a vitzoo checkpoint or was "
                       "damaged: delete the folder and run the same command again to retrain that epoch")
    manifest = read_manifest(ckpt)
    for name, digest in manifest["sha256"].items():
        file = ckpt / name
        if not file.is_file():
            raise ZooError(f"checkpoint file {file} is missing; delete {ckpt} and rerun to retrain from the "
                           "previous epoch")
        if sha256_file(file) != digest:
            raise ZooError(f"checkpoint file {file} is corrupted (sha256 mismatch: truncated or altered); delete "
                           f"{ckpt} and rerun to retrain from the previous epoch")
    return manifest


def save_checkpoint(model_path: Path, epoch: int, model: nn.Module, optimizer, row: dict[str, Any],
                    predictions: torch.Tensor | None, head: ProjectionHead | None,
                    processor: Any = None) -> dict[str, str]:
    """Write a complete checkpoint (weights, config with labels, modelling code, image processor, predictions,
    optimizer state) under a temporary name, fsync, then rename it into place."""
    final = layout.checkpoint_dir(model_path, epoch)
    tmp = model_path / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if processor is not None:
            processor.save_pretrained(tmp)
        if head is not None:
            head.save(tmp)
        if predictions is not None:
            dtype = torch.int16 if predictions.numel() == 0 or int(predictions.max()) < 2**15 else torch.int32
            save_file({"predictions": predictions.to(dtype).contiguous()}, str(tmp / layout.PREDICTIONS_FILE))
        tensors, meta = optimizer_state_tensors(optimizer)
        save_file(tensors, str(tmp / layout.TRAINING_STATE_FILE), metadata=meta)
        digests = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        manifest = {"epoch": epoch, "metrics": row, "sha256": digests}
        (tmp / layout.MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        apply_umask(tmp)
        fsync_tree(tmp)
    except BaseException:  # Ctrl-C or an error mid-write: leave nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, final)
    # Optimizer state only serves a resume: keep it in the two newest checkpoints, so deleting a damaged newest
    # checkpoint (as verify_checkpoint advises) still leaves one to resume from.
    for older_epoch, older in layout.checkpoints(model_path).items():
        if older_epoch < epoch - 1 and (older / layout.TRAINING_STATE_FILE).exists():
            old = read_manifest(older)
            old["sha256"].pop(layout.TRAINING_STATE_FILE, None)
            write_json_atomic(older / layout.MANIFEST_FILE, json.dumps(old, indent=1))
            (older / layout.TRAINING_STATE_FILE).unlink()
    return digests


def write_results(model_path: Path) -> list[dict[str, Any]]:
    """Rebuild result.json from the checkpoints' manifests, so it can never disagree with them (even after a
    crash between a checkpoint's rename and this write)."""
    rows = []
    for ckpt in layout.checkpoints(model_path).values():
        manifest = read_manifest(ckpt)
        rows.append({**manifest["metrics"], "weights_sha256": manifest["sha256"][layout.WEIGHTS_FILE]})
    write_json_atomic(model_path / layout.RESULT_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def read_results(model_path: Path) -> list[dict[str, Any]]:
    path = model_path / layout.RESULT_FILE
    return read_json(path, lines=True) if path.exists() else []


def is_complete(zoo_dir: Path, spec: ModelSpec) -> bool:
    path = layout.model_dir(zoo_dir, spec)
    return spec.epochs in layout.checkpoints(path) and len(read_results(path)) == spec.epochs + 1


def final_checkpoint(zoo_dir: Path, spec: ModelSpec) -> Path:
    if not is_complete(zoo_dir, spec):
        raise ZooError(f"model '{spec.name}' is not trained yet (needed as a parent); train it first with "
                       f"`vitzoo generate BLUEPRINT --out {zoo_dir} --only {spec.name}`")
    ckpt = layout.checkpoint_dir(layout.model_dir(zoo_dir, spec), spec.epochs)
    verify_checkpoint(ckpt)
    return ckpt

