"""Training: one zoo model from its blueprint, the paper's recipe, with Accelerate.

`train_model(bp, spec, zoo_dir)` is the whole story for one model, on one process or many:

    config.json ──► epoch 0: evaluate the fresh model, save checkpoint_000000
                └─► for each epoch: reseed (data order, augmentation) ─► train ─► evaluate ─► save checkpoint

Supervised models (pre-training and every fine-tune) learn with MixUp/CutMix soft targets and label smoothing,
the loss computed outside the model; contrastive backbones learn with SimCLR (vitzoo_hf.simclr). The recipe's
pieces live in `vitzoo_hf.recipe`, the checkpoint format in `vitzoo_hf.checkpoints`, running a whole zoo in
`vitzoo_hf.runner`. A run killed at any moment resumes from the last complete epoch; on CPU the result is bitwise
identical to an uninterrupted run because every epoch reseeds all randomness (see `ModelSpec.data_seed`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
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
from torch import nn
from tqdm.auto import tqdm

from vitzoo_hf import layout
from vitzoo_hf.blueprint import (
    DATA_SEED_RULE,
    PRECISIONS,
    Augmentation,
    Blueprint,
    ModelSpec,
    find_model,
    load_blueprint,
)
from vitzoo_hf.checkpoints import (
    final_checkpoint,
    finite,
    is_complete,
    load_optimizer_state,
    read_json,
    save_checkpoint,
    update_json,
    verify_checkpoint,
    write_json_atomic,
    write_results,
)
from vitzoo_hf.data import class_names, load_splits, load_streams
from vitzoo_hf.decode import batch_finisher, fast_train_loader
from vitzoo_hf.errors import ZooError, run_cli
from vitzoo_hf.modeling import ZooViTForImageClassification, ZooViTModel, build_head, reinit_linear
from vitzoo_hf.recipe import (
    SAMPLE_SEED_RULE,
    TRAIN_EVAL_RULE,
    batch_mixer,
    contrastive_loaders,
    default_num_workers,
    image_processor,
    image_transforms,
    model_config,
    supervised_loaders,
)
from vitzoo_hf.simclr import IMAGENET_MEAN, IMAGENET_STD, ProjectionHead, contrastive_loss
from vitzoo_hf.streaming import lockstep, step_weight, streamed_loaders

# --------------------------------------------------------------------------------------------------------------
# Steps and evaluation: the visible training loop's pieces


def train_step(model, optimizer, accelerator: Accelerator, x, soft_targets, label_smoothing: float,
               weight: float = 1.0) -> torch.Tensor:
    """One supervised step on soft targets; the loss lives here: soft labels passed to a transformers model
    would flip it to multi-label BCE and save that in its config. `weight` scales this process's mean loss to its
    share of an uneven global batch (streamed data, `streaming.step_weight`); weight 0 (a process whose streams
    are done, stepping on a padding image) gives zero gradients, but DDP's all-reduce still happens."""
    logits = model(pixel_values=x).logits
    if weight == 0.0:
        loss = logits.sum() * 0.0
    else:
        loss = F.cross_entropy(logits, soft_targets, label_smoothing=label_smoothing)
        if weight != 1.0:
            loss = loss * weight
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    return loss.detach()


def _embed(backbone, head, a: torch.Tensor, b: torch.Tensor, keep: int | None = None) -> tuple[torch.Tensor, ...]:
    """Both views through the backbone in one forward pass, CLS token through the projector; only the first `keep`
    images count (streamed data: a padding image keeps a finished process in DDP's step, contributing no rows)."""
    z_a, z_b = head(backbone(pixel_values=torch.cat([a, b])).last_hidden_state[:, 0]).chunk(2)
    return (z_a, z_b) if keep is None else (z_a[:keep], z_b[:keep])


def contrastive_step(backbone, head, optimizer, accelerator, a, b, temperature, keep: int | None = None):
    """One SimCLR step: NT-Xent over the global batch (negatives gathered with gradients from all processes)."""
    out = contrastive_loss(*_embed(backbone, head, a, b, keep), temperature)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(out.loss)
    optimizer.step()
    return out


@cache
def _accuracy_metric():
    import evaluate

    path = resources.files("vitzoo_hf").joinpath("metrics/zoo_accuracy/zoo_accuracy.py")
    # In memory: predictions are gathered by accelerate first, so no cache files are needed to sync processes,
    # and writing them cost half of each compute (twice per epoch, and once per averaging evaluation).
    return evaluate.load(str(path), keep_in_memory=True)


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
def evaluate_supervised_stream(model, loader, accelerator) -> dict[str, Any]:
    """`evaluate_supervised` for streamed splits: processes hold different numbers of examples, so they step in
    lockstep and the results are gathered once and put in data-set order by each example's key."""
    from accelerate.utils import gather_object

    from vitzoo_hf.streaming import lockstep

    model.eval()
    rows: list[tuple[int, float, int, int]] = []
    for (x, y, keys), _ in lockstep(loader, accelerator):
        logits = model(pixel_values=x.to(accelerator.device)).logits  # a padding image (key -1) too: DDP's step
        loss = F.cross_entropy(logits, y.to(accelerator.device), reduction="none")
        rows += [r for r in zip(keys.tolist(), loss.cpu().tolist(), logits.argmax(-1).cpu().tolist(), y.tolist(),
                                strict=True) if r[0] >= 0]
    model.train()
    if accelerator.num_processes > 1:
        rows = gather_object(rows)
    rows.sort()
    if len({k for k, *_ in rows}) != len(rows):
        raise RuntimeError("a streamed evaluation saw an example twice (a bug in the shard split)")
    preds = torch.tensor([p for _, _, p, _ in rows], dtype=torch.long)
    acc = _accuracy_metric().compute(predictions=preds.tolist(), references=[r for *_, r in rows])
    return {"loss": float(np.mean([loss for _, loss, _, _ in rows])) if rows else float("nan"),
            "accuracy": acc["accuracy"], "examples": acc["count"], "predictions": preds}


@torch.no_grad()
def evaluate_contrastive(backbone, head, loader, temperature) -> dict[str, Any]:
    """InfoNCE loss and top-1 retrieval over the loader's fixed (seeded) views, so epochs are comparable."""
    backbone.eval()
    head.eval()
    loss_sum, correct, total, batches = 0.0, 0, 0, 0
    for a, b, *keep in loader:  # streamed batches carry how many images are real
        out = contrastive_loss(*_embed(backbone, head, a, b, *keep), temperature)
        loss_sum, batches = loss_sum + out.loss.item(), batches + 1
        correct, total = correct + int(out.correct), total + out.total
    backbone.train()
    head.train()
    return {"loss": loss_sum / max(batches, 1), "accuracy": correct / max(total, 1), "examples": total,
            "predictions": None}


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


EPOCH_SEED_RULE = "(data_seed * 1000003 + epoch * 7919 + rank) mod 2**63"


def epoch_seed(spec: ModelSpec, epoch: int, rank: int = 0) -> int:
    """See EPOCH_SEED_RULE (recorded in config.json)."""
    return (spec.data_seed * 1_000_003 + epoch * 7919 + rank) % 2**63


def seed_epoch(generator: torch.Generator, spec: ModelSpec, epoch: int, rank: int = 0) -> None:
    """Reseed an epoch: data order and per-image augmentation (the sampler's generator, the same on every process;
    each image's augmentation is seeded from it and its index, see recipe.SAMPLE_SEED_RULE) and the training
    loop's draws (the global generators, one stream per process: MixUp/CutMix, stochastic depth). All derive
    from `spec.data_seed` alone, so the DataLoader worker count changes nothing."""
    generator.manual_seed(epoch_seed(spec, epoch))
    seed_everything(epoch_seed(spec, epoch, rank))


def resolve_precision(setting: str) -> str:
    """Blueprint/CLI precision → Accelerate's: `auto` is bf16 on CUDA GPUs that run it natively (compute
    capability >= 8.0), else fp32 (no)."""
    if setting == "auto":  # by compute capability: torch.cuda.is_bf16_supported() also counts emulated bf16
        from vitzoo_hf.checks import Machine, resolve_auto

        return resolve_auto(Machine.here())
    if setting == "fp16" and not torch.cuda.is_available():
        raise ZooError("mixed precision 'fp16' needs a CUDA GPU and none is visible; use --mixed-precision auto, "
                       "no or bf16 on this machine")
    return setting


def input_pipeline(bp: Blueprint, spec: ModelSpec) -> str:
    """The supervised training images' pipeline (vitzoo_hf.decode); SimCLR views always take the reference one."""
    return "reference" if spec.task == "contrastive" and spec.stage == "pretraining" else bp.input_pipeline


def model_record(bp: Blueprint, spec: ModelSpec, accelerator: Accelerator | None, per_process_batch: int,
                 num_workers: int | None = None) -> dict:
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
        if c.projection != "mlp":  # recorded when not the default, so folders written before the key still match
            recipe["contrastive"]["projection"] = c.projection
    if input_pipeline(bp, spec) != "reference":  # only when set, so zoos made before the key keep their records
        recipe["input_pipeline"] = input_pipeline(bp, spec)
    if stage.dataset.is_streamed:
        from vitzoo_hf.streaming import STREAM_TRAIN_EVAL_RULE

        recipe["streaming"] = {"train_metrics_subset": STREAM_TRAIN_EVAL_RULE,
                               "order": "depends on (data seed, epoch, processes, workers)"}
    head_init = ("torch default, seeded by head_seed" if bp.finetuning.head_init == "torch_default" else
                 f"kaiming_normal, bias {bp.architecture.init_bias}, seeded by head_seed")
    recipe.update(scheduler=None, head_init=head_init,
                  batch_mixing="MixUp/CutMix on the device batch, in the training loop",
                  train_metrics={"train_max": bp.evaluation.train_max, "subset": TRAIN_EVAL_RULE})
    return {"name": spec.name, "stage": spec.stage, "task": spec.task, "parent": spec.parent,
            "factors": spec.factors(), "batch_size": spec.batch_size, "architecture": asdict(bp.architecture),
            "recipe": recipe,
            "seeds": {"init": spec.seed, "data": spec.data_seed, "rule": DATA_SEED_RULE, "per_epoch": EPOCH_SEED_RULE,
                      "per_image": SAMPLE_SEED_RULE},
            "distribution": {"num_processes": accelerator.num_processes, "per_process_batch_size": per_process_batch,
                             "mixed_precision": accelerator.mixed_precision, "device": str(accelerator.device),
                             "num_workers": num_workers, "eval_batch_size": bp.evaluation.batch_size,
                             "torch_threads": torch.get_num_threads()}
            if accelerator else {"num_processes": None},
            "blueprint": {"name": bp.name, "source": bp.source}, "versions": _versions()}


def check_tracker(log_with: str | None) -> None:
    """`--log-with` must name an Accelerate tracker that is installed: otherwise Accelerate only warns, and a whole
    zoo trains with its metrics going nowhere."""
    if not log_with:
        return
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    known = sorted(LOGGER_TYPE_TO_CLASS)
    available = sorted(str(getattr(t, "value", t)) for t in get_available_trackers())
    if log_with != "all" and log_with not in known:
        raise ZooError(f"--log-with {log_with} is not an Accelerate tracker; use one of: all, {', '.join(known)} "
                       f"(installed here: {', '.join(available) or 'none'})")
    if log_with == "all" and not available:
        raise ZooError(f"--log-with all: no Accelerate tracker is installed; pip install one of: {', '.join(known)} "
                       "(e.g. tensorboard)")
    if log_with != "all" and log_with not in available:
        raise ZooError(f"--log-with {log_with}: the tracker is not installed; pip install {log_with} (installed "
                       f"here: {', '.join(available) or 'none'}; e.g. pip install tensorboard)")


def _accelerator(log_with: str | None, project_dir: Path, precision: str) -> Accelerator:
    """The precision is ours (blueprint or --mixed-precision), never the launcher's: `accelerate launch` always
    sets ACCELERATE_MIXED_PRECISION (to `no` unless configured), which would make launch paths differ."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher not in (None, "no", precision):
        print(f"vitzoo: note: ignoring the launcher's mixed precision '{launcher}'; this run uses '{precision}' "
              "(set it with the blueprint key mixed_precision or --mixed-precision)", file=sys.stderr)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision, log_with=log_with,
                       project_dir=str(project_dir))


@contextmanager
def quiet_transformers():
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
                progress: bool = True, mixed_precision: str | None = None, num_workers: int | None = None) -> Path:
    """Train (or resume, or skip if complete) one model; return its directory. `mixed_precision` overrides the
    blueprint's setting (auto | no | bf16 | fp16), `num_workers` its DataLoader workers (default: from the CPU
    count); neither changes a bit of the result on CPU."""
    if num_workers is None:
        num_workers = bp.num_workers if bp.num_workers is not None else default_num_workers()
    if num_workers < 0:
        raise ZooError(f"--num-workers must be >= 0, got {num_workers}")
    check_tracker(log_with)
    with quiet_transformers():
        return _train_model(bp, spec, Path(zoo_dir), log_with, progress, mixed_precision or bp.mixed_precision,
                            num_workers)


_SETTINGS = ("factors", "batch_size", "architecture", "recipe", "seeds")


# Recipe keys added after zoos were first written, with the value every earlier zoo was trained with: a folder
# written before a key existed still matches a blueprint that leaves the key at that value.
ADDED_KEYS: dict[tuple[str, ...], dict[str, Any]] = {
    ("architecture",): {"layer_norm_eps": 1e-12, "init": "hf", "init_bias": 0.0},
    ("recipe", "augmentation"): {"crop": "resize_crop", "crop_scale": [0.08, 1.0]},
    ("recipe", "dataset"): {"streaming": None, "validation_labels": None},
}


def _with_added_keys(old: dict[str, Any]) -> dict[str, Any]:
    old = json.loads(json.dumps(old))
    for where, defaults in ADDED_KEYS.items():
        section = old
        for key in where:
            section = section.get(key) if isinstance(section, dict) else None
        if isinstance(section, dict):
            for key, value in defaults.items():
                section.setdefault(key, value)
    return old


def check_settings(path: Path, record: dict[str, Any], resuming: bool) -> None:
    """A model folder must hold the model the blueprint describes (same factors, recipe, seeds) and, to resume
    bitwise, be resumed with the process count it started with; otherwise stop before training or skipping."""
    cfg_path = path / layout.CONFIG_FILE
    if not cfg_path.exists():
        return
    old = _with_added_keys(read_json(cfg_path))
    changed = [k for k in _SETTINGS if old.get(k) != json.loads(json.dumps(record[k]))]  # as stored: lists
    if changed:
        raise ZooError(f"{path} holds '{record['name']}' trained with other settings ({', '.join(changed)} differ "
                       "from the blueprint); delete that folder to retrain it, or choose another --out")
    if not resuming:
        return
    before, now = old.get("distribution") or {}, record["distribution"]
    if before.get("num_processes") != now["num_processes"]:
        raise ZooError(f"{path} was started with {before.get('num_processes')} process(es) and is resumed with "
                       f"{now['num_processes']}; its data order depends on that: resume with "
                       f"{before.get('num_processes')}, or delete the folder to restart")
    if "streaming" in record["recipe"] and before.get("num_workers") != now["num_workers"]:
        raise ZooError(f"{path} streams its data and was started with {before.get('num_workers')} DataLoader "
                       f"worker(s) per process, resumed with {now['num_workers']}; a stream's order depends on "
                       f"that: resume with --num-workers {before.get('num_workers')}, or delete the folder to restart")


def check_precision(path: Path, precision: str) -> None:
    """A resume keeps the precision the run started with (checked before Accelerate's state is created)."""
    cfg_path = path / layout.CONFIG_FILE
    before = (read_json(cfg_path).get("distribution") or {}).get("mixed_precision") if cfg_path.exists() else None
    if before is not None and before != precision:
        raise ZooError(f"{path} was started with mixed precision '{before}' and is resumed with '{precision}'; "
                       f"resume with --mixed-precision {before}, or delete the folder to restart")


def _train_model(bp: Blueprint, spec: ModelSpec, zoo_dir: Path, log_with: str | None, progress: bool,
                 precision: str, num_workers: int) -> Path:
    path = layout.model_dir(zoo_dir, spec)
    if is_complete(zoo_dir, spec):
        check_settings(path, model_record(bp, spec, None, spec.batch_size), resuming=False)
        return path
    precision = resolve_precision(precision)
    check_precision(path, precision)
    accelerator = _accelerator(log_with, path, precision)
    n_proc, main = accelerator.num_processes, accelerator.is_main_process
    if spec.batch_size % n_proc:
        raise ZooError(f"batch size {spec.batch_size} of '{spec.name}' is not divisible by {n_proc} processes; "
                       "use a process count that divides it")
    per_process_batch = spec.batch_size // n_proc
    record = model_record(bp, spec, accelerator, per_process_batch, num_workers)
    parent_ckpt = final_checkpoint(zoo_dir, find_model(bp, spec.parent)) if spec.parent else None

    check_settings(path, record, resuming=True)  # on every rank, so no rank waits for one that raised
    if main:
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob(".checkpoint_*.partial"):
            shutil.rmtree(stale)
        if not (path / layout.CONFIG_FILE).exists():
            write_json_atomic(path / layout.CONFIG_FILE, json.dumps(record, indent=1))
    accelerator.wait_for_everyone()

    # Data: an Arrow table with a seeded sampler, or shards streamed as training goes (vitzoo_hf.streaming)
    stage = bp.pretraining if spec.stage == "pretraining" else bp.finetuning
    streamed = stage.dataset.is_streamed
    generator = torch.Generator()
    contrastive = spec.task == "contrastive" and spec.stage == "pretraining"
    aug = Augmentation() if contrastive else (
        bp.finetuning.augmentation if spec.stage == "finetuning" else bp.pretraining.tasks.supervised.augmentation)
    pipeline, fast = input_pipeline(bp, spec), None
    if streamed:
        streams = load_streams(stage.dataset.name)
        labels = streams.names
        loaders, fast = streamed_loaders(bp, aug, streams, per_process_batch, accelerator.process_index, n_proc,
                                         num_workers, contrastive, pipeline)
        loaders["eval_train"].dataset.set_epoch(spec.data_seed)  # fixed views for evaluation, as map-style
        loaders["eval_validation"].dataset.set_epoch(spec.data_seed + 1)
    else:
        splits = load_splits(stage.dataset.name, stage.dataset.max_train, stage.dataset.max_validation,
                             stage.dataset.validation_labels)
        labels = class_names(splits)
        if contrastive:
            loaders, _ = contrastive_loaders(bp, splits, per_process_batch, generator, spec.data_seed, num_workers)
        else:
            loaders = supervised_loaders(bp, aug, splits, per_process_batch, generator, num_workers)
            if pipeline != "reference":
                loaders["train"], fast = fast_train_loader(pipeline, image_transforms(bp, aug)[0], splits["train"],
                                                           per_process_batch, generator, num_workers)
    processor = image_processor(bp, aug)  # contrastive: what a user's feature extraction should see
    if not contrastive:
        mix = batch_mixer(aug, len(labels))
        finish = batch_finisher(pipeline, fast, accelerator.device)

    # Model: initialised from the seed; fine-tunes take the parent's backbone and a head from the head seed
    seed_everything(spec.seed)
    head: ProjectionHead | None = None
    if contrastive:
        c = bp.pretraining.tasks.contrastive
        model: nn.Module = ZooViTModel(model_config(bp, labels))
        head = ProjectionHead(bp.architecture.hidden_size, c.projection_hidden_size, c.projection_dim,
                              layers=1 if c.projection == "linear" else 2)
        reinit_linear(head, bp.architecture.init, bp.architecture.init_bias)  # like the backbone's own layers
        params = [*model.parameters(), *head.parameters()]
    else:
        model = ZooViTForImageClassification(model_config(bp, labels, spec.head or "linear"))
        if parent_ckpt is not None:
            model.vit.load_state_dict(ZooViTModel.from_pretrained(parent_ckpt).state_dict())
            seed_everything(spec.seed)  # the head seed
            model.classifier = build_head(model.config)
            if bp.finetuning.head_init == "kaiming_normal":  # every Linear of the head, the MLP's too
                reinit_linear(model.classifier, "kaiming_normal", bp.architecture.init_bias)
        params = list(model.parameters())
    if spec.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)

    if main:  # every optimizer hyperparameter, defaults included (betas, eps, nesterov, ...)
        hparams = {k: v for k, v in optimizer.defaults.items() if isinstance(v, bool | int | float | str | tuple)}
        update_json(path / layout.CONFIG_FILE, "optimizer", {"name": type(optimizer).__name__, **hparams})

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

    # Streamed loaders are split by shard already (and end unevenly): Accelerate must not shard them again.
    data = [] if streamed else [loaders["train"], loaders["eval_train"], loaders["eval_validation"]]
    prepared = accelerator.prepare(model, optimizer, *data, *([head] if head is not None else []))
    model, optimizer = prepared[:2]
    train_loader, eval_train, eval_val = prepared[2:5] if not streamed else (
        loaders["train"], loaders["eval_train"], loaders["eval_validation"])
    head = prepared[-1] if head is not None else None
    if log_with:
        accelerator.init_trackers(spec.name, config={"factors": spec.factors()})
    temperature = bp.pretraining.tasks.contrastive.temperature
    label_smoothing = 0.0 if contrastive else aug.label_smoothing

    def batches(loader):
        """A loader's batches on this process with (examples in this step on all processes, on this one):
        streamed, in lockstep across processes (a finished process steps on one padding image, key -1);
        map-style, every process holds a full batch (None, None)."""
        if not streamed:
            return ((b, None, None) for b in loader)
        return (((*(t.to(accelerator.device) if torch.is_tensor(t) else t for t in b[:-1]),), total,
                 int((b[-1] >= 0).sum())) for b, total in lockstep(loader, accelerator))

    def evaluate_all() -> tuple[dict, dict]:
        if contrastive:
            def views(loader):
                return ((*b, local) if streamed else b for b, _, local in batches(loader))

            return (evaluate_contrastive(model, head, views(eval_train), temperature),
                    evaluate_contrastive(model, head, views(eval_val), temperature))
        if streamed:
            return (evaluate_supervised_stream(model, eval_train, accelerator),
                    evaluate_supervised_stream(model, eval_val, accelerator))
        return evaluate_supervised(model, eval_train, accelerator), evaluate_supervised(model, eval_val, accelerator)

    for epoch in range(start, spec.epochs + 1):
        t0 = time.perf_counter()
        objective = None
        if epoch > 0:
            seed_epoch(generator, spec, epoch, accelerator.process_index)
            if streamed:  # shard order, shuffle buffer and per-image seeds of this epoch
                loaders["train"].dataset.set_epoch(epoch_seed(spec, epoch))
            model.train()
            total, steps = torch.zeros((), device=accelerator.device), 0
            bar = tqdm(batches(train_loader), desc=f"{spec.name} {epoch}/{spec.epochs}", leave=False,
                       total=None if streamed else len(train_loader), disable=not (main and progress))
            for batch, examples, local in bar:
                if contrastive:
                    loss = contrastive_step(model, head, optimizer, accelerator, *batch, temperature,
                                            local).loss.detach()
                else:
                    x, y = finish(*batch)
                    weight = 1.0 if examples is None else step_weight(local, examples, n_proc)
                    x, soft = mix(x, y) if weight else (x, F.one_hot(y, len(labels)).float())
                    loss = train_step(model, optimizer, accelerator, x, soft, label_smoothing, weight)
                total, steps = total + loss.float(), steps + 1
            objective = accelerator.reduce(total, "mean").item() / max(steps, 1)
        train_m, val_m = evaluate_all()
        row = {"epoch": epoch, "train_loss": train_m["loss"], "train_accuracy": train_m["accuracy"],
               "validation_loss": val_m["loss"], "validation_accuracy": val_m["accuracy"],
               "validation_examples": val_m["examples"], "train_objective": objective,
               "seconds": round(time.perf_counter() - t0, 3)}
        row = {k: finite(v) for k, v in row.items()}
        if main:
            with SIGTERM_STOP.saving_checkpoint():  # a SIGTERM now stops right after this epoch's checkpoint
                save_checkpoint(path, epoch, accelerator.unwrap_model(model), optimizer, row, val_m["predictions"],
                                accelerator.unwrap_model(head) if head else None, processor)
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





class Preempted(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit or preemption): stop like Ctrl-C; the last complete epoch is kept."""


class _SigtermStop:
    """SIGTERM stops training at once, except while an epoch's checkpoint is being written: that one is finished
    first (it is the work a requeued run would otherwise redo), then the run stops. A resumed run continues after
    the last complete checkpoint; the interrupted epoch is trained again from its start, the same batches."""

    def __init__(self) -> None:
        self.saving, self.pending = False, False

    def handler(self, signum, frame) -> None:
        if self.saving:
            self.pending = True
            return
        raise Preempted

    @contextmanager
    def saving_checkpoint(self):
        self.saving = True
        try:
            yield
        finally:
            self.saving = False
        if self.pending:
            raise Preempted


SIGTERM_STOP = _SigtermStop()


def main(argv: Sequence[str] | None = None) -> int:
    """`accelerate launch training/train.py --blueprint B --model NAME --out ZOO_DIR`: one model."""
    p = argparse.ArgumentParser(prog="train.py", description=main.__doc__)
    p.add_argument("--blueprint", required=True, help="shipped blueprint name or YAML path")
    p.add_argument("--model", required=True, help="model name, as listed by `vitzoo plan`")
    p.add_argument("--out", required=True, help="zoo directory")
    p.add_argument("--log-with", default=None, help="Accelerate tracker (tensorboard, wandb, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--mixed-precision", choices=PRECISIONS, default=None,
                   help="training precision (default: the blueprint's mixed_precision, itself 'auto': bf16 on a "
                        "CUDA GPU that supports it, else fp32); the launcher's --mixed_precision is ignored")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader worker processes (default: the blueprint's num_workers, else from the CPU count); "
                        "results do not depend on it")
    args = p.parse_args(argv)

    def body() -> None:
        if threading.current_thread() is threading.main_thread():  # SLURM's --signal, `kill`: stop cleanly
            signal.signal(signal.SIGTERM, SIGTERM_STOP.handler)
        bp = load_blueprint(args.blueprint)
        train_model(bp, find_model(bp, args.model), args.out, log_with=args.log_with, progress=not args.no_progress,
                    mixed_precision=args.mixed_precision, num_workers=args.num_workers)

    return run_cli("train.py", body)


if __name__ == "__main__":
    sys.exit(main())

