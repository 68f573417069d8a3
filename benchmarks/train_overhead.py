"""Training overhead: the whole real path (`train_model`: data pipeline, steps, evaluation, checkpoints with their
sha256 manifests, result.json) against a bare PyTorch loop over the same data, model and device, side by side.

    python benchmarks/train_overhead.py [--epochs 2] [--max-train 512] [--rounds 2]

The bare loop is what anyone would write: the same images and per-image transforms in a plain DataLoader, the same
MixUp/CutMix, AdamW, cross-entropy with label smoothing, evaluation of the train and validation sets each epoch
(the zoo records both), and one safetensors save at the end. Both runs are timed by phase (data = loading the
data set and waiting for batches; step; evaluation; checkpoint); the real path's phases are measured by timing
its own functions (`train_step`, `evaluate_supervised`, `save_checkpoint` + `write_results`), the rest of its wall
time is reported as data/other. Prints seconds per phase and the ratio real / bare of the whole (lower is better).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

import vitzoo_hf.training as training
from vitzoo_hf.blueprint import expand, load_blueprint
from vitzoo_hf.data import class_names, load_splits
from vitzoo_hf.modeling import ZooViTForImageClassification
from vitzoo_hf.recipe import batch_mixer, image_transforms, model_config


def _blueprint(folder: Path, epochs: int, max_train: int) -> Path:
    data = {"extends": "smoke", "name": "overhead",
            "pretraining": {"dataset": {"name": "digits", "max_train": max_train, "max_validation": 256},
                            "epochs": epochs, "tasks": {"contrastive": {"runs": []}}}}
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def real_path(bp, zoo: Path) -> dict[str, float]:
    """`train_model` on the blueprint's supervised backbone, its own functions timed in place."""
    spent: dict[str, float] = defaultdict(float)
    originals = {}

    def timed(name: str, phase: str) -> None:
        fn = originals[name] = getattr(training, name)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - t0

        setattr(training, name, wrapper)

    for name, phase in (("train_step", "step"), ("evaluate_supervised", "evaluation"),
                        ("save_checkpoint", "checkpoint"), ("write_results", "checkpoint")):
        timed(name, phase)
    try:
        t0 = time.perf_counter()
        training.train_model(bp, expand(bp)[0], zoo, progress=False)
        total = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(training, name, fn)
    spent["data/other"] = total - sum(spent.values())
    spent["total"] = total
    return dict(spent)


def bare_loop(bp, out: Path) -> dict[str, float]:
    """The same work as a plain PyTorch loop."""
    spec, stage = expand(bp)[0], bp.pretraining
    aug = stage.tasks.supervised.augmentation
    spent: dict[str, float] = defaultdict(float)
    t_start = time.perf_counter()
    splits = load_splits(stage.dataset.name, stage.dataset.max_train, stage.dataset.max_validation)
    labels = class_names(splits)
    train_tf, eval_tf = image_transforms(bp, aug)
    mix = batch_mixer(aug, len(labels))

    def with_tf(tf):
        return lambda b: {"x": [tf(im) for im in b["image"]], "y": b["label"]}

    def collate(items):
        return torch.stack([i["x"] for i in items]), torch.tensor([i["y"] for i in items])

    train = splits["train"].with_transform(with_tf(train_tf))
    loader = DataLoader(train, spec.batch_size, sampler=RandomSampler(train), collate_fn=collate, drop_last=True)
    evals = [DataLoader(splits[s].with_transform(with_tf(eval_tf)), 256, sampler=SequentialSampler(splits[s]),
                        collate_fn=collate) for s in ("train", "validation")]
    torch.manual_seed(spec.seed)
    model = ZooViTForImageClassification(model_config(bp, labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    spent["data/other"] += time.perf_counter() - t_start

    def evaluate() -> None:
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            for dl in evals:
                for x, y in dl:
                    F.cross_entropy(model(pixel_values=x).logits, y)
        spent["evaluation"] += time.perf_counter() - t0

    evaluate()
    for _ in range(spec.epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            x, soft = mix(x, y)
            t1 = time.perf_counter()
            spent["data/other"] += t1 - t0
            loss = F.cross_entropy(model(pixel_values=x).logits, soft, label_smoothing=aug.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            t0 = time.perf_counter()
            spent["step"] += t0 - t1
        evaluate()
    t0 = time.perf_counter()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    spent["checkpoint"] += time.perf_counter() - t0
    spent["total"] = time.perf_counter() - t_start
    return dict(spent)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-train", type=int, default=512)
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each; the faster run of each is kept")
    args = p.parse_args()
    results: dict[str, list[dict[str, float]]] = {"real": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        bp = load_blueprint(_blueprint(Path(tmp), args.epochs, args.max_train))
        for r in range(args.rounds):  # alternating, so both see the same machine state
            results["bare"].append(bare_loop(bp, Path(tmp)))
            results["real"].append(real_path(bp, Path(tmp) / f"zoo{r}"))
    best = {k: min(v, key=lambda d: d["total"]) for k, v in results.items()}
    spec = expand(bp)[0]
    print(f"{spec.name}: {args.epochs} epochs, {args.max_train} digits images, batch {spec.batch_size}, "
          f"device cpu, torch threads {torch.get_num_threads()}, best of {args.rounds}")
    print(f"{'phase':<12}{'bare s':>9}{'real s':>9}")
    for phase in ("data/other", "step", "evaluation", "checkpoint", "total"):
        print(f"{phase:<12}{best['bare'].get(phase, 0):9.2f}{best['real'].get(phase, 0):9.2f}")
    print(f"ratio real / bare (whole run): {best['real']['total'] / best['bare']['total']:.2f}")


if __name__ == "__main__":
    main()
