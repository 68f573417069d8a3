"""Three ways to turn one checkpoint's state dict into data for a meta-model: `flat`, `tokens`, `stats`.

* `flat` — the chosen tensors as one vector, with a `LayerIndex` that maps every slice back to its tensor
  (so a meta-model's output can be unflattened into a state dict).
* `tokens` — SANE-style (Schürholt et al. 2024): every output unit's incoming weights (a row of the weight matrix,
  its bias appended) is cut into tokens of a fixed width, zero-padded; each token carries its layer id, its
  position within the layer and its position in the sequence. ViTs of any depth and width become sequences of
  the same width. A module with only 1-D tensors (LayerNorm) is one row (weight then bias); embeddings whose
  last axis is the residual stream (CLS token, position embeddings) give one row per position.
* `stats` — per-tensor statistics as in Unterthiner et al. 2020 (mean, std, the 0/25/50/75/100 % quantiles)
  plus skewness, excess kurtosis and L2 norm: ten numbers per tensor, a few hundred features per ViT.

Pure functions: state dict in, tensors out. Tensors are taken in one canonical order (natural sort, so block 10
follows block 9) whatever order the file stored them in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vitzoo_hf.analysis.backbone import HEAD_PREFIX, normalise_key
from vitzoo_hf.errors import ZooError

StateDict = Mapping[str, torch.Tensor]
REPRESENTATIONS = ("flat", "tokens", "stats")
STATS = ("mean", "std", "q0", "q25", "q50", "q75", "q100", "skewness", "kurtosis", "l2_norm")
_QUANTILES = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
LAYER_SCOPES = ("backbone", "all", "head")


def _natural(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def is_head(key: str) -> bool:
    return normalise_key(key).startswith(HEAD_PREFIX)


def canonical(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Keys without the classifier's `vit.` prefix, so a fine-tune and its contrastive (prefix-less) parent share
    every backbone key (`vitzoo_hf.analysis.backbone.normalise_key`)."""
    return {normalise_key(k): v for k, v in state_dict.items()}


def select_keys(state_dict: StateDict, layers: str | Sequence[str] = "backbone") -> list[str]:
    """The keys (of a `canonical` state dict) a representation uses, in canonical order. `layers`: `backbone`
    (every tensor but the classification head: common to backbones and fine-tunes), `all`, `head`, a regex
    matched against keys, or an explicit list of keys."""
    keys = sorted(state_dict, key=_natural)
    if isinstance(layers, str) and layers in LAYER_SCOPES:
        chosen = [k for k in keys if layers == "all" or (is_head(k) == (layers == "head"))]
    elif isinstance(layers, str):
        pattern = re.compile(layers)
        chosen = [k for k in keys if pattern.search(k)]
    else:
        missing = [k for k in layers if k not in state_dict]
        if missing:
            raise ZooError(f"the checkpoint has no tensor {missing[0]!r}; pick keys of its state dict")
        chosen = sorted(layers, key=_natural)
    if not chosen:
        raise ZooError(f"layers={layers!r} selects no tensor of this checkpoint (its keys start "
                       f"{', '.join(keys[:3])}, ...); use backbone, all, head, a regex or a list of keys")
    return chosen


# ----------------------------------------------------------------------------------------------------------------
# flat


@dataclass(frozen=True)
class LayerSlice:
    key: str
    start: int
    stop: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class LayerIndex:
    """Where each tensor lies in a flat vector: `vector[s.start:s.stop].view(s.shape)` is tensor `s.key`."""

    slices: tuple[LayerSlice, ...]

    @property
    def size(self) -> int:
        return self.slices[-1].stop if self.slices else 0

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.slices]

    def __getitem__(self, key: str) -> LayerSlice:
        for s in self.slices:
            if s.key == key:
                return s
        raise KeyError(key)

    def to_records(self) -> list[dict]:
        return [{"key": s.key, "start": s.start, "stop": s.stop, "shape": list(s.shape)} for s in self.slices]


def layer_index(state_dict: StateDict, keys: Iterable[str]) -> LayerIndex:
    out, start = [], 0
    for k in keys:
        n = state_dict[k].numel()
        out.append(LayerSlice(k, start, start + n, tuple(state_dict[k].shape)))
        start += n
    return LayerIndex(tuple(out))


def flatten(state_dict: StateDict, layers: str | Sequence[str] = "backbone") -> tuple[torch.Tensor, LayerIndex]:
    """(float32 vector, its LayerIndex over canonical keys)."""
    state_dict = canonical(state_dict)
    index = layer_index(state_dict, select_keys(state_dict, layers))
    vec = torch.cat([state_dict[s.key].detach().reshape(-1).float() for s in index.slices])
    return vec, index


def unflatten(vector: torch.Tensor, index: LayerIndex) -> dict[str, torch.Tensor]:
    if vector.numel() != index.size:
        raise ValueError(f"vector has {vector.numel()} values, the index {index.size}")
    return {s.key: vector[s.start:s.stop].view(s.shape) for s in index.slices}


# ----------------------------------------------------------------------------------------------------------------
# tokens


@dataclass
class Tokens:
    """A tokenised checkpoint: `tokens` [T, width] (zero-padded), `mask` [T, width] (True = real value),
    `layer` [T] (module index), `position` [T] (token index within its module), `index` [T] (0..T-1), and the
    module names by layer id."""

    tokens: torch.Tensor
    mask: torch.Tensor
    layer: torch.Tensor
    position: torch.Tensor
    index: torch.Tensor
    modules: list[str]

    def __len__(self) -> int:
        return self.tokens.shape[0]


def modules(keys: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Keys grouped by module (`...q_proj.weight` and `...q_proj.bias` → `...q_proj`), in canonical order."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        mod = k.rsplit(".", 1)[0] if k.endswith((".weight", ".bias")) else k
        groups.setdefault(mod, []).append(k)
    return list(groups.items())


def _rows(state_dict: StateDict, keys: Sequence[str]) -> torch.Tensor:
    """One module as a matrix of rows: a row per output unit (weight row + bias), one row per position for
    embeddings, or a single row for 1-D-only modules (LayerNorm) and anything irregular."""
    tensors = [state_dict[k].detach().float() for k in keys]
    multi = [t for t in tensors if t.dim() >= 2]
    ones = [t for t in tensors if t.dim() == 1]
    if len(multi) == 1 and multi[0].dim() == 3 and multi[0].shape[0] == 1 and not ones:  # CLS / positions
        return multi[0][0]
    if len(multi) == 1 and all(t.shape[0] == multi[0].shape[0] for t in ones):
        w = multi[0]
        return torch.cat([w.reshape(w.shape[0], -1), *(t[:, None] for t in ones)], dim=1)
    return torch.cat([t.reshape(-1) for t in tensors])[None]


def tokenize(state_dict: StateDict, width: int = 64, layers: str | Sequence[str] = "backbone") -> Tokens:
    """SANE-style tokens of fixed `width` (see the module docstring)."""
    if width < 1:
        raise ZooError(f"token width must be positive, got {width}")
    state_dict = canonical(state_dict)
    chunks, masks, layer_ids, positions, names = [], [], [], [], []
    for lid, (mod, keys) in enumerate(modules(select_keys(state_dict, layers))):
        names.append(mod)
        rows = _rows(state_dict, keys)
        r, n = rows.shape
        k = -(-n // width)  # tokens per row
        padded = torch.zeros(r, k * width)
        padded[:, :n] = rows
        mask = torch.zeros(r, k * width, dtype=torch.bool)
        mask[:, :n] = True
        chunks.append(padded.view(r * k, width))
        masks.append(mask.view(r * k, width))
        layer_ids.append(torch.full((r * k,), lid))
        positions.append(torch.arange(r * k))
    tokens = torch.cat(chunks)
    return Tokens(tokens, torch.cat(masks), torch.cat(layer_ids), torch.cat(positions), torch.arange(tokens.shape[0]),
                  names)


# ----------------------------------------------------------------------------------------------------------------
# stats


def tensor_stats(t: torch.Tensor) -> torch.Tensor:
    """The ten `STATS` of one tensor's values (float64; std, skewness and kurtosis 0 for a constant tensor)."""
    x = t.detach().reshape(-1).double()
    mean = x.mean()
    c = x - mean
    var = (c * c).mean()
    std = var.sqrt()
    if var > 0:
        skew = (c ** 3).mean() / var ** 1.5
        kurt = (c ** 4).mean() / var ** 2 - 3.0
    else:
        skew = kurt = torch.zeros((), dtype=torch.float64)
    q = torch.from_numpy(np.quantile(x.numpy(), _QUANTILES.numpy()))  # selection, not a sort (torch.quantile)
    return torch.cat([torch.stack([mean, std]), q, torch.stack([skew, kurt, x.norm()])])


def stats(state_dict: StateDict, layers: str | Sequence[str] = "backbone") -> tuple[torch.Tensor, list[str]]:
    """(float32 feature vector, feature names `key:stat`), ten statistics per tensor."""
    state_dict = canonical(state_dict)
    keys = select_keys(state_dict, layers)
    feats = torch.cat([tensor_stats(state_dict[k]) for k in keys]).float()
    return feats, [f"{k}:{s}" for k in keys for s in STATS]


def head_stats(state_dict: StateDict) -> tuple[torch.Tensor, list[str]]:
    """The classification head's statistics pooled over its weight matrices and over its biases, so that linear
    and MLP heads (different tensors) give the same features; NaN for a backbone without a head."""
    w = [t.reshape(-1) for k, t in state_dict.items() if is_head(k) and t.dim() >= 2]
    b = [t.reshape(-1) for k, t in state_dict.items() if is_head(k) and t.dim() == 1]
    feats = [tensor_stats(torch.cat(x)) if x else torch.full((len(STATS),), float("nan"), dtype=torch.float64)
             for x in (w, b)]
    return torch.cat(feats).float(), [f"head.{part}:{s}" for part in ("weights", "biases") for s in STATS]

