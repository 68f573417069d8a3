"""The paper's recipe (Appendix A) as code: model configuration, per-image transforms, batch mixing, loaders.

Every value comes from the blueprint; training (`vitzoo_hf.training`) only wires these pieces into its loop.
The evaluation transform is also what a checkpoint's image processor reproduces (`image_processor_config`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from vitzoo_hf.blueprint import Augmentation, Blueprint
from vitzoo_hf.modeling import ZooViTConfig
from vitzoo_hf.simclr import IMAGENET_MEAN, IMAGENET_STD, TwoViews


def model_config(bp: Blueprint, labels: list[str], head: str = "linear") -> ZooViTConfig:
    """The architecture of the blueprint; `labels` (the data set's class names) become id2label/label2id, so
    a checkpoint's predictions read as class names in `pipeline("image-classification")`."""
    a = bp.architecture
    return ZooViTConfig(
        hidden_size=a.hidden_size, num_hidden_layers=a.num_hidden_layers, num_attention_heads=a.num_attention_heads,
        intermediate_size=a.intermediate_size, patch_size=a.patch_size, image_size=a.image_size,
        drop_path_rate=a.drop_path_rate, head_type=head, head_hidden_size=a.head_hidden_size,
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=a.layer_norm_eps, init=a.init,
        init_bias=a.init_bias)


def _resize(bp: Blueprint, aug: Augmentation) -> int:
    return aug.resize or round(bp.architecture.image_size * 8 / 7)


def image_processor(bp: Blueprint, aug: Augmentation):
    """The evaluation transform as a transformers image processor, saved with every checkpoint: resize the
    shorter side (bicubic, antialiased), centre crop, rescale, ImageNet-normalise. With transformers' default
    (torchvision) backend it reproduces `image_transforms(...)[1]` to float rounding (tests check top-1)."""
    from transformers import BitImageProcessor

    size = bp.architecture.image_size
    return BitImageProcessor(size={"shortest_edge": _resize(bp, aug)}, crop_size={"height": size, "width": size},
                             resample=3, do_center_crop=True, do_convert_rgb=True, image_mean=list(IMAGENET_MEAN),
                             image_std=list(IMAGENET_STD))


def image_transforms(bp: Blueprint, aug: Augmentation) -> tuple[v2.Transform, v2.Transform]:
    """Per-image transforms: (train, eval). Train: resize + random crop (or a random resized crop), [rotate, flip],
    erase; eval: resize + center crop."""
    size, resize = bp.architecture.image_size, _resize(bp, aug)
    bicubic = v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    # Training geometry runs on the PIL image (3x faster than on tensors for small images), then converts.
    # Evaluation converts first: resizing the uint8 tensor is exactly what transformers' default image processor
    # does, so a published checkpoint gives the same predictions in `pipeline(...)` as in our evaluation.
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if aug.crop == "random_resized_crop":  # torchvision's default (bilinear) interpolation, as the authors'
        train = [v2.RGB(), v2.RandomResizedCrop(size, scale=tuple(aug.crop_scale), antialias=True)]
    else:
        train = [v2.RGB(), bicubic, v2.RandomCrop(size)]
    if aug.rotation:
        train.append(v2.RandomRotation(aug.rotation))
    if aug.horizontal_flip:
        train.append(v2.RandomHorizontalFlip())
    train += [v2.ToImage(), *tail]
    if aug.random_erasing:
        train.append(v2.RandomErasing(p=aug.random_erasing, value="random"))  # per-pixel noise, as timm's "pixel"
    return v2.Compose(train), v2.Compose([v2.RGB(), v2.ToImage(), bicubic, v2.CenterCrop(size), *tail])


def batch_mixer(aug: Augmentation, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], tuple]:
    """MixUp or CutMix (one chosen per batch, torchvision v2) → (images, soft targets). Applied by the training
    loop to the batch already on the accelerator: the draws come from the global CPU generator (seeded per epoch
    and process), the arithmetic runs where the batch is."""
    mixers = [m for alpha, m in ((aug.mixup_alpha, v2.MixUp), (aug.cutmix_alpha, v2.CutMix)) if alpha > 0]
    if not mixers:
        return lambda x, y: (x, F.one_hot(y, num_classes).float())
    alphas = [a for a in (aug.mixup_alpha, aug.cutmix_alpha) if a > 0]
    choice = v2.RandomChoice([m(alpha=a, num_classes=num_classes) for m, a in zip(mixers, alphas, strict=True)])
    return lambda x, y: choice(x, y)


# --------------------------------------------------------------------------------------------------------------
# Loaders. Every sample's augmentation is seeded from (epoch, sample index) alone, so the images a batch holds do
# not depend on which process (main or one of N DataLoader workers) made them: any worker count gives the same
# bits, and a resumed epoch the same images as an uninterrupted one.

SAMPLE_SEED_RULE = ("per-image augmentation: torch's CPU generator seeded with (base + index * 0x9E3779B97F4A7C15) "
                    "mod 2**63; base: drawn from the epoch's data-order generator after the shuffle (training), "
                    "the data seed (+1 for validation) for evaluation's fixed contrastive views")
TRAIN_EVAL_RULE = "the first train_max of numpy.random.default_rng(0).permutation(len(train)), in data-set order"


def sample_seed(base: int, index: int) -> int:
    """See SAMPLE_SEED_RULE."""
    return (base + index * 0x9E3779B97F4A7C15) % 2**63


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields (index, augmentation seed) pairs: the indices shuffled by `generator` (as `RandomSampler` does) or
    in order; the seeds from a base drawn from `generator` after the shuffle, or a fixed `base`."""

    def __init__(self, indices: Sequence[int], generator: torch.Generator, shuffle: bool, base: int | None = None):
        self.indices, self.generator, self.shuffle, self.base = list(indices), generator, shuffle, base

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n = len(self.indices)
        order = torch.randperm(n, generator=self.generator).tolist() if self.shuffle else range(n)
        base = self.base if self.base is not None else int(torch.randint(2**62, (), generator=self.generator))
        for k in order:
            yield self.indices[k], sample_seed(base, self.indices[k])


class SeededImages(Dataset):
    """A split of images with a per-image transform run under its sample's seed (keys: (index, seed)). The
    caller's global CPU generator is left as it was, so the main process (0 workers) and a worker give the same
    images and the training loop's own draws (MixUp/CutMix, stochastic depth) are untouched."""

    def __init__(self, split, transform: Callable, cache: tuple[int, int] | None = None):
        self.split, self.transform = split, transform
        # (images, bytes): keep every item once made, if `images` of them fit in `bytes` (judged on the first).
        self._cache: dict[tuple[int, int], tuple[Any, int]] | None = {} if cache else None
        self._cache_plan = cache

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[tuple[Any, int]]:
        if self._cache and all(k in self._cache for k in keys):
            return [self._cache[k] for k in keys]
        out = self._make(keys)
        if self._cache is not None:
            images, budget = self._cache_plan
            if _nbytes(out[0][0]) * images > budget:
                self._cache = None  # too large to keep: made afresh every time, as without a cache
            else:
                self._cache.update(zip(keys, out, strict=True))
        return out

    def _make(self, keys: list[tuple[int, int]]) -> list[tuple[Any, int]]:
        rows = self.split[[i for i, _ in keys]]  # one Arrow read per batch; images decoded here, in the worker
        state = torch.default_generator.get_state()
        try:
            out = []
            for (_, seed), image, label in zip(keys, rows["image"], rows["label"], strict=True):
                torch.default_generator.manual_seed(seed)
                out.append((self.transform(image), label))
            return out
        finally:
            torch.default_generator.set_state(state)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int]:
        return self.__getitems__([key])[0]


def _nbytes(item: Any) -> int:
    if isinstance(item, torch.Tensor):
        return item.numel() * item.element_size()
    return sum(_nbytes(x) for x in item) if isinstance(item, tuple | list) else 0


# Evaluation inputs are the same every epoch (fixed images, fixed seeds: the eval transform, or the contrastive
# eval views), so a split small enough is made once per model and kept: on CPU-scale zoos that was a third of
# each fine-tuning epoch. Larger splits (ImageNet at 224 px) are made afresh every epoch, as before.
EVAL_CACHE_BYTES = 256 * 2**20


def collate_supervised(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def collate_views(items: list[tuple[tuple[torch.Tensor, torch.Tensor], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([v[0] for v, _ in items]), torch.stack([v[1] for v, _ in items])


def default_num_workers(jobs: int = 1) -> int:
    """Loader workers per process when none are set. With a CUDA GPU: this job's share of the usable cores,
    divided among this machine's processes of the run (LOCAL_WORLD_SIZE, set by `accelerate launch` and
    torchrun), minus the one that drives the GPU, at most 8. CPU only: 0, since the training step there is many
    times slower than the pipeline (benchmarks/throughput.py) and workers would only take cores from its torch
    threads."""
    if not torch.cuda.is_available():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    return max(0, min(8, cores // max(jobs * local, 1) - 1))


def train_eval_indices(n: int, train_max: int | None) -> list[int]:
    """The fixed subset of the training split that training metrics are computed on (TRAIN_EVAL_RULE)."""
    if train_max is None or n <= train_max:
        return list(range(n))
    return sorted(np.random.default_rng(0).permutation(n)[:train_max].tolist())


def _loader(ds: SeededImages, batch_size: int, sampler: SeededSampler, collate: Callable, drop_last: bool,
            num_workers: int) -> DataLoader:
    # The loader's own generator only feeds its worker base seeds (unused: every image carries its seed); a
    # private one keeps it off the global generator, whose draws then match with and without workers.
    workers = {"persistent_workers": True, "prefetch_factor": 2} if num_workers else {}  # 2 batches per worker
    return DataLoader(ds, batch_size, sampler=sampler, collate_fn=collate, drop_last=drop_last,
                      num_workers=num_workers, pin_memory=torch.cuda.is_available(), generator=torch.Generator(),
                      **workers)


def supervised_loaders(bp: Blueprint, aug: Augmentation, splits, batch_size: int, generator: torch.Generator,
                       num_workers: int = 0) -> dict[str, DataLoader]:
    """train (shuffled by `generator`, augmented; batches unmixed: see `batch_mixer`), eval_train (the fixed
    subset of `train_eval_indices`) and eval_validation (every image), both with the evaluation transform."""
    train_tf, eval_tf = image_transforms(bp, aug)
    train = SeededImages(splits["train"], train_tf)
    loaders = {"train": _loader(train, batch_size, SeededSampler(range(len(train)), generator, shuffle=True),
                                collate_supervised, len(train) >= batch_size, num_workers)}
    ev = bp.evaluation
    for split, indices in (("train", train_eval_indices(len(splits["train"]), ev.train_max)),
                           ("validation", range(len(splits["validation"])))):
        ds = SeededImages(splits[split], eval_tf, cache=(len(indices), EVAL_CACHE_BYTES))
        loaders[f"eval_{split}"] = _loader(ds, ev.batch_size, SeededSampler(indices, generator, False, base=0),
                                           collate_supervised, False, num_workers)
    return loaders


def contrastive_views(bp: Blueprint) -> TwoViews:
    """The blueprint's SimCLR view generator (both views of one image)."""
    c = bp.pretraining.tasks.contrastive
    return TwoViews(size=bp.architecture.image_size, scale=c.views.crop_scale, brightness=c.views.color_jitter[0],
                    contrast=c.views.color_jitter[1], saturation=c.views.color_jitter[2],
                    hue=c.views.color_jitter[3], p_jitter=c.views.p_color_jitter, p_gray=c.views.p_grayscale,
                    blur_kernel=c.views.blur_kernel, blur_sigma=c.views.blur_sigma, p_blur=c.views.p_blur,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)


def contrastive_loaders(bp: Blueprint, splits, batch_size: int, generator: torch.Generator, data_seed: int = 0,
                        num_workers: int = 0) -> tuple[dict[str, DataLoader], TwoViews]:
    """train (shuffled, two fresh views per image), eval_train (fixed subset) and eval_validation with fixed
    views (seeded from `data_seed`), evaluated at the training batch size: retrieval accuracy depends on it."""
    views = contrastive_views(bp)
    train = SeededImages(splits["train"], views)
    loaders = {"train": _loader(train, batch_size, SeededSampler(range(len(train)), generator, shuffle=True),
                                collate_views, len(train) >= batch_size, num_workers)}
    for offset, split, indices in ((0, "train", train_eval_indices(len(splits["train"]), bp.evaluation.train_max)),
                                   (1, "validation", range(len(splits["validation"])))):
        sampler = SeededSampler(indices, generator, shuffle=False, base=data_seed + offset)
        ds = SeededImages(splits[split], views, cache=(len(indices), EVAL_CACHE_BYTES))
        loaders[f"eval_{split}"] = _loader(ds, batch_size, sampler, collate_views,
                                           len(indices) >= batch_size, num_workers)
    return loaders, views
