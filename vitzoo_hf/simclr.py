"""Reusable building blocks of a SimCLR pre-trainer (Chen et al., 2020), done the textbook way.

The paper's released code (see ``shared/reference/zoo_anchors.md`` §1.8) produced a single view per image,
so its "positive pairs" were different images, and it used the 1000-d classifier as projector. Here every
image yields two independent augmentations (:class:`TwoViews`), a separate MLP projector
(:class:`ProjectionHead`) sits on the backbone's CLS output, and the NT-Xent loss (:func:`nt_xent`) is
computed over the *global* batch of all processes (:func:`contrastive_loss`), so that the number of
negatives does not depend on how many processes train the model.

The training loop itself lives in :mod:`vitzoo_hf.training`; nothing here holds module-level state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torchvision.transforms import v2

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PROJECTION_HEAD_FILENAME",
    "ContrastiveOutput",
    "ProjectionHead",
    "TwoViews",
    "contrastive_loss",
    "gather_with_grad",
    "nt_xent",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
PROJECTION_HEAD_FILENAME = "projection_head.safetensors"
_HEAD_FORMAT = "vitzoo_hf.simclr.ProjectionHead/v1"


# ----------------------------------------------------------------------------------------------------
# Distributed gather that backpropagates
# ----------------------------------------------------------------------------------------------------


def _distributed_world_size() -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather in forward; all_reduce(SUM) of the full gradient, then this rank's slice, in backward.

    Why SUM: every rank computes a loss ``L_k`` from the gathered tensor, and the gradient of
    ``sum_k L_k`` with respect to rank r's rows is ``sum_k dL_k/d(rows of r)``, which only the all_reduce
    can assemble. In :func:`contrastive_loss` every rank computes the *same* global loss ``L``, so rank r
    receives ``W * dL/dz_r`` (W = world size). DDP then *averages* the per-rank parameter gradients:
    ``(1/W) * sum_r W * (dz_r/dθ)^T dL/dz_r = dL/dθ``, exactly the gradient of one process seeing the whole
    global batch. (The slice without the all_reduce would give ``dL/dθ / W``.) all_reduce rather than
    reduce_scatter because gloo lacks the latter. Ranks may hold different numbers of rows (e.g. an uneven
    last batch); they are padded for the collective and unpadded afterwards.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        x = x.contiguous()
        local_n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
        all_n = [torch.zeros_like(local_n) for _ in range(world)]
        dist.all_gather(all_n, local_n)
        sizes = [int(n.item()) for n in all_n]
        max_n = max(sizes)
        if x.shape[0] < max_n:
            pad = x.new_zeros((max_n - x.shape[0], *x.shape[1:]))
            x = torch.cat([x, pad], dim=0)
        buffers = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(buffers, x)
        ctx.sizes = sizes
        ctx.rank = rank
        return torch.cat([b[:n] for b, n in zip(buffers, sizes, strict=True)], dim=0)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.contiguous().clone()  # all_reduce is in place; never modify autograd's buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0 (rank order), keeping the autograd graph.

    ``accelerator.gather`` returns a tensor detached from the other ranks' graphs, so a loss over the
    gathered batch would only push gradients into the local rows. Here the backward pass sums every rank's
    gradient for each row and hands rank r its own rows' share (see :class:`_GatherWithGrad` for why this
    makes DDP-averaged parameter gradients equal single-process ones when every rank computes the same
    global loss).

    Identity (same tensor, same graph) when torch.distributed is not initialised or the world size is 1. Every
    process must call it (it is a collective); dims other than 0 must match across ranks.
    """
    if _distributed_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


# ----------------------------------------------------------------------------------------------------
# NT-Xent loss
# ----------------------------------------------------------------------------------------------------


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent (normalised temperature-scaled cross-entropy; InfoNCE) of SimCLR on two batches of views.

    ``z_a[i]`` and ``z_b[i]`` are the projections of two augmentations of image i (shape ``(N, D)`` each). The
    2N embeddings are L2-normalised, the 2N×2N cosine similarities divided by ``temperature`` are the logits,
    self-similarity is excluded, and the target class of each anchor is its other view: anchor i (< N) has
    positive i + N and vice versa. The loss is the mean cross-entropy over all 2N anchors.

    Returns ``(loss, correct)``: ``correct`` is a detached 0-d int64 tensor counting the anchors whose most
    similar *other* sample is their positive (the paper's top-1 retrieval accuracy, Table 8, is
    ``correct / 2N``). Computed in float32 whatever the input dtype, because a small temperature (0.07 in the
    paper) amplifies low-precision rounding of the similarities. No distributed communication.
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"z_a and z_b must both be (N, D); got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b], dim=0).float(), dim=1)
    logits = (z @ z.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(2 * n, device=z.device)
    targets = (idx + n) % (2 * n)
    loss = F.cross_entropy(logits, targets)
    correct = (logits.detach().argmax(dim=1) == targets).sum()
    return loss, correct


@dataclass(frozen=True)
class ContrastiveOutput:
    """Result of :func:`contrastive_loss`: the global-batch loss and top-1 retrieval counts.

    ``correct`` is kept as a (detached, 0-d) tensor so logging it every step does not force a device sync;
    ``total`` is the global number of anchors 2N, known from shapes alone.
    """

    loss: torch.Tensor
    correct: torch.Tensor
    total: int

    @property
    def accuracy(self) -> float:
        """Top-1 retrieval accuracy ``correct / total`` (synchronises with the device)."""
        return float(self.correct.item()) / self.total


def contrastive_loss(
    z_a_local: torch.Tensor, z_b_local: torch.Tensor, temperature: float
) -> ContrastiveOutput:
    """NT-Xent over the global batch: gather both views from all ranks (with gradients), then :func:`nt_xent`.

    Every process obtains the same loss value. Call ``accelerator.backward(output.loss)`` on every process:
    thanks to :func:`gather_with_grad`'s backward, the DDP-averaged parameter gradients equal those of a
    single process running on the rank-ordered concatenation of all local batches. Both views are gathered
    in one collective. Without torch.distributed this is exactly
    ``nt_xent(z_a_local, z_b_local, temperature)``.
    """
    if z_a_local.shape != z_b_local.shape or z_a_local.dim() != 2:
        raise ValueError(
            "z_a_local and z_b_local must both be (n, D); "
            f"got {tuple(z_a_local.shape)} and {tuple(z_b_local.shape)}"
        )
    dim = z_a_local.shape[1]
    both = gather_with_grad(torch.cat([z_a_local, z_b_local], dim=1))
    z_a, z_b = both[:, :dim], both[:, dim:]
    loss, correct = nt_xent(z_a, z_b, temperature)
    return ContrastiveOutput(loss=loss, correct=correct, total=2 * z_a.shape[0])


# ----------------------------------------------------------------------------------------------------
# Projection head
# ----------------------------------------------------------------------------------------------------


class ProjectionHead(nn.Module):
    """SimCLR's MLP projector g(h) = W2 ReLU(W1 h) on the backbone's CLS output.

    The contrastive loss is applied to g(h) rather than h so that the backbone representation keeps
    information (colour, orientation) the augmentations teach g to discard; the head is dropped after
    pre-training. The sizes are kept in ``config`` so :meth:`save`/:meth:`load` can rebuild the module
    without pickle.
    """

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128, layers: int = 2) -> None:
        super().__init__()
        hidden_dim = in_dim if hidden_dim is None else hidden_dim
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if layers not in (1, 2):
            raise ValueError(f"layers must be 1 (a linear projection) or 2 (the MLP), got {layers!r}")
        self.config: dict[str, int] = {"in_dim": in_dim, "hidden_dim": hidden_dim, "out_dim": out_dim}
        if layers == 1:  # one Linear in_dim -> out_dim, as the authors' code (their classifier head as projector)
            self.config["layers"] = 1
            self.fc2 = nn.Linear(in_dim, out_dim)
            return
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.get("layers") == 1:
            return self.fc2(x)
        return self.fc2(self.act(self.fc1(x)))

    def save(self, path: str | Path) -> Path:
        """Write ``projection_head.safetensors`` into directory ``path`` (created if missing); return the
        file.

        The sizes go into the safetensors metadata (as JSON under ``"config"``), so the file is
        self-describing.
        """
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        file = directory / PROJECTION_HEAD_FILENAME
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        metadata = {"format": _HEAD_FORMAT, "config": json.dumps(self.config, sort_keys=True)}
        save_file(tensors, str(file), metadata=metadata)
        return file

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ProjectionHead:
        """Rebuild a head saved by :meth:`save`; ``path`` is its directory or the ``.safetensors`` file."""
        file = Path(path)
        if file.is_dir():
            file = file / PROJECTION_HEAD_FILENAME
        if not file.is_file():
            raise FileNotFoundError(f"no projection head at {file}")
        with safe_open(str(file), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != _HEAD_FORMAT or "config" not in metadata:
                raise ValueError(f"{file} is not a {_HEAD_FORMAT} file (metadata: {metadata})")
            state = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(metadata["config"])
        head = cls(
            in_dim=int(config["in_dim"]), hidden_dim=int(config["hidden_dim"]), out_dim=int(config["out_dim"]),
            layers=int(config.get("layers", 2)),
        )
        head.load_state_dict(state, strict=True)
        return head.to(device)


# ----------------------------------------------------------------------------------------------------
# Two-view augmentation
# ----------------------------------------------------------------------------------------------------


def _default_blur_kernel(size: int | Sequence[int]) -> int:
    """SimCLR's blur kernel: about 10% of the image side, forced odd (23 for 224, 3 for 32)."""
    side = size if isinstance(size, int) else min(size)
    k = max(3, int(round(0.1 * side)))
    return k if k % 2 == 1 else k + 1


class TwoViews:
    """Turn one image into two independently augmented views (SimCLR's augmentations, ``transforms.v2``).

    Pipeline, sampled afresh for each view: (RGB) → RandomResizedCrop(size, scale) →
    RandomHorizontalFlip → RandomApply([ColorJitter(b, c, s, h)], p_jitter) → RandomGrayscale(p_gray) →
    RandomApply([GaussianBlur(blur_kernel, blur_sigma)], p_blur) → ToImage → ToDtype(float32, scale) →
    Normalize(mean, std).

    Defaults are SimCLR's ImageNet setting (colour strength 1.0: jitter 0.8/0.8/0.8/0.2 with p 0.8, grey p
    0.2, blur kernel ≈ 10% of the side with sigma in [0.1, 2] and p 0.5). ``to_rgb=True`` repeats the
    channel of greyscale inputs (e.g. Fashion-MNIST) so the output always has 3 channels, as the ViT patch
    embedding expects. Random choices come from torch's global RNG, so ``torch.manual_seed`` makes the views
    reproducible. Accepts a PIL image or a ``(C, H, W)`` tensor; returns two plain ``float32`` tensors
    ``(3, H, W)``.
    """

    def __init__(
        self,
        size: int | tuple[int, int] = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        brightness: float = 0.8,
        contrast: float = 0.8,
        saturation: float = 0.8,
        hue: float = 0.2,
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        blur_kernel: int | None = None,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        p_blur: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        to_rgb: bool = True,
    ) -> None:
        for name, p in (("p_jitter", p_jitter), ("p_gray", p_gray), ("p_blur", p_blur)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        kernel = _default_blur_kernel(size) if blur_kernel is None else blur_kernel
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd int, got {kernel}")
        self.config: dict[str, Any] = {
            "size": size,
            "scale": tuple(scale),
            "brightness": brightness,
            "contrast": contrast,
            "saturation": saturation,
            "hue": hue,
            "p_jitter": p_jitter,
            "p_gray": p_gray,
            "blur_kernel": kernel,
            "blur_sigma": tuple(blur_sigma),
            "p_blur": p_blur,
            "mean": tuple(mean),
            "std": tuple(std),
            "to_rgb": to_rgb,
        }
        # Colour and geometry run on PIL images when given them (about 1.4x faster than on tensors for small
        # images); ToImage then converts whatever came in.
        steps: list[nn.Module] = [v2.RGB()] if to_rgb else []
        steps += [
            v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=p_jitter),
            v2.RandomGrayscale(p=p_gray),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=tuple(blur_sigma))], p=p_blur),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
        self.transform = v2.Compose(steps)

    def __call__(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.transform(image).as_subclass(torch.Tensor)
        second = self.transform(image).as_subclass(torch.Tensor)
        return first, second

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"
