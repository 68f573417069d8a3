"""Git Re-Basin at the paper's scale: weight matching on ViT-S/16 (d 384, 12 blocks, 6 heads, MLP head), a
planted random permutation of every kind plus independent noise, vs the plain coordinate descent from the
identity (Ainsworth et al.'s schedule) side by side in one run.

    python benchmarks/rebasin_vits.py [--noise 0.01] [--seed 1]

Prints seconds, sweeps and whether each schedule recovers the planted permutation exactly, per permutation kind.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vitzoo_hf.averaging.rebasin import (
    _descend,
    _objective,
    _units,
    apply_permutation,
    invert,
    random_permutation,
    vit_permutation_spec,
    weight_matching,
)
from vitzoo_hf.modeling import ZooViTConfig, ZooViTForImageClassification


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise", type=float, default=0.01, help="std of noise added to B (init weights have 0.02)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    torch.manual_seed(0)
    config = ZooViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                          patch_size=16, image_size=224, num_labels=100, head_type="mlp")
    a = ZooViTForImageClassification(config).state_dict()
    spec = vit_permutation_spec(a, 6)
    planted = random_permutation(spec, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    b = {k: v + args.noise * torch.randn(v.shape, generator=g) for k, v in apply_permutation(spec, planted, a).items()}
    truth = invert(planted)

    def report(label: str, perms, seconds: float, sweeps: int) -> None:
        wrong = sorted({n.split(".")[0] for n in spec.sizes if not torch.equal(perms[n], truth[n])})
        print(f"{label:<34} {seconds:6.1f} s  {sweeps:3d} sweeps  objective {_objective(spec, a, b, perms):.2f}  "
              f"exact: {not wrong}{'' if not wrong else ' (wrong: ' + ', '.join(wrong) + ')'}")

    t = time.perf_counter()
    result = weight_matching(spec, a, b)
    report("vitzoo (network-order init)", result.perms, time.perf_counter() - t, result.iterations)
    t = time.perf_counter()
    perms = spec.identity()
    sweeps = _descend(spec, a, b, perms, _units(spec), 100, np.random.default_rng(0))
    report("plain descent from identity", perms, time.perf_counter() - t, sweeps)
    print(f"objective of the planted inverse: {_objective(spec, a, b, truth):.2f}")


if __name__ == "__main__":
    main()
