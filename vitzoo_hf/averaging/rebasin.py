"""Git Re-Basin weight matching for the zoo's Vision Transformers (Ainsworth, Hayase, Srinivasa; ICLR 2023).

Two networks that differ by a permutation of hidden units compute the same function; weight matching finds the
permutation of model B that brings its weights closest to model A, so that averaging them is meaningful. The
permutations themselves (which axis of which weight each one acts on) live in `vitzoo_hf.symmetries`.

Weight matching is coordinate descent: each step fixes every permutation but one and solves a linear assignment
problem (`scipy.optimize.linear_sum_assignment`) for it; for attention the step is solved exactly under the head
structure (an assignment within every pair of heads, then an assignment of heads). It stops when no step
improves the total inner product ⟨W_A, π(W_B)⟩. It is data-free.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from vitzoo_hf.errors import ZooError
from vitzoo_hf.symmetries import (  # noqa: F401  (re-exported: the Re-Basin API names its permutations)
    HEAD_HIDDEN,
    RES,
    Perms,
    StateDict,
    ViTPermutationSpec,
    apply_permutation,
    head_structured,
    invert,
    random_permutation,
    vit_permutation_spec,
)

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
