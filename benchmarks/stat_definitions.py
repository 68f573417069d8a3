"""Which definition of the weight statistics gives values of the paper's order (Table 1: kurtosis 0.85 / 3.06,
skewness 0.01, L2 norm 1636 / 2568 on ViT-S)? A ViT-S (the zoo's own modelling code, the paper's width, depth,
heads and MLP size) at its random initialisation and after a few hundred steps of the paper's pre-training
recipe (AdamW, lr 1e-3, weight decay 1e-4, label smoothing 0.1) on synthetic class-conditional images; the
statistics of its backbone under every definition of `vitzoo_hf.analysis.weights.DEFINITIONS`.

    python benchmarks/stat_definitions.py [--steps 200] [--batch 32] [--image-size 32] [--patch 8] [--every 50]

Images are 32 px with 8 px patches by default (17 tokens) so that a few hundred steps fit a shared 2-core CPU;
the transformer blocks -- whose matrices two of the definitions use -- are exactly ViT-S's, only the patch
embedding and position table are smaller (they count under "flat" only).
"""

from __future__ import annotations

import argparse
import time

import torch

from vitzoo_hf.analysis.weights import DEFINITIONS, Moments, by_definition
from vitzoo_hf.modeling import ZooViTConfig, ZooViTForImageClassification

PAPER = {"kurtosis": "0.85 (sup.) / 3.06 (contr.)", "skewness": "0.01", "l2_norm": "1636 / 2568"}


def backbone_stats(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    parts = {}
    for k, v in model.state_dict().items():
        k = k.removeprefix("vit.")
        if not k.startswith("classifier."):
            parts[k] = (tuple(v.shape), Moments.of(v.detach()))
    return by_definition(parts)


def synthetic_batch(gen: torch.Generator, prototypes: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class prototypes plus noise: learnable, so the weights move as in real training."""
    y = torch.randint(0, len(prototypes), (batch,), generator=gen)
    x = prototypes[y] + 0.8 * torch.randn((batch, *prototypes.shape[1:]), generator=gen)
    return x, y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--every", type=int, default=50, help="report the statistics every this many steps")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    config = ZooViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                          patch_size=args.patch, image_size=args.image_size, num_labels=args.classes)
    model = ZooViTForImageClassification(config)
    n = sum(v.numel() for k, v in model.state_dict().items() if not k.startswith("classifier."))
    print(f"ViT-S blocks (384 wide, 12 layers, 6 heads, MLP 1536), {args.image_size} px / patch {args.patch}: "
          f"{n / 1e6:.1f} M backbone parameters; {torch.get_num_threads()} threads")
    gen = torch.Generator().manual_seed(args.seed)
    prototypes = torch.randn((args.classes, 3, args.image_size, args.image_size), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    rows = [(0, backbone_stats(model), float("nan"))]
    t0 = time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        x, y = synthetic_batch(gen, prototypes, args.batch)
        logits = model(pixel_values=x).logits
        loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            rows.append((step, backbone_stats(model), loss.item()))
            print(f"  step {step}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print()
    print("| steps | loss | definition | skewness | kurtosis | L2 norm |")
    print("|---|---|---|---|---|---|")
    for step, stats, loss in rows:
        for d in DEFINITIONS:
            s = stats[d]
            print(f"| {step} | {loss:.3f} | {d} | {s['skewness']:.4f} | {s['kurtosis']:.3f} | {s['l2_norm']:.1f} |")
    print(f"| paper (ViT-S, ImageNet, 90 epochs) | | | {PAPER['skewness']} | {PAPER['kurtosis']} | "
          f"{PAPER['l2_norm']} |")
    print(f"\n{args.steps} steps of batch {args.batch} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
