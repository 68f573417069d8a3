"""Git Re-Basin weight matching for the zoo's Vision Transformers (Ainsworth, Hayase, Srinivasa; ICLR 2023).

Two networks that differ by a permutation of hidden units compute the same function; weight matching finds the
permutation of model B that brings its weights closest to model A, so that averaging them is meaningful.
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

Weight matching is coordinate descent: each step fixes every permutation but one and solves a linear assignment
problem (`scipy.optimize.linear_sum_assignment`) for it; for attention the step is solved exactly under the head
structure (an assignment within every pair of heads, then an assignment of heads). It stops when no step
improves the total inner product ⟨W_A, π(W_B)⟩. It is data-free.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

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
                           "checkpoints (ZooViTModel / ZooViTForImageClassification) can be aligned")
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


def random_permutation(spec: ViTPermutationSpec, seed: int = 0) -> Perms:
    """A random function-preserving permutation of every kind (residual, MLP hidden, heads as units, within-head
    Q/K and V/O, MLP-head hidden)."""
    g = torch.Generator().manual_seed(seed)
    perms = {name: torch.randperm(n, generator=g) for name, n in spec.sizes.items()}
    h, dh = spec.num_heads, spec.head_dim
    for qk, vo in spec.attention:
        heads = torch.randperm(h, generator=g).tolist()
        perms[qk] = head_structured(heads, [torch.randperm(dh, generator=g).tolist() for _ in range(h)], dh)
        perms[vo] = head_structured(heads, [torch.randperm(dh, generator=g).tolist() for _ in range(h)], dh)
    return perms


def invert(perms: Mapping[str, torch.Tensor]) -> Perms:
    return {name: torch.argsort(p) for name, p in perms.items()}


# ----------------------------------------------------------------------------------------------------------------
# Weight matching


@dataclass
class MatchResult:
    perms: Perms
    iterations: int
    objective: float  # Σ over weights of ⟨W_A, π(W_B)⟩ after matching
    objective_identity: float  # the same before matching


def _similarity(spec: ViTPermutationSpec, name: str, a: StateDict, b: StateDict, perms: Perms,
                known: set[str] | None = None) -> np.ndarray:
    """A[i, j] = Σ over the weights on `name`'s axes of ⟨row i of W_A, row j of W_B with all other perms⟩;
    with `known`, only weights whose other permutations are all known take part."""
    n = spec.sizes[name]
    total = torch.zeros(n, n, dtype=torch.float64)
    for key, axis in spec.perm_to_axes[name]:
        if known is not None and any(p not in (None, name) and p not in known for p in spec.axes[key]):
            continue
        wa = a[key].detach().to(torch.float64).movedim(axis, 0).reshape(n, -1)
        wb = apply_permutation(spec, perms, {key: b[key]}, except_axis=(key, axis))[key]
        wb = wb.detach().to(torch.float64).movedim(axis, 0).reshape(n, -1)
        total += wa @ wb.T
    return total.numpy()


def _score(sim: np.ndarray, perm: torch.Tensor) -> float:
    return float(sim[np.arange(len(perm)), perm.numpy()].sum())


def _solve_attention(sim_qk: np.ndarray, sim_vo: np.ndarray, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best head-structured (qk, vo) pair: for every (head of A, head of B) the best within-head assignments
    of Q/K rows and of V rows, then the best assignment of heads on the sum of both."""
    dh = sim_qk.shape[0] // num_heads
    value = np.zeros((num_heads, num_heads))
    inner: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for x in range(num_heads):
        for y in range(num_heads):
            rows, cols = slice(x * dh, (x + 1) * dh), slice(y * dh, (y + 1) * dh)
            best = []
            for sim in (sim_qk, sim_vo):
                block = sim[rows, cols]
                r, c = linear_sum_assignment(block, maximize=True)
                best.append((c, block[r, c].sum()))
            inner[x, y] = (best[0][0], best[1][0])
            value[x, y] = best[0][1] + best[1][1]
    _, heads = linear_sum_assignment(value, maximize=True)
    qk = head_structured(heads.tolist(), [inner[x, heads[x]][0].tolist() for x in range(num_heads)], dh)
    vo = head_structured(heads.tolist(), [inner[x, heads[x]][1].tolist() for x in range(num_heads)], dh)
    return qk, vo


def _objective(spec: ViTPermutationSpec, a: StateDict, b: StateDict, perms: Perms) -> float:
    pb = apply_permutation(spec, perms, b)
    return float(sum((a[k].double() * pb[k].double()).sum() for k in spec.axes))


def _step(spec: ViTPermutationSpec, unit: tuple[str, ...], a: StateDict, b: StateDict, perms: Perms,
          known: set[str] | None = None) -> tuple[Perms, float, float]:
    """The best permutation(s) of one unit with all others fixed: (new perms, old score, new score)."""
    if len(unit) == 1:
        sim = _similarity(spec, unit[0], a, b, perms, known)
        _, cols = linear_sum_assignment(sim, maximize=True)
        new = torch.from_numpy(cols).long()
        return {unit[0]: new}, _score(sim, perms[unit[0]]), _score(sim, new)
    sims = [_similarity(spec, n, a, b, perms, known) for n in unit]
    qk, vo = _solve_attention(sims[0], sims[1], spec.num_heads)
    old = _score(sims[0], perms[unit[0]]) + _score(sims[1], perms[unit[1]])
    return {unit[0]: qk, unit[1]: vo}, old, _score(sims[0], qk) + _score(sims[1], vo)


def _units(spec: ViTPermutationSpec) -> list[tuple[str, ...]]:
    """Permutation units in network order: residual stream, then per block attention and MLP, then the head."""
    attn = {n for pair in spec.attention for n in pair}
    blocks = [(qk, vo) for qk, vo in spec.attention]
    order: list[tuple[str, ...]] = [(RES,)]
    for qk, vo in blocks:
        order += [(qk, vo), (f"mlp.{qk.split('.')[1]}",)]
    order += [(n,) for n in spec.sizes if (n,) not in order and n not in attn]
    return [u for u in order if all(n in spec.sizes for n in u)]


def _descend(spec, a, b, perms: Perms, units, max_iter: int, rng) -> int:
    """Coordinate descent in random unit order, accepting only improvements; returns the sweeps made."""
    sweeps = 0
    while sweeps < max_iter:
        sweeps += 1
        improved = False
        for u in rng.permutation(len(units)):
            new, old_v, new_v = _step(spec, units[u], a, b, perms)
            if new_v > old_v + 1e-12 * max(1.0, abs(old_v)):
                perms.update(new)
                improved = True
        if not improved:
            break
    return sweeps


def weight_matching(spec: ViTPermutationSpec, a: StateDict, b: StateDict, max_iter: int = 100, seed: int = 0,
                    init: Perms | None = None) -> MatchResult:
    """The permutation π of model B that maximises Σ⟨W_A, π(W_B)⟩.

    Without `init`, one pass in network order first solves each unit from the weights whose other axes are
    already solved (the residual stream from the embeddings, then block by block), so early steps are not
    drowned by the noise of still-unaligned blocks; coordinate descent in random order (seeded) then refines it.
    The result is never worse than the identity: if it were, descent restarts from the identity.
    Heads (classifier.*) take part; their output axis (the classes) is never permuted."""
    for key in spec.axes:
        if key not in a or key not in b or a[key].shape != b[key].shape:
            raise ZooError(f"weight {key!r} is missing or differs in shape between the two models; Re-Basin "
                           "needs two models of the same architecture and head")
    units = _units(spec)
    rng = np.random.default_rng(seed)
    start_perms = {k: v.clone() for k, v in (init or spec.identity()).items()}
    start = _objective(spec, a, b, start_perms)
    perms = {k: v.clone() for k, v in start_perms.items()}
    if init is None:
        known: set[str] = set()
        for unit in units:
            new, _, _ = _step(spec, unit, a, b, perms, known)
            perms.update(new)
            known.update(unit)
    sweeps = _descend(spec, a, b, perms, units, max_iter, rng)
    objective = _objective(spec, a, b, perms)
    if objective < start:
        perms = start_perms
        sweeps += _descend(spec, a, b, perms, units, max_iter, rng)
        objective = _objective(spec, a, b, perms)
    return MatchResult(perms=perms, iterations=sweeps, objective=objective, objective_identity=start)


# ----------------------------------------------------------------------------------------------------------------
# Merging


def interpolate(a: StateDict, b: StateDict, alpha: float) -> dict[str, torch.Tensor]:
    """(1 − alpha)·A + alpha·B, key by key (alpha = 0.5: the plain average)."""
    return {k: ((1 - alpha) * a[k].double() + alpha * b[k].double()).to(a[k].dtype) for k in a}


def align(spec: ViTPermutationSpec, reference: StateDict, other: StateDict, **kwargs) -> tuple[dict, MatchResult]:
    """`other` permuted into `reference`'s basis (same function as `other`, weights as close to `reference` as
    weight matching finds)."""
    result = weight_matching(spec, reference, other, **kwargs)
    return apply_permutation(spec, result.perms, other), result


def merge_many(spec: ViTPermutationSpec, models: Sequence[StateDict], max_rounds: int = 20, seed: int = 0,
               iterate: bool = True) -> tuple[list[dict[str, torch.Tensor]], int]:
    """All models in one common basis, for averaging. `iterate=False`: align each to models[0] (the reference).
    `iterate=True` (MergeMany, Ainsworth et al. Alg. 3): then repeatedly re-align each model, in a seeded random
    order, to the mean of all the others, until no permutation changes (or `max_rounds`). Returns the aligned
    state dicts (models[0]'s basis up to a global permutation) and the rounds used."""
    if len(models) < 2:
        raise ZooError("merging needs at least two models")
    aligned = [dict(models[0])] + [align(spec, models[0], m)[0] for m in models[1:]]
    perms: list[Perms | None] = [None] * len(models)
    rounds = 0
    if not iterate:
        return aligned, rounds
    rng = np.random.default_rng(seed)
    while rounds < max_rounds:
        rounds += 1
        changed = False
        for i in rng.permutation(len(models)):
            others = [aligned[j] for j in range(len(models)) if j != i]
            mean = {k: torch.stack([o[k].double() for o in others]).mean(0) for k in spec.axes}
            result = weight_matching(spec, mean, models[i], seed=seed)
            if perms[i] is None or any(not torch.equal(result.perms[n], perms[i][n]) for n in result.perms):
                changed = True
            perms[i] = result.perms
            aligned[i] = apply_permutation(spec, result.perms, models[i])
        if not changed:
            break
    return aligned, rounds
