"""Throughput of generation's two halves, measured apart: the input pipeline alone (decode + per-image augmentation
in 0, 1, 2 ... DataLoader workers) and the training step alone (forward, backward, AdamW, MixUp/CutMix on the device
batch), for the `paper` architecture (ViT-S/16 at 224 px, on synthetic 500x375 JPEGs like ImageNet's) and the
`mini` one (28x28 greyscale PNGs like Fashion-MNIST). Prints which half bounds training and by how much; on a CUDA
GPU also the training step's model FLOP utilisation (bf16, FLOPs counted analytically for the ViT).

First, for `paper`, the input pipelines side by side on one core (torch threads 1, no workers), rounds interleaved
so a shared machine's load hits each alike: `reference` (today's: full decode, PIL resize, float work per image),
`fast` (reduced-size JPEG decoding, uint8 crop+resize in the worker, float work on the device batch) and `device`
(the worker only plans; decoding on the device: nvJPEG on a GPU, libjpeg here), for the paper's fine-tune-style
crop (Resize 256 + RandomCrop 224) and the authors' pre-training crop (RandomResizedCrop 224 + flip). Each path is
given as the worker part (what a GPU node's CPUs must do per image) and worker + device part both on this core.

    python benchmarks/throughput.py                      # both architectures, 0/1/2 workers, ~1-2 min on 2 CPU cores
    python benchmarks/throughput.py --arch paper --workers 0 4 8 --images 2048 --steps 20 --batch-size 256
    python benchmarks/throughput.py --arch paper --workers --rounds 5   # only the per-core pipeline comparison
    python benchmarks/throughput.py --peak-tflops 989    # the GPU's dense bf16 peak, if it is not in the table

On a CPU-only machine both halves share the same cores, so the two rates are each an upper bound; on a GPU node
the pipeline runs on the CPUs and the step on the accelerator, and the slower one is what training gets.
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np
import torch
from accelerate import Accelerator
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from torchvision.transforms import v2

from vitzoo_hf.blueprint import Architecture, load_blueprint
from vitzoo_hf.decode import batch_finisher, fast_train_loader
from vitzoo_hf.modeling import ZooViTForImageClassification
from vitzoo_hf.recipe import (
    SeededImages,
    SeededSampler,
    _loader,
    batch_mixer,
    image_transforms,
    model_config,
    supervised_loaders,
)
from vitzoo_hf.simclr import IMAGENET_MEAN, IMAGENET_STD
from vitzoo_hf.training import train_step

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0, "B200": 2250.0, "GH200": 989.0}
SOURCES = {"paper": ((500, 375), "RGB", "JPEG"), "mini": ((28, 28), "L", "PNG")}


def synthetic_images(n: int, size: tuple[int, int], mode: str, fmt: str, seed: int = 0) -> DatasetDict:
    """`n` encoded images with photo-like content (smooth colour fields plus grain), as a datasets split."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    blobs = []
    for _ in range(n):
        low = rng.integers(0, 256, (size[1] // 25 + 2, size[0] // 25 + 2, channels), dtype=np.uint8)
        field = np.asarray(PILImage.fromarray(low.squeeze(-1) if channels == 1 else low).resize(size, 3))
        grain = rng.normal(0, 12, field.shape)
        img = PILImage.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        blobs.append({"bytes": buf.getvalue(), "path": None})
    features = Features({"image": Image(), "label": ClassLabel(num_classes=10)})
    ds = Dataset.from_dict({"image": blobs, "label": rng.integers(0, 10, n).tolist()}, features=features)
    return DatasetDict(train=ds, validation=ds.select(range(min(n, 64))))


def vit_training_flops(a: Architecture, num_classes: int) -> float:
    """FLOPs of one training step per image (3 x forward: backward costs two forwards), counting multiply-adds
    as 2: patch embedding, per layer the QKV/output/MLP matmuls (2 N params) and attention's two N x N products
    (4 N^2 d), and the linear head. Norms, softmax and GELU are left out (< 1 %)."""
    patches = (a.image_size // a.patch_size) ** 2
    n, d, m = patches + 1, a.hidden_size, a.intermediate_size
    embed = 2 * patches * (3 * a.patch_size**2) * d
    layer = 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d
    return 3.0 * (embed + a.num_hidden_layers * layer + 2 * d * num_classes)


def counted_forward_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs per image as PyTorch's FlopCounterMode counts them (a check on the analytic formula)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=x)
    return counter.get_total_flops() / x.shape[0]


def pipeline_rate(bp, splits, batch_size: int, workers: int) -> float:
    """Images/s of decode + per-image augmentation + collation through the training loader (second epoch, so
    persistent workers are already up)."""
    aug = bp.pretraining.tasks.supervised.augmentation
    generator = torch.Generator().manual_seed(0)
    loader = supervised_loaders(bp, aug, splits, batch_size, generator, num_workers=workers)["train"]
    for _ in loader:  # warm-up epoch: starts the workers
        pass
    t0, n = time.perf_counter(), 0
    for x, _ in loader:
        n += x.shape[0]
    rate = n / (time.perf_counter() - t0)
    del loader
    return rate


def crops(bp) -> dict[str, v2.Compose]:
    """The reference training transforms compared: the blueprint's supervised one and the authors' pre-training
    crop (RandomResizedCrop + flip, built here so the comparison does not depend on the blueprint's keys)."""
    aug = bp.pretraining.tasks.supervised.augmentation
    size = bp.architecture.image_size
    rrc = v2.Compose([v2.RGB(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.ToImage(),
                      v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                      v2.RandomErasing(p=aug.random_erasing, value="random")])
    return {"blueprint crop": image_transforms(bp, aug)[0], "RandomResizedCrop+flip": rrc}


def per_core(bp, splits, batch_size: int, rounds: int, pipelines: list[str]) -> dict[tuple[str, str], tuple]:
    """(crop, pipeline) -> (worker-part img/s, worker+device-part img/s) on one core, best of `rounds`
    interleaved rounds (the machine's load varies; the best round is the least disturbed one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    best: dict[tuple[str, str], tuple[float, float]] = {}
    try:
        for _ in range(rounds):
            for crop, compose in crops(bp).items():
                for pipeline in pipelines:
                    generator = torch.Generator().manual_seed(0)
                    if pipeline == "reference":
                        ds = SeededImages(splits["train"], compose)
                        sampler = SeededSampler(range(len(ds)), generator, shuffle=True)
                        from vitzoo_hf.recipe import collate_supervised

                        loader, fast = _loader(ds, batch_size, sampler, collate_supervised, False, 0), None
                    else:
                        loader, fast = fast_train_loader(pipeline, compose, splits["train"], batch_size, generator, 0)
                    finish = batch_finisher(pipeline, fast, cpu)
                    t_worker = t_device = 0.0
                    n, it = 0, iter(loader)
                    while True:
                        t0 = time.perf_counter()
                        batch = next(it, None)
                        t1 = time.perf_counter()
                        if batch is None:
                            break
                        x, _ = finish(*batch)
                        t_worker, t_device = t_worker + t1 - t0, t_device + time.perf_counter() - t1
                        n += x.shape[0]
                    rates = (n / t_worker, n / (t_worker + t_device))
                    old = best.get((crop, pipeline), (0.0, 0.0))
                    best[(crop, pipeline)] = (max(old[0], rates[0]), max(old[1], rates[1]))
    finally:
        torch.set_num_threads(threads)
    return best


def step_rate(bp, batch_size: int, steps: int, precision: str) -> tuple[float, ZooViTForImageClassification]:
    """Images/s of the training step alone (batch already on the device, MixUp/CutMix included)."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    torch.manual_seed(0)
    model = ZooViTForImageClassification(model_config(bp, [str(i) for i in range(10)])).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    size = bp.architecture.image_size
    x = torch.randn(batch_size, 3, size, size, device=accelerator.device)
    y = torch.randint(0, 10, (batch_size,), device=accelerator.device)
    mix = batch_mixer(bp.pretraining.tasks.supervised.augmentation, 10)
    sync = torch.cuda.synchronize if accelerator.device.type == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up (allocator, kernels)
        train_step(model, optimizer, accelerator, *mix(x, y), 0.1)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, accelerator, *mix(x, y), 0.1)
    sync()
    return steps * batch_size / (time.perf_counter() - t0), accelerator.unwrap_model(model)


def peak_tflops(flag: float | None) -> tuple[float | None, str]:
    if flag:
        return flag, "--peak-tflops"
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value, f"table entry {key!r} for {name}"
    return None, f"{name} is not in the table; pass --peak-tflops"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["paper", "mini"], choices=list(SOURCES))
    p.add_argument("--workers", nargs="*", type=int, default=[0, 1, 2], help="DataLoader worker counts to measure")
    p.add_argument("--images", type=int, default=None, help="synthetic images per epoch (default: CPU 192, GPU 2048)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training-step batch (default: the blueprint's first run on GPU; CPU: 8 paper, 64 mini)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default: CPU 3, GPU 20)")
    p.add_argument("--peak-tflops", type=float, default=None, help="accelerator's dense bf16 peak for MFU")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the per-core pipeline comparison")
    p.add_argument("--pipelines", nargs="+", default=["reference", "fast", "device"],
                   choices=["reference", "fast", "device"], help="input pipelines compared per core (paper only)")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} torch threads)"
    print(f"device: {device}; training precision {precision}; "
          f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")

    for arch in args.arch:
        bp = load_blueprint(arch)
        a = bp.architecture
        size, mode, fmt = SOURCES[arch]
        images = args.images or (2048 if cuda else 192)
        batch = args.batch_size or (bp.pretraining.tasks.supervised.runs[0].batch_size if cuda
                                    else {"paper": 8, "mini": 64}[arch])
        steps = args.steps or (20 if cuda else 3)
        splits = synthetic_images(images, size, mode, fmt)
        print(f"\n== {arch}: ViT hidden {a.hidden_size} x {a.num_hidden_layers} layers, patch {a.patch_size}, "
              f"{a.image_size} px; source images {size[0]}x{size[1]} {mode} {fmt}, {images} per epoch")
        if arch == "paper" and args.pipelines:
            load = os.getloadavg()[0]
            table = per_core(bp, splits, min(batch, 64) if not cuda else batch, args.rounds, args.pipelines)
            print(f"input pipelines on one core (torch threads 1, no workers; best of {args.rounds} interleaved "
                  f"rounds; load average {load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):")
            print(f"  {'crop':24s} {'pipeline':10s} {'worker part':>14s} {'x ref':>6s} {'+ device part':>14s} "
                  f"{'x ref':>6s}")
            for (crop, pipeline), (worker, total) in table.items():
                ref = table[(crop, args.pipelines[0])]
                print(f"  {crop:24s} {pipeline:10s} {worker:10.1f} im/s {worker / ref[0]:5.2f}x {total:10.1f} im/s "
                      f"{total / ref[1]:5.2f}x")
            print("  (worker part: decode + augmentation a loader worker does; + device part: the float work and, "
                  "for 'device', the decoding, here on this CPU core too; on a GPU node that part runs on the GPU)")
        rates = {w: pipeline_rate(bp, splits, min(batch, 64) if not cuda else batch, w) for w in args.workers}
        for w, r in rates.items():
            print(f"input pipeline, {w} worker(s): {r:9.1f} images/s  ({r / rates[args.workers[0]]:.2f}x of "
                  f"{args.workers[0]} workers)")
        step, model = step_rate(bp, batch, steps, precision)
        print(f"training step, batch {batch}:  {step:9.1f} images/s")
        for w, r in rates.items():
            if r < step:
                print(f"  with {w} worker(s): INPUT-bound: the pipeline feeds {r:.0f} of the {step:.0f} images/s "
                      f"the step could take ({step / r:.1f}x short)")
            else:
                print(f"  with {w} worker(s): compute-bound: the pipeline could feed {r / step:.1f}x what the step "
                      "takes")
        flops = vit_training_flops(a, 10)
        cpu_model = ZooViTForImageClassification(model_config(bp, [str(i) for i in range(10)])).eval()
        counted = 3 * counted_forward_flops(cpu_model, torch.randn(1, 3, a.image_size, a.image_size))
        n = (a.image_size // a.patch_size) ** 2 + 1
        attention = 3 * 4 * n * n * a.hidden_size * a.num_hidden_layers
        print(f"training FLOPs per image: {flops / 1e9:.3f} GFLOP analytic, of which attention's N x N products "
              f"{attention / 1e9:.3f}; FlopCounterMode {counted / 1e9:.3f} (it does not count CPU attention kernels)")
        if cuda:
            peak, source = peak_tflops(args.peak_tflops)
            achieved = flops * step / 1e12
            mfu = f"{100 * achieved / peak:.1f} % of {peak:.0f} TFLOP/s ({source})" if peak else source
            print(f"model FLOP utilisation ({precision}): {achieved:.1f} TFLOP/s achieved = {mfu}")
        del model


if __name__ == "__main__":
    main()
