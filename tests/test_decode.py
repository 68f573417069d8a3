"""The fast input pipelines (vitzoo_hf.decode): the same geometry as the reference transform, reduced-size JPEG
decoding only where it keeps the detail, the float work on the device batch, the device decoder's code path on
the CPU, and loader workers divided among a machine's processes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vitzoo_hf import recipe
from vitzoo_hf.blueprint import load_blueprint
from vitzoo_hf.decode import (
    NO_BOX,
    DeviceFinish,
    DevicePlan,
    FastTrain,
    Plan,
    batch_finisher,
    fast_train_loader,
    render_on_device,
)
from vitzoo_hf.errors import ZooError
from vitzoo_hf.simclr import IMAGENET_MEAN, IMAGENET_STD


def _photo(width: int, height: int, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """Smooth colour fields, like a photo (so resampling differences stay small)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    img = PILImage.fromarray(low).resize((width, height), PILImage.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _reference(size=224, resize=256, erase=0.0, flip=False) -> v2.Compose:
    steps = [v2.RGB(), v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
             v2.RandomCrop(size)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if erase:
        steps.append(v2.RandomErasing(p=erase, value="random"))
    return v2.Compose(steps)


def test_fast_crop_is_the_reference_crop_resampled_from_the_source():
    blob = _photo(500, 375)
    fast = FastTrain(_reference())
    full = PILImage.open(io.BytesIO(blob)).convert("RGB")
    resized = TF.resize(full, 256, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)  # 341 x 256
    for top, left in ((0, 0), (32, 117), (10, 50)):
        want = TF.pil_to_tensor(TF.crop(resized, top, left, 224, 224)).float()
        sy, sx = 375 / 256, 500 / 341
        plan = Plan((375, 500), (top * sy, left * sx, 224 * sy, 224 * sx), False, 0.0, NO_BOX)
        got = fast.render(fast.decode(PILImage.open(io.BytesIO(blob)), plan), plan).float()
        assert got.shape == (3, 224, 224)
        assert (got - want).abs().mean() < 2.5, (top, left)  # the same region; a shifted box differs by ~20
    torch.manual_seed(0)
    plans = [fast.plan(375, 500) for _ in range(200)]
    tops = [p.box[0] / (375 / 256) for p in plans]
    assert min(tops) >= 0 and max(tops) <= 32 and len({round(t) for t in tops}) > 10  # RandomCrop's offsets


def test_reduced_size_decoding_only_where_the_crop_allows_and_keeps_the_detail():
    blob = _photo(1600, 1200, seed=1)
    fast = FastTrain(_reference(size=96, resize=110))  # the crop shrinks ~11x: libjpeg can decode at 1/8
    torch.manual_seed(0)
    plan = fast.plan(1200, 1600)
    small = fast.decode(PILImage.open(io.BytesIO(blob)), plan)
    assert small.shape[-1] < 1600 // 4  # decoded at a reduced DCT scale
    assert min(small.shape[-2:]) * plan.box[2] / 1200 >= 96  # ... but never below the output size
    full = TF.pil_to_tensor(PILImage.open(io.BytesIO(blob)).convert("RGB"))
    a, b = fast.render(small, plan).float(), fast.render(full, plan).float()
    assert (a - b).abs().mean() < 6  # libjpeg's DCT scaling vs a full decode + antialiased resize: ~1.5 % apart
    shifted = Plan(plan.size, (plan.box[0] + 40, *plan.box[1:]), False, 0.0, NO_BOX)
    assert (fast.render(full, shifted).float() - b).abs().mean() > 12  # ... while a box 40 px off is not close
    big = FastTrain(_reference())  # 224 of 375 px: no reduction possible without losing detail
    plan = big.plan(375, 500)
    assert big.decode(PILImage.open(io.BytesIO(_photo(500, 375))), plan).shape == (3, 375, 500)


def test_device_finish_normalises_and_erases_inside_the_boxes_only():
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    boxes = torch.tensor([NO_BOX, (2, 3, 4, 5), (0, 0, 16, 1)], dtype=torch.int16)
    want = TF.normalize(x.float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    inside = torch.zeros_like(want, dtype=torch.bool)
    inside[1, :, 2:6, 3:8] = True
    inside[2, :, :, 0:1] = True
    for vectorized in (False, True):  # the CPU's loop and the accelerators' masks (run here on the CPU)
        out = DeviceFinish(IMAGENET_MEAN, IMAGENET_STD, vectorized)(x, boxes)
        torch.testing.assert_close(out[~inside], want[~inside])
        assert (out[inside] != want[inside]).all()


def test_fast_loader_is_deterministic_for_any_worker_count_and_device_path_runs_on_cpu():
    from datasets import ClassLabel, Dataset, Features, Image

    blobs = [_photo(60 + 7 * i, 48, seed=i, fmt="PNG" if i % 5 == 0 else "JPEG") for i in range(12)]
    features = Features({"image": Image(), "label": ClassLabel(num_classes=3)})
    split = Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in blobs], "label": [i % 3 for i in
                                                                                                range(12)]},
                              features=features)
    reference = _reference(size=32, resize=40, erase=0.5, flip=True)
    batches = {}
    for pipeline, workers in (("fast", 0), ("fast", 2), ("device", 0), ("device", 2)):
        loader, fast = fast_train_loader(pipeline, reference, split, 4, torch.Generator().manual_seed(3), workers)
        finish = batch_finisher(pipeline, fast, torch.device("cpu"))
        torch.manual_seed(0)  # the training loop's generator: the erasing noise
        batches[pipeline, workers] = [finish(*b) for b in loader]
    for pipeline in ("fast", "device"):
        for (x0, y0), (x2, y2) in zip(batches[pipeline, 0], batches[pipeline, 2], strict=True):
            assert torch.equal(x0, x2) and torch.equal(y0, y2)
    for (xf, yf), (xd, yd) in zip(batches["fast", 0], batches["device", 0], strict=True):
        assert xf.shape == xd.shape == (4, 3, 32, 32) and torch.equal(yf, yd)
        assert (xf - xd).abs().mean() < 0.1  # same plans; PIL vs torchvision's libjpeg decode of the same bytes
    assert render_on_device(FastTrain(reference), [], torch.device("cpu")).shape == (0, 3, 32, 32)
    item = DevicePlan(FastTrain(reference))({"bytes": blobs[1], "path": None})
    assert item[0].dim() == 1  # a JPEG stays encoded for the device decoder; a PNG was decoded in the worker
    assert DevicePlan(FastTrain(reference))({"bytes": blobs[0], "path": None})[0].shape[0] == 3


def test_unsupported_recipes_are_refused():
    with pytest.raises(ZooError, match="input_pipeline: reference"):
        FastTrain(v2.Compose([v2.RGB(), v2.CenterCrop(8), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                              v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    with pytest.raises(ZooError, match="device"):
        FastTrain(v2.Compose([v2.RandomResizedCrop(8), v2.ToImage(), v2.ColorJitter(0.5),
                              v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    bp = load_blueprint("smoke")  # the recipe's own transforms are understood
    FastTrain(recipe.image_transforms(bp, bp.finetuning.augmentation)[0])
    FastTrain(recipe.image_transforms(bp, bp.pretraining.tasks.supervised.augmentation)[0])


def test_default_workers_are_divided_among_the_machines_processes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(recipe.os, "sched_getaffinity", lambda _: set(range(16)))
    for local, want in (("1", 8), ("2", 7), ("4", 3), ("8", 1), ("16", 0)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        assert recipe.default_num_workers() == want
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert recipe.default_num_workers(jobs=2) == 3
