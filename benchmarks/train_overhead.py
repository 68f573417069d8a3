"""Training-step overhead: vitzoo_hf's step (Accelerate-prepared model and optimizer, loss outside the model)
vs a bare PyTorch loop, on the same tiny zoo ViT and the same batches, side by side in one run.

    python benchmarks/train_overhead.py [--blueprint mini] [--steps 60] [--rounds 5]

Prints images/s for both and the ratio ours / bare (target >= 0.9).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from vitzoo_hf.blueprint import load_blueprint
from vitzoo_hf.modeling import ZooViTForImageClassification
from vitzoo_hf.recipe import model_config
from vitzoo_hf.training import _accelerator, train_step


def bare_step(model, optimizer, x, soft, label_smoothing):
    logits = model(pixel_values=x).logits
    loss = F.cross_entropy(logits, soft, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blueprint", default="mini")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    bp = load_blueprint(args.blueprint)
    torch.manual_seed(0)
    size = bp.architecture.image_size
    batches = [(torch.randn(args.batch_size, 3, size, size),
                torch.softmax(torch.randn(args.batch_size, 10), -1)) for _ in range(args.steps)]
    base = ZooViTForImageClassification(model_config(bp, [str(i) for i in range(10)]))

    bare_model = copy.deepcopy(base).train()
    bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=1e-3)
    accelerator = _accelerator(None, ".", "no")
    ours_model = accelerator.prepare(copy.deepcopy(base).train())
    ours_opt = accelerator.prepare(torch.optim.AdamW(ours_model.parameters(), lr=1e-3))

    runners = {
        "bare": lambda x, y: bare_step(bare_model, bare_opt, x, y, 0.1),
        "vitzoo_hf": lambda x, y: train_step(ours_model, ours_opt, accelerator, x, y, 0.1),
    }
    for run in runners.values():  # warm-up
        for x, y in batches[:5]:
            run(x, y)
    rates: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):  # interleaved so both see the same machine state
        for name, run in runners.items():
            t0 = time.perf_counter()
            for x, y in batches:
                run(x, y)
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - t0))
    bare, ours = statistics.median(rates["bare"]), statistics.median(rates["vitzoo_hf"])
    print(f"model: {bp.name} architecture ({sum(p.numel() for p in base.parameters()):,} params), "
          f"batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}")
    print(f"bare PyTorch loop : {bare:8.1f} images/s")
    print(f"vitzoo_hf step    : {ours:8.1f} images/s")
    print(f"ratio ours / bare : {ours / bare:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
