"""Random ViT-S/16-sized checkpoints (22 M parameters, the paper's architecture) for the analysis benchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def vit_s_shapes(hidden: int = 384, layers: int = 12, mlp: int = 1536, patch: int = 16, tokens: int = 197,
                 classes: int = 100) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "vit.embeddings.cls_token": (1, 1, hidden), "vit.embeddings.position_embeddings": (1, tokens, hidden),
        "vit.embeddings.patch_embeddings.projection.weight": (hidden, 3, patch, patch),
        "vit.embeddings.patch_embeddings.projection.bias": (hidden,),
        "vit.layernorm.weight": (hidden,), "vit.layernorm.bias": (hidden,),
        "classifier.weight": (classes, hidden), "classifier.bias": (classes,)}
    for i in range(layers):
        p = f"vit.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}attention.{name}.weight"] = (hidden, hidden)
            shapes[f"{p}attention.{name}.bias"] = (hidden,)
        for name in ("layernorm_before", "layernorm_after"):
            shapes[f"{p}{name}.weight"] = (hidden,)
            shapes[f"{p}{name}.bias"] = (hidden,)
        shapes[f"{p}mlp.fc1.weight"], shapes[f"{p}mlp.fc1.bias"] = (mlp, hidden), (mlp,)
        shapes[f"{p}mlp.fc2.weight"], shapes[f"{p}mlp.fc2.bias"] = (hidden, mlp), (hidden,)
    return shapes


def random_state(seed: int, base: dict[str, np.ndarray] | None = None, spread: float = 0.002) -> dict[str, np.ndarray]:
    """Trained-looking random weights (LayerNorm weights near 1, the rest small); with `base`: a near-identical
    child differing by `spread` of each tensor's scale (an SGD fine-tune's ~0.2 %)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in vit_s_shapes().items():
        scale = 0.02 if not k.endswith("weight") or "layernorm" not in k else 0.05
        noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
        if base is not None:
            out[k] = base[k] + np.float32(spread) * noise
        else:
            out[k] = noise + (np.float32(1.0) if "layernorm" in k and k.endswith("weight") else np.float32(0.0))
    return out


def check_disk(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed * 1.2:
        raise SystemExit(f"{folder}: {free / 2**30:.1f} GiB free, {needed / 2**30:.1f} GiB needed; use --dir "
                         "elsewhere or a smaller --n")
