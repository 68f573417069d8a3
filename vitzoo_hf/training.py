"""Training: one zoo model from its blueprint, the paper's recipe, with Accelerate.

`train_model(bp, spec, zoo_dir)` is the whole story for one model, on one process or many:

    config.json ──► epoch 0: evaluate the fresh model, save checkpoint_000000
                └─► for each epoch: reseed (data order, augmentation) ─► train ─► evaluate ─► save checkpoint

Supervised models (pre-training and every fine-tune) learn with MixUp/CutMix soft targets and label smoothing,
the loss computed outside the model; contrastive backbones learn with SimCLR (vitzoo_hf.simclr). A checkpoint
appears under its final name only once complete (atomic rename) and lists the sha256 of its files, so a run
killed at any moment resumes from the last complete epoch; on CPU the result is bitwise identical to an
uninterrupted run because every epoch reseeds all randomness from the model's factors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from torchvision.transforms import v2
from tqdm.auto import tqdm

from vitzoo_hf import layout
from vitzoo_hf.blueprint import Augmentation, Blueprint, ModelSpec, expand, find_model, load_blueprint
from vitzoo_hf.data import class_names, load_splits
from vitzoo_hf.errors import ZooError, run_cli
from vitzoo_hf.modeling import ZooViTConfig, ZooViTForImageClassification, ZooViTModel, build_head
from vitzoo_hf.simclr import IMAGENET_MEAN, IMAGENET_STD, ProjectionHead, TwoViews, contrastive_loss

EVAL_BATCH_SIZE = 256

# --------------------------------------------------------------------------------------------------------------
# Model and data recipe


def model_config(bp: Blueprint, num_labels: int, head: str = "linear") -> ZooViTConfig:
    a = bp.architecture
    return ZooViTConfig(
        hidden_size=a.hidden_size, num_hidden_layers=a.num_hidden_layers, num_attention_heads=a.num_attention_heads,
        intermediate_size=a.intermediate_size, patch_size=a.patch_size, image_size=a.image_size,
        drop_path_rate=a.drop_path_rate, head_type=head, head_hidden_size=a.head_hidden_size, num_labels=num_labels,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def image_transforms(bp: Blueprint, aug: Augmentation) -> tuple[v2.Transform, v2.Transform]:
    """Per-image transforms: (train, eval). Train: resize, random crop, [rotate, flip], erase; eval: center crop."""
    size = bp.architecture.image_size
    resize = aug.resize or round(size * 8 / 7)
    # Geometry runs on the PIL image (3x faster than on tensors for small images), then convert.
    head = [v2.RGB(), v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train = [*head, v2.RandomCrop(size)]
    if aug.rotation:
        train.append(v2.RandomRotation(aug.rotation))
    if aug.horizontal_flip:
        train.append(v2.RandomHorizontalFlip())
    train += tail
    if aug.random_erasing:
        train.append(v2.RandomErasing(p=aug.random_erasing, value="random"))  # per-pixel noise, as timm's "pixel"
    return v2.Compose(train), v2.Compose([*head, v2.CenterCrop(size), *tail])


def batch_mixer(aug: Augmentation, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], tuple]:
    """MixUp or CutMix (one chosen per batch, torchvision v2) → (images, soft targets)."""
    mixers = [m for alpha, m in ((aug.mixup_alpha, v2.MixUp), (aug.cutmix_alpha, v2.CutMix)) if alpha > 0]
    if not mixers:
        return lambda x, y: (x, F.one_hot(y, num_classes).float())
    alphas = [a for a in (aug.mixup_alpha, aug.cutmix_alpha) if a > 0]
    choice = v2.RandomChoice([m(alpha=a, num_classes=num_classes) for m, a in zip(mixers, alphas, strict=True)])
    return lambda x, y: choice(x, y)


def supervised_loaders(bp, aug, splits, batch_size, generator):
    train_tf, eval_tf = image_transforms(bp, aug)
    mix = batch_mixer(aug, len(class_names(splits)))

    def apply(tf):
        return lambda b: {"pixel_values": [tf(im) for im in b["image"]], "label": b["label"]}

    def collate(items, mixed):
        x = torch.stack([i["pixel_values"] for i in items])
        y = torch.tensor([i["label"] for i in items])
        return mix(x, y) if mixed else (x, y)

    train = splits["train"].with_transform(apply(train_tf))
    loaders = {"train": DataLoader(train, batch_size, sampler=RandomSampler(train, generator=generator),
                                   collate_fn=lambda b: collate(b, True), drop_last=len(train) >= batch_size)}
    for split in ("train", "validation"):
        ds = splits[split].with_transform(apply(eval_tf))
        loaders[f"eval_{split}"] = DataLoader(ds, EVAL_BATCH_SIZE, sampler=SequentialSampler(ds),
                                              collate_fn=lambda b: collate(b, False))
    return loaders


def contrastive_loaders(bp, splits, batch_size, generator):
    c = bp.pretraining.tasks.contrastive
    views = TwoViews(size=bp.architecture.image_size, scale=c.views.crop_scale, brightness=c.views.color_jitter[0],
                     contrast=c.views.color_jitter[1], saturation=c.views.color_jitter[2],
                     hue=c.views.color_jitter[3], p_jitter=c.views.p_color_jitter, p_gray=c.views.p_grayscale,
                     blur_kernel=c.views.blur_kernel, blur_sigma=c.views.blur_sigma, p_blur=c.views.p_blur,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def apply(b):
        pairs = [views(im) for im in b["image"]]
        return {"a": [p[0] for p in pairs], "b": [p[1] for p in pairs]}

    def collate(items):
        return torch.stack([i["a"] for i in items]), torch.stack([i["b"] for i in items])

    loaders = {}
    for split in ("train", "validation"):
        ds = splits[split].with_transform(apply)
        enough = len(ds) >= batch_size
        if split == "train":
            loaders["train"] = DataLoader(ds, batch_size, sampler=RandomSampler(ds, generator=generator),
                                          collate_fn=collate, drop_last=enough)
        # Retrieval accuracy depends on the batch size (1 positive among 2B-1): evaluate at the training size.
        loaders[f"eval_{split}"] = DataLoader(ds, batch_size, sampler=SequentialSampler(ds), collate_fn=collate,
                                              drop_last=enough)
    return loaders, views


# --------------------------------------------------------------------------------------------------------------
# Steps and evaluation: the visible training loop's pieces


def train_step(model, optimizer, accelerator: Accelerator, x, soft_targets, label_smoothing: float) -> torch.Tensor:
    """One supervised step on soft targets; the loss lives here: soft labels passed to a transformers model
    would flip it to multi-label BCE and save that in its config."""
    logits = model(pixel_values=x).logits
    loss = F.cross_entropy(logits, soft_targets, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    return loss.detach()


def _embed(backbone, head, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views through the backbone in one forward pass, CLS token through the projector."""
    z = head(backbone(pixel_values=torch.cat([a, b])).last_hidden_state[:, 0])
    return z.chunk(2)


def contrastive_step(backbone, head, optimizer, accelerator, a, b, temperature):
    """One SimCLR step: NT-Xent over the global batch (negatives gathered with gradients from all processes)."""
    out = contrastive_loss(*_embed(backbone, head, a, b), temperature)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(out.loss)
    optimizer.step()
    return out


@cache
def _accuracy_metric():
    import evaluate

    path = resources.files("vitzoo_hf").joinpath("metrics/zoo_accuracy/zoo_accuracy.py")
    return evaluate.load(str(path))


@torch.no_grad()
def evaluate_supervised(model, loader, accelerator) -> dict[str, Any]:
    """Loss and accuracy over every example exactly once, across processes; plus the predictions."""
    model.eval()
    losses, preds, refs = [], [], []
    for x, y in loader:
        logits = model(pixel_values=x).logits
        loss = F.cross_entropy(logits, y, reduction="none")
        loss, pred, y = accelerator.gather_for_metrics((loss, logits.argmax(-1), y))
        losses.append(loss.cpu())
        preds.append(pred.cpu())
        refs.append(y.cpu())
    model.train()
    preds_t, refs_t = torch.cat(preds), torch.cat(refs)
    acc = _accuracy_metric().compute(predictions=preds_t.tolist(), references=refs_t.tolist())
    return {"loss": torch.cat(losses).mean().item(), "accuracy": acc["accuracy"], "examples": acc["count"],
            "predictions": preds_t}


@torch.no_grad()
def evaluate_contrastive(backbone, head, loader, temperature, seed: int) -> dict[str, Any]:
    """InfoNCE loss and top-1 retrieval over fixed (seeded) views, so epochs are comparable."""
    backbone.eval()
    head.eval()
    torch.manual_seed(seed)
    loss_sum, correct, total, batches = 0.0, 0, 0, 0
    for a, b in loader:
        out = contrastive_loss(*_embed(backbone, head, a, b), temperature)
        loss_sum, batches = loss_sum + out.loss.item(), batches + 1
        correct, total = correct + int(out.correct), total + out.total
    backbone.train()
    head.train()
    return {"loss": loss_sum / max(batches, 1), "accuracy": correct / max(total, 1), "examples": total,
            "predictions": None}


# --------------------------------------------------------------------------------------------------------------
# Checkpoints: atomic, hashed, resumable


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path, lines: bool = False) -> Any:
    """Parse a zoo JSON file; a damaged one is a user-fixable error that names the file."""
    try:
        text = path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()] if lines else json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ZooError(f"{path} is damaged ({err}); delete it (or its checkpoint folder) and rerun the same "
                       "command to regenerate it") from None


def _update_json(path: Path, key: str, value: Any) -> None:
    data = _read_json(path)
    if data.get(key) != value:
        _write_json_atomic(path, json.dumps({**data, key: value}, indent=1))


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: a diverged run's metrics are recorded as null (the model stays in the zoo)."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _fsync_tree(path: Path) -> None:
    for p in [*path.iterdir(), path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


def verify_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Check every file against the manifest's sha256; name the first bad file in the error."""
    manifest_path = ckpt / layout.MANIFEST_FILE
    if not manifest_path.is_file():
        raise ZooError(f"checkpoint {ckpt} has no {layout.MANIFEST_FILE}; it is not a vitzoo checkpoint or was "
                       "damaged: delete the folder and run the same command again to retrain that epoch")
    manifest = _read_json(manifest_path)
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
                    predictions: torch.Tensor | None, head: ProjectionHead | None) -> dict[str, str]:
    """Write a complete checkpoint under a temporary name, fsync, then rename it into place."""
    final = layout.checkpoint_dir(model_path, epoch)
    tmp = model_path / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
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
    _fsync_tree(tmp)
    os.replace(tmp, final)
    # Optimizer state only serves a resume: keep it in the two newest checkpoints, so deleting a damaged newest
    # checkpoint (as verify_checkpoint advises) still leaves one to resume from.
    for older_epoch, older in layout.checkpoints(model_path).items():
        if older_epoch < epoch - 1 and (older / layout.TRAINING_STATE_FILE).exists():
            old = _read_json(older / layout.MANIFEST_FILE)
            old["sha256"].pop(layout.TRAINING_STATE_FILE, None)
            _write_json_atomic(older / layout.MANIFEST_FILE, json.dumps(old, indent=1))
            (older / layout.TRAINING_STATE_FILE).unlink()
    return digests


def write_results(model_path: Path) -> list[dict[str, Any]]:
    """Rebuild result.json from the checkpoints' manifests, so it can never disagree with them (even after a
    crash between a checkpoint's rename and this write)."""
    rows = []
    for ckpt in layout.checkpoints(model_path).values():
        manifest = _read_json(ckpt / layout.MANIFEST_FILE)
        rows.append({**manifest["metrics"], "weights_sha256": manifest["sha256"][layout.WEIGHTS_FILE]})
    _write_json_atomic(model_path / layout.RESULT_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def read_results(model_path: Path) -> list[dict[str, Any]]:
    path = model_path / layout.RESULT_FILE
    return _read_json(path, lines=True) if path.exists() else []


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


# --------------------------------------------------------------------------------------------------------------
# One model


def _versions() -> dict[str, str]:
    import accelerate
    import datasets
    import huggingface_hub
    import torchvision
    import transformers

    import vitzoo_hf

    mods = (vitzoo_hf, torch, torchvision, transformers, accelerate, datasets, huggingface_hub)
    return {"python": platform.python_version(), **{m.__name__: m.__version__ for m in mods}}


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


EPOCH_SEED_RULE = "(data_seed * 1000003 + epoch * 7919 + rank) mod 2**63"


def _epoch_seed(spec: ModelSpec, epoch: int, rank: int = 0) -> int:
    """See EPOCH_SEED_RULE (recorded in config.json)."""
    return (spec.data_seed * 1_000_003 + epoch * 7919 + rank) % 2**63


def _model_record(bp: Blueprint, spec: ModelSpec, accelerator: Accelerator | None, per_process_batch: int) -> dict:
    stage = bp.pretraining if spec.stage == "pretraining" else bp.finetuning
    recipe: dict[str, Any] = {"dataset": asdict(stage.dataset), "normalization": {"mean": IMAGENET_MEAN,
                                                                                  "std": IMAGENET_STD}}
    if spec.stage == "finetuning":
        recipe["augmentation"] = asdict(bp.finetuning.augmentation)
    elif spec.task == "supervised":
        recipe["augmentation"] = asdict(bp.pretraining.tasks.supervised.augmentation)
    else:
        c = bp.pretraining.tasks.contrastive
        recipe["contrastive"] = {"temperature": c.temperature, "projection_dim": c.projection_dim,
                                 "projection_hidden_size": c.projection_hidden_size, "views": asdict(c.views)}
    recipe.update(scheduler=None, eval_batch_size=EVAL_BATCH_SIZE, head_init="torch default, seeded by head_seed")
    return {"name": spec.name, "stage": spec.stage, "task": spec.task, "parent": spec.parent,
            "factors": spec.factors(), "batch_size": spec.batch_size, "architecture": asdict(bp.architecture),
            "recipe": recipe,
            "seeds": {"init": spec.seed, "data": spec.data_seed, "per_epoch": EPOCH_SEED_RULE},
            "distribution": {"num_processes": accelerator.num_processes, "per_process_batch_size": per_process_batch,
                             "mixed_precision": accelerator.mixed_precision, "device": str(accelerator.device)}
            if accelerator else {"num_processes": None},
            "blueprint": {"name": bp.name, "source": bp.source}, "versions": _versions()}


def _accelerator(log_with: str | None, project_dir: Path) -> Accelerator:
    cuda = torch.cuda.is_available()
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION") or (
        "bf16" if cuda and torch.cuda.is_bf16_supported() else "no")
    return Accelerator(cpu=not cuda, mixed_precision=precision, log_with=log_with, project_dir=str(project_dir))


@contextmanager
def _quiet_transformers():
    """Our own bars report progress: silence transformers' per-save/per-load bars and load reports."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def train_model(bp: Blueprint, spec: ModelSpec, zoo_dir: str | Path, log_with: str | None = None,
                progress: bool = True) -> Path:
    """Train (or resume, or skip if complete) one model; return its directory."""
    with _quiet_transformers():
        return _train_model(bp, spec, Path(zoo_dir), log_with, progress)


_SETTINGS = ("factors", "batch_size", "architecture", "recipe", "seeds")


def check_settings(path: Path, record: dict[str, Any], resuming: bool) -> None:
    """A model folder must hold the model the blueprint describes (same factors, recipe, seeds) and, to resume
    bitwise, be resumed with the process count it started with; otherwise stop before training or skipping."""
    cfg_path = path / layout.CONFIG_FILE
    if not cfg_path.exists():
        return
    old = _read_json(cfg_path)
    changed = [k for k in _SETTINGS if old.get(k) != json.loads(json.dumps(record[k]))]  # as stored: lists
    if changed:
        raise ZooError(f"{path} holds '{record['name']}' trained with other settings ({', '.join(changed)} differ "
                       "from the blueprint); delete that folder to retrain it, or choose another --out")
    before = (old.get("distribution") or {}).get("num_processes")
    now = record["distribution"]["num_processes"]
    if resuming and before != now:
        raise ZooError(f"{path} was started with {before} process(es) and is resumed with {now}; its data order "
                       f"depends on that: resume with {before}, or delete the folder to restart")


def _train_model(bp: Blueprint, spec: ModelSpec, zoo_dir: Path, log_with: str | None, progress: bool) -> Path:
    path = layout.model_dir(zoo_dir, spec)
    if is_complete(zoo_dir, spec):
        check_settings(path, _model_record(bp, spec, None, spec.batch_size), resuming=False)
        return path
    accelerator = _accelerator(log_with, path)
    n_proc, main = accelerator.num_processes, accelerator.is_main_process
    if spec.batch_size % n_proc:
        raise ZooError(f"batch size {spec.batch_size} of '{spec.name}' is not divisible by {n_proc} processes; "
                       "use a process count that divides it")
    per_process_batch = spec.batch_size // n_proc
    record = _model_record(bp, spec, accelerator, per_process_batch)
    parent_ckpt = final_checkpoint(zoo_dir, find_model(bp, spec.parent)) if spec.parent else None

    check_settings(path, record, resuming=True)  # on every rank, so no rank waits for one that raised
    if main:
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob(".checkpoint_*.partial"):
            shutil.rmtree(stale)
        if not (path / layout.CONFIG_FILE).exists():
            _write_json_atomic(path / layout.CONFIG_FILE, json.dumps(record, indent=1))
    accelerator.wait_for_everyone()

    # Data
    stage = bp.pretraining if spec.stage == "pretraining" else bp.finetuning
    splits = load_splits(stage.dataset.name, stage.dataset.max_train, stage.dataset.max_validation)
    num_labels = len(class_names(splits))
    generator = torch.Generator()
    contrastive = spec.task == "contrastive" and spec.stage == "pretraining"
    if contrastive:
        loaders, _ = contrastive_loaders(bp, splits, per_process_batch, generator)
    else:
        aug = bp.finetuning.augmentation if spec.stage == "finetuning" else bp.pretraining.tasks.supervised.augmentation
        loaders = supervised_loaders(bp, aug, splits, per_process_batch, generator)

    # Model: initialised from the seed; fine-tunes take the parent's backbone and a head from the head seed
    _seed(spec.seed)
    head: ProjectionHead | None = None
    if contrastive:
        c = bp.pretraining.tasks.contrastive
        model: nn.Module = ZooViTModel(model_config(bp, num_labels))
        head = ProjectionHead(bp.architecture.hidden_size, c.projection_hidden_size, c.projection_dim)
        params = [*model.parameters(), *head.parameters()]
    else:
        model = ZooViTForImageClassification(model_config(bp, num_labels, spec.head or "linear"))
        if parent_ckpt is not None:
            model.vit.load_state_dict(ZooViTModel.from_pretrained(parent_ckpt).state_dict())
            _seed(spec.seed)
            model.classifier = build_head(model.config)
        params = list(model.parameters())
    if spec.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)

    if main:  # every optimizer hyperparameter, defaults included (betas, eps, nesterov, ...)
        hparams = {k: v for k, v in optimizer.defaults.items() if isinstance(v, bool | int | float | str | tuple)}
        _update_json(path / layout.CONFIG_FILE, "optimizer", {"name": type(optimizer).__name__, **hparams})

    # Resume from the last complete checkpoint
    done = layout.checkpoints(path)
    start = 0
    if done:
        last = max(done)
        verify_checkpoint(done[last])
        if contrastive:
            model.load_state_dict(ZooViTModel.from_pretrained(done[last]).state_dict())
            head.load_state_dict(ProjectionHead.load(done[last]).state_dict())
        else:
            model.load_state_dict(ZooViTForImageClassification.from_pretrained(done[last]).state_dict())
        state = done[last] / layout.TRAINING_STATE_FILE
        if not state.exists():
            raise ZooError(f"{done[last]} has no optimizer state to resume from (only the two newest checkpoints "
                           "keep it); delete the checkpoints after the newest one that has "
                           f"{layout.TRAINING_STATE_FILE}, or the whole folder, and rerun")
        load_optimizer_state(optimizer, state)
        start = last + 1

    modules = [model, optimizer, loaders["train"], loaders["eval_train"], loaders["eval_validation"]]
    if head is not None:
        modules.append(head)
    prepared = accelerator.prepare(*modules)
    model, optimizer, train_loader, eval_train, eval_val = prepared[:5]
    head = prepared[5] if head is not None else None
    if log_with:
        accelerator.init_trackers(spec.name, config={"factors": spec.factors()})
    temperature = bp.pretraining.tasks.contrastive.temperature
    label_smoothing = 0.0 if contrastive else aug.label_smoothing

    def evaluate_all() -> tuple[dict, dict]:
        if contrastive:
            seed = spec.data_seed + accelerator.process_index
            return (evaluate_contrastive(model, head, eval_train, temperature, seed),
                    evaluate_contrastive(model, head, eval_val, temperature, seed + 1))
        return evaluate_supervised(model, eval_train, accelerator), evaluate_supervised(model, eval_val, accelerator)

    for epoch in range(start, spec.epochs + 1):
        t0 = time.perf_counter()
        objective = None
        if epoch > 0:
            generator.manual_seed(_epoch_seed(spec, epoch))  # same data order on every process
            _seed(_epoch_seed(spec, epoch, accelerator.process_index))  # own augmentation per process
            model.train()
            total, steps = torch.zeros((), device=accelerator.device), 0
            bar = tqdm(train_loader, desc=f"{spec.name} {epoch}/{spec.epochs}", leave=False,
                       disable=not (main and progress))
            for batch in bar:
                if contrastive:
                    loss = contrastive_step(model, head, optimizer, accelerator, *batch, temperature).loss.detach()
                else:
                    loss = train_step(model, optimizer, accelerator, *batch, label_smoothing)
                total, steps = total + loss.float(), steps + 1
            objective = accelerator.reduce(total, "mean").item() / max(steps, 1)
        train_m, val_m = evaluate_all()
        row = {"epoch": epoch, "train_loss": train_m["loss"], "train_accuracy": train_m["accuracy"],
               "validation_loss": val_m["loss"], "validation_accuracy": val_m["accuracy"],
               "validation_examples": val_m["examples"], "train_objective": objective,
               "seconds": round(time.perf_counter() - t0, 3)}
        row = {k: _finite(v) for k, v in row.items()}
        if main:
            save_checkpoint(path, epoch, accelerator.unwrap_model(model), optimizer, row, val_m["predictions"],
                            accelerator.unwrap_model(head) if head else None)
            write_results(path)
            if progress:
                shown = {k: "nan" if row[k] is None else f"{row[k]:.3f}"
                         for k in ("train_accuracy", "validation_accuracy", "validation_loss")}
                tqdm.write(f"{spec.name} epoch {epoch}: train acc {shown['train_accuracy']} "
                           f"val acc {shown['validation_accuracy']} val loss {shown['validation_loss']}")
        if log_with:
            accelerator.log({k: v for k, v in row.items() if isinstance(v, int | float)}, step=epoch)
        accelerator.wait_for_everyone()
    if main:  # also covers a run killed after its last checkpoint landed but before result.json was written
        write_results(path)
    if log_with:
        accelerator.end_training()
    return path


# --------------------------------------------------------------------------------------------------------------
# A zoo: every model not complete yet, parents first


def _launch_command(n: int) -> list[str]:
    precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--mixed_precision", precision, "--dynamo_backend", "no", "-m", "vitzoo_hf.training"]


def generate(ref: str | Path, out: str | Path, only: Iterable[str] | None = None, num_processes: int = 1,
             log_with: str | None = None, progress: bool = True) -> list[ModelSpec]:
    """Train every (selected) model of the blueprint that is not complete; return the models trained now."""
    bp = load_blueprint(ref)
    out = Path(out)
    models = expand(bp)
    if only:
        names = {m.name for m in models}
        unknown = sorted(set(only) - names)
        if unknown:
            raise ZooError(f"--only names models not in blueprint '{bp.name}': {', '.join(unknown)}; "
                           f"list them with `vitzoo plan {bp.source}`")
        models = [m for m in models if m.name in set(only)]
        chosen = {m.name for m in models}
        for m in models:
            if m.parent and m.parent not in chosen and not is_complete(out, find_model(bp, m.parent)):
                raise ZooError(f"'{m.name}' needs its parent '{m.parent}', which is not trained; "
                               "add the parent to --only")
    if num_processes < 1:
        raise ZooError(f"--num-processes must be >= 1, got {num_processes}")
    todo = []
    for m in models:
        if is_complete(out, m):  # skipped, but only if it is the model this blueprint describes
            check_settings(layout.model_dir(out, m), _model_record(bp, m, None, m.batch_size), resuming=False)
        else:
            todo.append(m)
    for m in tqdm(todo, desc=f"zoo {bp.name}", unit="model", disable=not progress):
        if num_processes == 1:
            train_model(bp, m, out, log_with=log_with, progress=progress)
        else:
            cmd = [*_launch_command(num_processes), "--blueprint", str(bp.source), "--model", m.name, "--out", str(out)]
            cmd += ["--log-with", log_with] if log_with else []
            if subprocess.run(cmd).returncode != 0:
                raise ZooError(f"training '{m.name}' failed in `{shlex.join(cmd)}` (see its output above)")
    return todo


def write_slurm_script(bp: Blueprint, models: Sequence[ModelSpec], script: str | Path, out: str | Path) -> Path:
    """An sbatch submitter: one array job for the backbones, one per backbone for its children (afterok)."""
    script = Path(script)
    pre = [m for m in models if m.stage == "pretraining"]
    lines = ["#!/bin/bash", f"# Regenerates the '{bp.name}' zoo ({len(models)} models) with SLURM job arrays.",
             "# Edit the #SBATCH resources below, then run:  bash " + script.name,
             "set -euo pipefail", f'BLUEPRINT={shlex.quote(str(bp.source))}', f"OUT={shlex.quote(str(out))}",
             'GPUS="${GPUS:-1}"', 'SBATCH_ARGS="${SBATCH_ARGS:---gres=gpu:${GPUS} --cpus-per-task=8 --time=48:00:00}"',
             "run_task() {  # the job body: one model per array task",
             "  cat <<EOF", "#!/bin/bash", "set -euo pipefail", "MODELS=($1)",
             'NAME=\\${MODELS[\\$SLURM_ARRAY_TASK_ID]}',
             'accelerate launch --multi_gpu --num_processes $GPUS --num_machines 1 --dynamo_backend no '
             'training/train.py --blueprint $BLUEPRINT --model \\$NAME --out $OUT',
             "EOF", "}"]
    names = " ".join(m.name for m in pre)
    lines += [f'PRE=$(run_task "{names}" | sbatch --parsable $SBATCH_ARGS --job-name {bp.name}-pre '
              f'--array=0-{len(pre) - 1})', 'echo "pre-training: job $PRE"']
    for i, p in enumerate(pre):
        kids = [m.name for m in models if m.parent == p.name]
        if kids:
            lines.append(f'FT=$(run_task "{" ".join(kids)}" | sbatch --parsable $SBATCH_ARGS --job-name '
                         f'{bp.name}-ft{i} --dependency=afterok:${{PRE}}_{i} --array=0-{len(kids) - 1})')
            lines.append(f'echo "fine-tuning children of {p.name}: job $FT"')
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


def main(argv: Sequence[str] | None = None) -> int:
    """`accelerate launch training/train.py --blueprint B --model NAME --out ZOO_DIR`: one model."""
    p = argparse.ArgumentParser(prog="train.py", description=main.__doc__)
    p.add_argument("--blueprint", required=True, help="shipped blueprint name or YAML path")
    p.add_argument("--model", required=True, help="model name, as listed by `vitzoo plan`")
    p.add_argument("--out", required=True, help="zoo directory")
    p.add_argument("--log-with", default=None, help="Accelerate tracker (tensorboard, wandb, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    def body() -> None:
        bp = load_blueprint(args.blueprint)
        train_model(bp, find_model(bp, args.model), args.out, log_with=args.log_with, progress=not args.no_progress)

    return run_cli("train.py", body)


if __name__ == "__main__":
    sys.exit(main())

