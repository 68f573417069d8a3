"""The paper's recipe (Appendix A) as code: model configuration, per-image transforms, batch mixing, loaders.

Every value comes from the blueprint; training (`vitzoo_hf.training`) only wires these pieces into its loop.
The evaluation transform is also what a checkpoint's image processor reproduces (`image_processor_config`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from torchvision.transforms import v2

from vitzoo_hf.blueprint import Augmentation, Blueprint
from vitzoo_hf.data import class_names
from vitzoo_hf.modeling import ZooViTConfig
from vitzoo_hf.simclr import IMAGENET_MEAN, IMAGENET_STD, TwoViews

EVAL_BATCH_SIZE = 256


def model_config(bp: Blueprint, labels: list[str], head: str = "linear") -> ZooViTConfig:
    """The architecture of the blueprint; `labels` (the data set's class names) become id2label/label2id, so
    a checkpoint's predictions read as class names in `pipeline("image-classification")`."""
    a = bp.architecture
    return ZooViTConfig(
        hidden_size=a.hidden_size, num_hidden_layers=a.num_hidden_layers, num_attention_heads=a.num_attention_heads,
        intermediate_size=a.intermediate_size, patch_size=a.patch_size, image_size=a.image_size,
        drop_path_rate=a.drop_path_rate, head_type=head, head_hidden_size=a.head_hidden_size,
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


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
    """Per-image transforms: (train, eval). Train: resize, random crop, [rotate, flip], erase; eval: center crop."""
    size, resize = bp.architecture.image_size, _resize(bp, aug)
    bicubic = v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    # Training geometry runs on the PIL image (3x faster than on tensors for small images), then converts.
    # Evaluation converts first: resizing the uint8 tensor is exactly what transformers' default image processor
    # does, so a published checkpoint gives the same predictions in `pipeline(...)` as in our evaluation.
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
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

