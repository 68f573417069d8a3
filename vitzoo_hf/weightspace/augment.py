"""Function-preserving augmentation: a random ViT permutation per sample, applied to the tensors on the fly.

The rules (which axis of which weight each permutation moves) are `vitzoo_hf.symmetries`, the same ones
Git Re-Basin searches over; this module only draws them. A permuted checkpoint computes exactly the same logits
(up to float rounding), so a meta-model trained on augmented views learns that weight-space points related by a
symmetry are one model.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from vitzoo_hf.symmetries import (
    KINDS,
    ViTPermutationSpec,
    apply_permutation,
    check_kinds,
    random_permutation,
    vit_permutation_spec,
)

StateDict = Mapping[str, torch.Tensor]


class PermutationAugment:
    """`augment(state_dict, num_heads)` → a function-equal permuted copy.

    Each call draws a fresh permutation of the `kinds` (default: all: residual stream, MLP hidden units, heads as
    units, within-head Q/K and V/O, MLP-head hidden units). With `seed` the sequence of draws is reproducible;
    without, each call's seed comes from torch's global generator (so DataLoader workers, which torch seeds
    differently, draw differently)."""

    def __init__(self, kinds: Collection[str] = KINDS, seed: int | None = None) -> None:
        self.kinds = tuple(kinds)
        check_kinds(self.kinds)
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._specs: dict[tuple, ViTPermutationSpec] = {}

    def spec(self, state_dict: StateDict, num_heads: int) -> ViTPermutationSpec:
        """The permutation spec of this layout (computed once per distinct set of keys and shapes)."""
        sig = (num_heads, *((k, tuple(v.shape)) for k, v in state_dict.items()))
        if sig not in self._specs:
            self._specs[sig] = vit_permutation_spec(state_dict, num_heads)
        return self._specs[sig]

    def draw_seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self._generator).item())

    def __call__(self, state_dict: StateDict, num_heads: int, seed: int | None = None) -> dict[str, torch.Tensor]:
        spec = self.spec(state_dict, num_heads)
        perms = random_permutation(spec, self.draw_seed() if seed is None else seed, kinds=self.kinds)
        return apply_permutation(spec, perms, state_dict)
