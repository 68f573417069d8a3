"""The fast input pipeline: JPEGs decoded at reduced size before the crop, geometry in uint8, float work on the
device batch.

The reference pipeline (`recipe.image_transforms`) decodes every image at full size, resizes all of it, crops,
and does the float work (scale, normalise, random erasing) per image on the CPU: about 160 images/s per core for
ImageNet-sized JPEGs at 224 px. Here the same recipe is split in three (`benchmarks/throughput.py` measures it):

    plan    (worker, per image)   every random draw: the crop box, flip, rotation angle, erasing box; read the size
                                   from the JPEG header only
    render  (worker or device)    decode only what the crop needs (libjpeg DCT scaling through PIL's `draft` when
                                   the crop is at least 2x larger than the output; nvJPEG through
                                   `torchvision.io.decode_jpeg(device="cuda")` in the `device` pipeline), then
                                   crop + resize + flip + rotate the uint8 tensor
    finish  (device, per batch)   uint8 -> float, normalise, random erasing with per-image boxes

Every draw happens in `plan`, under the image's own seed (recipe.SAMPLE_SEED_RULE), so the result is the same
whichever process or device renders it; only the erasing noise is drawn on the device, from the training loop's
generator (seeded per epoch and process, like MixUp/CutMix). The images differ from the reference pipeline's by
resampling detail (the crop is resized straight from the source instead of resizing the whole image first), so the
choice is a recipe key (`input_pipeline`) recorded in every model's config.json.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image as PILImage
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vitzoo_hf.errors import ZooError

PIPELINES = ("reference", "fast", "device")
NO_BOX = (-1, -1, -1, -1)


def decode_device(requested: str = "auto") -> torch.device:
    """Where the `device` pipeline decodes: the CUDA GPU when there is one (nvJPEG), else the CPU (same code)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass(frozen=True)
class Plan:
    """One image's random draws and source geometry: the crop box in source pixels (top, left, height, width),
    flip, rotation angle (degrees) and the erasing box on the output (top, left, height, width; -1 = none)."""

    size: tuple[int, int]  # source (height, width)
    box: tuple[float, float, float, float]
    flip: bool
    angle: float
    erase: tuple[int, int, int, int]


def _blob(image: Any) -> tuple[bytes | None, PILImage.Image | None]:
    """Raw bytes of an undecoded `datasets.Image` value ({bytes, path}), bytes, or an already decoded PIL image."""
    if isinstance(image, PILImage.Image):
        return None, image
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            return image["bytes"], None
        with open(image["path"], "rb") as f:
            return f.read(), None
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image), None
    raise TypeError(f"cannot decode an image given as {type(image).__name__}")


def open_image(image: Any) -> PILImage.Image:
    """A PIL image from an undecoded `datasets.Image` value, bytes, or a PIL image (the reference pipeline's
    input, decoded at full size)."""
    blob, pil = _blob(image)
    return pil if pil is not None else PILImage.open(io.BytesIO(blob))


def is_jpeg(blob: bytes) -> bool:
    return blob[:3] == b"\xff\xd8\xff"


class FastTrain:
    """The training transform of `recipe.image_transforms(...)[0]`, re-planned for the fast pipelines.

    Understands the geometry the recipe builds: `Resize(s)` + `RandomCrop(c)`, or `RandomResizedCrop(c)`, then
    `RandomRotation` / `RandomHorizontalFlip` in any order, then `ToImage, ToDtype, Normalize[, RandomErasing]`.
    Anything else is refused when the loader is built (so a recipe change cannot silently bypass it)."""

    def __init__(self, reference: v2.Compose):
        steps = [t for t in reference.transforms if not isinstance(t, v2.RGB)]
        self.resize: int | None = None
        self.rrc: v2.RandomResizedCrop | None = None
        self.interpolation = v2.InterpolationMode.BICUBIC
        if len(steps) >= 2 and isinstance(steps[0], v2.Resize) and isinstance(steps[1], v2.RandomCrop):
            if not isinstance(steps[0].size, int | Sequence) or (isinstance(steps[0].size, Sequence)
                                                                   and len(steps[0].size) != 1):
                raise ZooError("input_pipeline fast: the Resize before the crop must resize the shorter side")
            self.resize = steps[0].size if isinstance(steps[0].size, int) else steps[0].size[0]
            self.size = _square(steps[1].size)
            self.interpolation = steps[0].interpolation
            steps = steps[2:]
        elif steps and isinstance(steps[0], v2.RandomResizedCrop):
            self.rrc, self.size, self.interpolation = steps[0], _square(steps[0].size), steps[0].interpolation
            steps = steps[1:]
        else:
            raise ZooError(f"input_pipeline fast cannot plan the crop {steps[:2]}; use input_pipeline: reference")
        self.flip_p, self.degrees = 0.0, 0.0
        self.order: list[str] = []
        while steps and isinstance(steps[0], v2.RandomHorizontalFlip | v2.RandomRotation):
            t = steps.pop(0)
            if isinstance(t, v2.RandomHorizontalFlip):
                self.flip_p = t.p
                self.order.append("flip")
            else:
                lo, hi = t.degrees
                if lo != -hi:
                    raise ZooError("input_pipeline fast: only symmetric rotation ranges are supported")
                self.degrees = hi
                self.order.append("rotate")
        kinds = [type(t) for t in steps]
        if kinds[:3] != [v2.ToImage, v2.ToDtype, v2.Normalize] or kinds[3:] not in ([], [v2.RandomErasing]):
            raise ZooError(f"input_pipeline fast cannot move {steps} to the device; use input_pipeline: reference")
        self.mean, self.std = list(steps[2].mean), list(steps[2].std)
        erasing = steps[3] if len(steps) == 4 else None
        self.erase_p = erasing.p if erasing is not None else 0.0
        self.erase_scale = tuple(erasing.scale) if erasing is not None else (0.02, 0.33)
        self.erase_ratio = tuple(erasing.ratio) if erasing is not None else (0.3, 3.3)

    # -- plan: every random draw, under the caller's (per-image) seed ------------------------------------------
    def plan(self, height: int, width: int) -> Plan:
        c = self.size
        if self.rrc is not None:
            proxy = torch.empty((1, height, width), dtype=torch.uint8)  # shape only: torchvision's own sampler
            p = self.rrc.make_params([proxy])
            box = (float(p["top"]), float(p["left"]), float(p["height"]), float(p["width"]))
        else:
            scale = self.resize / min(height, width)
            rh, rw = max(round(height * scale), c), max(round(width * scale), c)  # Resize's output, >= the crop
            top = int(torch.randint(0, rh - c + 1, ()))
            left = int(torch.randint(0, rw - c + 1, ()))
            sy, sx = height / rh, width / rw
            box = (top * sy, left * sx, c * sy, c * sx)
        flip = angle = None
        for op in self.order:  # the reference order of draws
            if op == "flip":
                flip = bool(torch.rand(()) < self.flip_p)
            else:
                angle = float(torch.empty(()).uniform_(-self.degrees, self.degrees))
        return Plan((height, width), box, bool(flip), angle or 0.0, self._erase_box())

    def _erase_box(self) -> tuple[int, int, int, int]:
        """torchvision's RandomErasing box sampling (10 tries of area and log-ratio), noise left to the device."""
        if self.erase_p == 0 or not bool(torch.rand(()) < self.erase_p):
            return NO_BOX
        area = self.size * self.size
        log_ratio = torch.log(torch.tensor(self.erase_ratio))
        for _ in range(10):
            erase_area = area * float(torch.empty(()).uniform_(*self.erase_scale))
            ratio = math.exp(float(torch.empty(()).uniform_(float(log_ratio[0]), float(log_ratio[1]))))
            h, w = round(math.sqrt(erase_area * ratio)), round(math.sqrt(erase_area / ratio))
            if h < self.size and w < self.size:
                top = int(torch.randint(0, self.size - h + 1, ()))
                left = int(torch.randint(0, self.size - w + 1, ()))
                return (top, left, h, w)
        return NO_BOX

    # -- render: decode what the crop needs, then uint8 geometry ------------------------------------------------
    def render(self, image: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Crop + resize (+ flip, rotate) a decoded (3, H, W) uint8 tensor, which may be a reduced-size decode
        of the planned source (boxes are rescaled), on whatever device it lives."""
        top, left, h, w = plan.box
        fy, fx = image.shape[-2] / plan.size[0], image.shape[-1] / plan.size[1]
        t, lft = int(round(top * fy)), int(round(left * fx))
        hh, ww = max(1, int(round(h * fy))), max(1, int(round(w * fx)))
        out = TF.resized_crop(image, t, lft, hh, ww, [self.size, self.size], interpolation=self.interpolation,
                              antialias=True)
        for op in self.order:
            if op == "flip" and plan.flip:
                out = out.flip(-1)
            elif op == "rotate" and plan.angle:
                out = TF.rotate(out, plan.angle, interpolation=v2.InterpolationMode.NEAREST)
        return out

    def decode(self, pil: PILImage.Image, plan: Plan, blob: bytes | None = None) -> torch.Tensor:
        """Decode an opened (not yet loaded) image on the CPU: a JPEG whose crop shrinks at least 2x at the
        smallest libjpeg DCT scale (1/2, 1/4, 1/8) that keeps the crop at least as large as the output (PIL's
        `draft`), so no detail the resize keeps is lost; other JPEGs at full size with torchvision's libjpeg
        decoder (no PIL image or copy in between); other formats through PIL."""
        from torchvision.io import ImageReadMode, decode_jpeg

        _, _, h, w = plan.box
        factor = min(h, w) / self.size  # how much the resize shrinks the crop
        if pil.format == "JPEG" and factor >= 2:
            height, width = plan.size
            pil.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
        elif pil.format == "JPEG" and blob is not None:
            try:
                return decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=ImageReadMode.RGB)
            except RuntimeError:  # a JPEG libjpeg's torchvision build refuses: PIL below
                pass
        return TF.pil_to_tensor(pil.convert("RGB"))

    def __call__(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The `fast` pipeline's per-image work (in a DataLoader worker): (uint8 crop, erasing box)."""
        blob, pil = _blob(image)
        if pil is None:
            pil = PILImage.open(io.BytesIO(blob))  # reads the header only: the size, no pixels yet
        plan = self.plan(pil.height, pil.width)
        return self.render(self.decode(pil, plan, blob), plan), torch.tensor(plan.erase, dtype=torch.int16)

    def finisher(self) -> DeviceFinish:
        return DeviceFinish(self.mean, self.std)


def _square(size: Any) -> int:
    size = [size] if isinstance(size, int) else list(size)
    if len(size) == 2 and size[0] != size[1] or len(size) not in (1, 2):
        raise ZooError(f"input_pipeline fast needs a square crop, got {size}")
    return int(size[0])


class DeviceFinish:
    """The per-batch half on the device: uint8 -> float in [0, 1], normalise, random erasing with per-image boxes
    (pixels replaced by standard normal noise, as torchvision's value='random')."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], vectorized: bool | None = None):
        self.mean, self.std = list(mean), list(std)
        self.vectorized = vectorized  # None: by device (a loop over the boxes on the CPU, masks elsewhere)

    def __call__(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1) * 255
        x = x.to(torch.float32).sub_(mean).div_(std)  # == Normalize(ToDtype(x, scale=True)), in one pass
        if not (self.vectorized if self.vectorized is not None else x.device.type != "cpu"):
            # noise only where it goes (about p of the batch)
            for i, (top, left, h, w) in enumerate(boxes.tolist()):
                if top >= 0:
                    x[i, :, top:top + h, left:left + w] = torch.randn((x.shape[1], h, w))
            return x
        # On an accelerator: masks by broadcasting, no per-image loop and no host sync (noise is cheap there)
        n, _, h, w = x.shape
        boxes = boxes.to(x.device, torch.long, non_blocking=True)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        top, left, bh, bw = (boxes[:, k].view(n, 1, 1) for k in range(4))
        mask = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw) & (top >= 0)
        return torch.where(mask.unsqueeze(1), torch.randn_like(x), x)


class DevicePlan:
    """The `device` pipeline's per-image work in a worker: the plan and the undecoded JPEG bytes (other formats,
    and JPEGs the device decoder refuses, are decoded on the CPU here)."""

    def __init__(self, fast: FastTrain):
        self.fast = fast

    def __call__(self, image: Any) -> tuple[Any, Plan]:
        blob, pil = _blob(image)
        if pil is None:
            pil = PILImage.open(io.BytesIO(blob))
        plan = self.fast.plan(pil.height, pil.width)
        if blob is not None and is_jpeg(blob):
            return torch.frombuffer(bytearray(blob), dtype=torch.uint8), plan
        return TF.pil_to_tensor(pil.convert("RGB")), plan


def render_on_device(fast: FastTrain, items: Sequence[tuple[Any, Plan]], device: torch.device) -> torch.Tensor:
    """Decode a batch's JPEGs on `device` (nvJPEG on CUDA, in one batched call), then crop/resize/flip/rotate
    each there: (B, 3, c, c) uint8. On the CPU the same code runs with libjpeg."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not items:
        return torch.zeros((0, 3, fast.size, fast.size), dtype=torch.uint8, device=device)
    encoded = [i for i, (x, _) in enumerate(items) if x.dim() == 1]
    decoded: dict[int, torch.Tensor] = {}
    if encoded:
        datas = [items[i][0].cpu() for i in encoded]  # the decoders read encoded bytes from host memory
        try:
            images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # e.g. a CMYK JPEG nvJPEG refuses: decode those one by one on the CPU
            images = []
            for d in datas:
                try:
                    images.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    images.append(decode_jpeg(d, mode=ImageReadMode.RGB).to(device))
        decoded = dict(zip(encoded, images, strict=True))
    out = [fast.render(decoded[i] if i in decoded else x.to(device), plan) for i, (x, plan) in enumerate(items)]
    return torch.stack(out)


def collate_fast(items: list[tuple[tuple[torch.Tensor, torch.Tensor], int]]) -> tuple[torch.Tensor, ...]:
    """(uint8 images, erasing boxes, labels) of the `fast` pipeline."""
    return (torch.stack([x for (x, _), _ in items]), torch.stack([b for (_, b), _ in items]),
            torch.tensor([y for _, y in items]))


def collate_device(items: list[tuple[tuple[Any, Plan], int]]) -> tuple[list, torch.Tensor]:
    """([(encoded or decoded image, plan)], labels) of the `device` pipeline: decoding waits for the device."""
    return [x for x, _ in items], torch.tensor([y for _, y in items])


def batch_finisher(pipeline: str, fast: FastTrain | None, device: torch.device) -> Callable[..., tuple]:
    """The training loop's first step on a loader batch: (images on `device`, labels) for every pipeline."""
    if pipeline == "reference":
        return lambda x, y: (x, y)
    finish = fast.finisher()
    if pipeline == "fast":
        return lambda x, boxes, y: (finish(x.to(device, non_blocking=True), boxes), y.to(device))
    target = decode_device()

    def device_batch(items, y):
        x = render_on_device(fast, items, target).to(device)
        boxes = torch.tensor([p.erase for _, p in items], dtype=torch.int16)
        return finish(x, boxes), y.to(device)

    return device_batch


def pipeline_transform(pipeline: str, reference: v2.Compose) -> tuple[Callable, Callable, FastTrain | None]:
    """(per-image transform of a raw image, collate of (output, label) pairs, the FastTrain plan or None)."""
    from vitzoo_hf.recipe import collate_supervised

    if pipeline == "reference":
        return (lambda image: reference(open_image(image))), collate_supervised, None
    if pipeline not in PIPELINES:
        raise ZooError(f"input_pipeline {pipeline!r} is unknown; allowed: {', '.join(PIPELINES)}")
    fast = FastTrain(reference)
    if pipeline == "fast":
        return fast, collate_fast, fast
    return DevicePlan(fast), collate_device, fast


def fast_train_loader(pipeline: str, reference: v2.Compose, split, batch_size: int, generator: torch.Generator,
                      num_workers: int):
    """The training loader of a map-style split for the fast pipelines: the same sampler (order and per-image
    seeds) as `recipe.supervised_loaders`, images handed over undecoded."""
    from datasets import Image

    from vitzoo_hf.recipe import SeededImages, SeededSampler, _loader

    transform, collate, fast = pipeline_transform(pipeline, reference)
    split = split.cast_column("image", Image(decode=False))
    ds = SeededImages(split, transform)
    sampler = SeededSampler(range(len(ds)), generator, shuffle=True)
    return _loader(ds, batch_size, sampler, collate, len(ds) >= batch_size, num_workers), fast
