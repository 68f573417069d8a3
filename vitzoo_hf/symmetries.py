"""The function-preserving permutations of the zoo's pre-LN Vision Transformers: one home for the symmetry rules.

Git Re-Basin (`vitzoo_hf.averaging.rebasin`) searches over these permutations to align two models; weight-space
augmentation (`vitzoo_hf.weightspace`) draws them at random to make function-equal copies of a checkpoint. Both
read the same `ViTPermutationSpec`, so a rule fixed here is fixed for both.

The function-preserving permutations of a pre-LN ViT (`ViTPermutationSpec`), by name:

* ``res`` — the residual stream (hidden size d), one for the whole network: patch-embedding output channels,
  CLS token, position embeddings, every LayerNorm, the input axis of Q/K/V and of the first MLP layer, the output
  axis of the attention output projection and of the second MLP layer, the final LayerNorm and the head's input.
  (LayerNorm statistics are invariant to a permutation of its features, so this is exact.)
* ``mlp.{i}`` — the MLP hidden units of block i (rows of fc1, columns of fc2).
* ``qk.{i}`` / ``vo.{i}`` — the attention of block i, head-aware: heads move as units (one head permutation
  shared by Q, K, V and the output projection), and within a head Q and K rows share one permutation (q·k is
  unchanged) while V rows and the matching output-projection columns share another. A permutation of Q/K/V rows
  across head boundaries is *not* a symmetry (softmax is per head), so ``qk``/``vo`` are always head-structured.
* ``head_hidden`` — the hidden units of an MLP classification head.

A permutation is an index tensor ``perm`` with ``permuted[i] = original[perm[i]]`` along its axes.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from vitzoo_hf.errors import ZooError

RES = "res"
HEAD_HIDDEN = "head_hidden"

StateDict = Mapping[str, torch.Tensor]
Perms = dict[str, torch.Tensor]

# Key suffix (after the backbone prefix, e.g. "vit.") -> permutation name per axis ("{i}" = block index).
# Both transformers >= 5 names (layers.i.attention.q_proj, mlp.fc1) and the older ones are understood.
_BACKBONE_RULES: list[tuple[str, tuple[str | None, ...]]] = [
    (r"embeddings\.cls_token", (None, None, RES)),
    (r"embeddings\.mask_token", (None, None, RES)),
    (r"embeddings\.position_embeddings", (None, None, RES)),
    (r"embeddings\.patch_embeddings\.projection\.weight", (RES, None, None, None)),
    (r"embeddings\.patch_embeddings\.projection\.bias", (RES,)),
    (r"(?:layers|encoder\.layer)\.(\d+)\.layernorm_(?:before|after)\.(?:weight|bias)", (RES,)),
    (r"(?:layers|encoder\.layer)\.(\d+)\.attention\.(?:q_proj|k_proj|attention\.query|attention\.key)\.weight",
     ("qk.{i}", RES)),
    (r"(?:layers|encoder\.layer)\.(\d+)\.attention\.(?:q_proj|k_proj|attention\.query|attention\.key)\.bias",
     ("qk.{i}",)),
    (r"(?:layers|encoder\.layer)\.(\d+)\.attention\.(?:v_proj|attention\.value)\.weight", ("vo.{i}", RES)),
    (r"(?:layers|encoder\.layer)\.(\d+)\.attention\.(?:v_proj|attention\.value)\.bias", ("vo.{i}",)),
    (r"(?:layers|encoder\.layer)\.(\d+)\.attention\.(?:o_proj|output\.dense)\.weight", (RES, "vo.{i}")),
    (r"(?:layers|encoder\.layer)\.(\d+)\.attention\.(?:o_proj|output\.dense)\.bias", (RES,)),
    (r"(?:layers|encoder\.layer)\.(\d+)\.(?:mlp\.fc1|intermediate\.dense)\.weight", ("mlp.{i}", RES)),
    (r"(?:layers|encoder\.layer)\.(\d+)\.(?:mlp\.fc1|intermediate\.dense)\.bias", ("mlp.{i}",)),
    (r"(?:layers|encoder\.layer)\.(\d+)\.(?:mlp\.fc2|output\.dense)\.weight", (RES, "mlp.{i}")),
    (r"(?:layers|encoder\.layer)\.(\d+)\.(?:mlp\.fc2|output\.dense)\.bias", (RES,)),
    (r"layernorm\.(?:weight|bias)", (RES,)),
]
_HEAD_RULES: list[tuple[str, tuple[str | None, ...]]] = [
    (r"classifier\.weight", (None, RES)),
    (r"classifier\.bias", (None,)),
    (r"classifier\.0\.weight", (HEAD_HIDDEN, RES)),
    (r"classifier\.0\.bias", (HEAD_HIDDEN,)),
    (r"classifier\.2\.weight", (None, HEAD_HIDDEN)),
    (r"classifier\.2\.bias", (None,)),
]
_COMPILED = [(re.compile(p), axes, True) for p, axes in _BACKBONE_RULES] + \
            [(re.compile(p), axes, False) for p, axes in _HEAD_RULES]


@dataclass(frozen=True)
class ViTPermutationSpec:
    """Which permutation acts on which axis of every weight of one ViT state-dict layout."""

    axes: dict[str, tuple[str | None, ...]]  # weight key -> permutation name (or None) per axis
    sizes: dict[str, int]  # permutation name -> number of units
    num_heads: int
    attention: tuple[tuple[str, str], ...]  # per block: (qk name, vo name), solved jointly
    perm_to_axes: dict[str, list[tuple[str, int]]] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, list[tuple[str, int]]] = {}
        for key, names in self.axes.items():
            for axis, name in enumerate(names):
                if name is not None:
                    index.setdefault(name, []).append((key, axis))
        object.__setattr__(self, "perm_to_axes", index)

    @property
    def head_dim(self) -> int:
        return self.sizes[RES] // self.num_heads

    def identity(self) -> Perms:
        return {name: torch.arange(n) for name, n in self.sizes.items()}


def vit_permutation_spec(state_dict: StateDict, num_heads: int) -> ViTPermutationSpec:
    """The permutation spec of a zoo ViT state dict (classifier or backbone, any key prefix).

    Every key must be understood: an unknown weight would silently stay unpermuted and break the symmetry."""
    axes: dict[str, tuple[str | None, ...]] = {}
    sizes: dict[str, int] = {}
    blocks: set[int] = set()
    prefix = _backbone_prefix(state_dict)
    for key, tensor in state_dict.items():
        names = None
        rel = key[len(prefix):] if key.startswith(prefix) else None
        for pattern, rule, backbone in _COMPILED:
            m = pattern.fullmatch(rel if backbone else key) if (rel is not None or not backbone) else None
            if m:
                block = m.group(1) if m.groups() else None
                names = tuple(None if n is None else n.format(i=block) for n in rule)
                if block is not None:
                    blocks.add(int(block))
                break
        if names is None:
            raise ZooError(f"weight {key!r} is not part of a zoo ViT as Re-Basin knows it; only zoo ViT "
                           "checkpoints (ZooViTModel / ZooViTForImageClassification) have known symmetries")
        if len(names) != tensor.dim():
            raise ZooError(f"weight {key!r} has shape {tuple(tensor.shape)}, expected {len(names)} dimensions")
        for axis, name in enumerate(names):
            if name is None:
                continue
            n = tensor.shape[axis]
            if sizes.setdefault(name, n) != n:
                raise ZooError(f"weight {key!r} axis {axis} has {n} units, but other weights give "
                               f"permutation {name!r} {sizes[name]}; the state dict is inconsistent")
        axes[key] = names
    if RES not in sizes:
        raise ZooError("state dict has no ViT embeddings; it is not a zoo ViT checkpoint")
    if sizes[RES] % num_heads:
        raise ZooError(f"hidden size {sizes[RES]} is not divisible by {num_heads} attention heads")
    attention = tuple((f"qk.{i}", f"vo.{i}") for i in sorted(blocks) if f"qk.{i}" in sizes)
    return ViTPermutationSpec(axes=axes, sizes=sizes, num_heads=num_heads, attention=attention)


def _backbone_prefix(state_dict: StateDict) -> str:
    for key in state_dict:
        if key.endswith("embeddings.cls_token"):
            return key[: -len("embeddings.cls_token")]
    return ""


# ----------------------------------------------------------------------------------------------------------------
# Applying permutations


def apply_permutation(spec: ViTPermutationSpec, perms: Mapping[str, torch.Tensor], state_dict: StateDict,
                      except_axis: tuple[str, int] | None = None) -> dict[str, torch.Tensor]:
    """The state dict with every permutation applied on its axes (optionally leaving one (key, axis) alone)."""
    out = {}
    for key, w in state_dict.items():
        for axis, name in enumerate(spec.axes[key]):
            if name is not None and (key, axis) != except_axis:
                w = w.index_select(axis, perms[name].to(w.device))
        out[key] = w
    return out


def head_structured(perm_heads: Sequence[int], within: Sequence[Sequence[int]], head_dim: int) -> torch.Tensor:
    """A d-sized attention permutation from a head permutation and one within-head permutation per head slot:
    unit j of head slot a comes from unit within[a][j] of head perm_heads[a]."""
    return torch.tensor([perm_heads[a] * head_dim + int(j) for a in range(len(perm_heads)) for j in within[a]])


KINDS = ("res", "mlp", "heads", "within_head", "head_hidden")  # the kinds of symmetry `random_permutation` draws


def check_kinds(kinds: Collection[str]) -> None:
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ZooError(f"unknown symmetry kind(s) {sorted(unknown)}; choose from {', '.join(KINDS)}")


def random_permutation(spec: ViTPermutationSpec, seed: int = 0, kinds: Collection[str] = KINDS) -> Perms:
    """A random function-preserving permutation of every kind (residual, MLP hidden, heads as units, within-head
    Q/K and V/O, MLP-head hidden), or of the `kinds` given (the others stay the identity). The same seed and kinds
    always give the same permutation."""
    check_kinds(kinds)
    g = torch.Generator().manual_seed(seed)
    perms = {name: torch.randperm(n, generator=g) for name, n in spec.sizes.items()}
    h, dh = spec.num_heads, spec.head_dim
    for qk, vo in spec.attention:
        heads = torch.randperm(h, generator=g).tolist()
        within = [[torch.randperm(dh, generator=g).tolist() for _ in range(h)] for _ in range(2)]
        if "heads" not in kinds:
            heads = list(range(h))
        if "within_head" not in kinds:
            within = [[list(range(dh))] * h] * 2
        perms[qk] = head_structured(heads, within[0], dh)
        perms[vo] = head_structured(heads, within[1], dh)
    for name in perms:
        kind = "mlp" if name.startswith("mlp.") else name
        if kind in (RES, HEAD_HIDDEN, "mlp") and kind not in kinds:
            perms[name] = torch.arange(spec.sizes[name])
    return perms


def invert(perms: Mapping[str, torch.Tensor]) -> Perms:
    return {name: torch.argsort(p) for name, p in perms.items()}


