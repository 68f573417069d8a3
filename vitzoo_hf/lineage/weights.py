"""Backbone weights as the lineage methods see them: float32 numpy arrays per layer, head removed.

Works for any Hugging Face ViT checkpoint (state dict or `model.safetensors` path): our zoo's keys
(`vit.layers.{i}.attention.q_proj...`), transformers' `ViTForImageClassification` keys
(`vit.encoder.layer.{i}.attention.attention.query...`) and bare backbones (no `vit.` prefix).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vitzoo_hf.analysis.backbone import normalise_key
from vitzoo_hf.errors import ZooError

Weights = dict[str, np.ndarray]
"""One model's backbone: layer name (no `vit.` prefix) -> float32 array in its original shape."""

WeightsSource = Mapping[str, object] | str | Path
"""A state dict (torch tensors or numpy arrays) or the path of a `.safetensors` file."""

HEAD_PREFIXES = ("classifier.", "head.", "heads.", "projection_head.", "pooler.")

# Layer roles, for both naming schemes (ours / transformers' ViT).
ATTENTION_OUTPUT = re.compile(r"attention\.(o_proj|output\.dense)\.weight$")
ATTENTION_QKVO = re.compile(
    r"attention\.(q_proj|k_proj|v_proj|o_proj|attention\.(query|key|value)|output\.dense)\.weight$")


def _to_numpy(value: object) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value.astype(np.float32, copy=False)
    try:  # torch tensor (bfloat16 has no numpy dtype: go through float32 in torch)
        return value.detach().to("cpu").float().numpy()  # type: ignore[attr-defined]
    except AttributeError:
        return np.asarray(value, dtype=np.float32)


def backbone(state: WeightsSource) -> Weights:
    """The backbone of one checkpoint: every floating-point tensor except the classification head."""
    if isinstance(state, (str, Path)):
        path = Path(state)
        if not path.is_file():
            raise ZooError(f"weights file {path} does not exist; pass a model.safetensors path or a state dict")
        from safetensors.numpy import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # bfloat16 and friends: fall back to torch's reader (still no pickle)
            try:
                from safetensors.torch import load_file as load_torch

                state = load_torch(str(path))
            except Exception:
                raise ZooError(f"{path} is not a readable safetensors file ({err}); "
                               "re-download or regenerate it") from None
    out: Weights = {}
    for key, value in state.items():
        name = normalise_key(key)
        if name.startswith(HEAD_PREFIXES):
            continue
        array = _to_numpy(value)
        if not np.issubdtype(array.dtype, np.floating):
            continue
        out[name] = array.astype(np.float32, copy=False)
    if not out:
        raise ZooError("a checkpoint has no backbone weights (only a head, or no floating-point tensors)")
    return out


def load_all(sources: Sequence[WeightsSource] | Sequence[Weights]) -> list[Weights]:
    return [s if _is_weights(s) else backbone(s) for s in sources]  # type: ignore[arg-type]


def _is_weights(s: object) -> bool:
    return isinstance(s, dict) and all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in s.values())


def common_layers(models: Sequence[Weights]) -> list[str]:
    """Layers present with the same shape in every model (sorted); a model set must share an architecture."""
    if not models:
        raise ZooError("no models given to the lineage method")
    names = [k for k, v in models[0].items() if all(k in m and m[k].shape == v.shape for m in models[1:])]
    if not names:
        raise ZooError("the models share no backbone layer of the same shape; lineage needs one architecture")
    return sorted(names)


def stack(models: Sequence[Weights], layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Per layer, an (n, size) matrix: row i is model i's flattened layer."""
    layers = common_layers(models) if layers is None else list(layers)
    return {name: np.stack([m[name].ravel() for m in models]) for name in layers}


def select(names: Sequence[str], shapes: Mapping[str, tuple[int, ...]], which: str) -> list[str]:
    """Layer subsets used by the methods.

    matrices          every 2-D weight matrix of the backbone
    square            every square 2-D weight matrix (official MoTHeR clustering distance)
    attention_output  the square attention output projections (official MoTHeR code, `'output.dense'` + square)
    attention         query/key/value/output projections (official MoTHeR distance)
    all               every backbone tensor
    """
    if which == "all":
        return list(names)
    if which == "matrices":
        chosen = [n for n in names if n.endswith("weight") and len(shapes[n]) == 2]
    elif which == "square":
        chosen = [n for n in names if n.endswith("weight") and len(shapes[n]) == 2 and shapes[n][0] == shapes[n][1]]
    elif which == "attention_output":
        chosen = [n for n in names if ATTENTION_OUTPUT.search(n) and len(set(shapes[n])) == 1]
    elif which == "attention":
        chosen = [n for n in names if ATTENTION_QKVO.search(n)]
    else:
        raise ZooError(f"unknown layer selection {which!r}; use matrices, square, attention_output, attention "
                       "or all")
    if not chosen:
        raise ZooError(f"no backbone layer matches the selection {which!r}; use 'matrices' or 'all' for this model")
    return chosen
