"""What "the backbone" of a checkpoint is, and how its tensors are read: memory-mapped, never copied.

Classifier checkpoints name their backbone `vit.*` and their head `classifier.*`; contrastive backbones are a bare
`ZooViTModel` (no prefix, no head). Keys are normalised by dropping `vit.`, so a fine-tune and its parent share
every backbone key whatever their task. Statistics, distances and sketches all stream tensors in the sorted order
of these normalised keys, which is what makes them comparable (and sketches reproducible) across checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from vitzoo_hf.errors import ZooError

SCOPES = ("backbone", "all")
HEAD_PREFIX = "classifier."
_VIT_PREFIX = "vit."


def normalise_key(key: str) -> str:
    """`vit.layers.0.mlp.fc1.weight` -> `layers.0.mlp.fc1.weight` (contrastive backbones have no prefix)."""
    return key[len(_VIT_PREFIX):] if key.startswith(_VIT_PREFIX) else key


def in_scope(key: str, scope: str) -> bool:
    """Whether a (raw) key belongs to `scope`: "backbone" (every parameter but the head) or "all"."""
    check_scope(scope)
    return scope == "all" or not normalise_key(key).startswith(HEAD_PREFIX)


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ZooError(f"unknown parameter scope {scope!r}; allowed: {', '.join(SCOPES)}")


def flat(array) -> np.ndarray:
    """A 1-D float32/float64 numpy view of a tensor or array (torch CPU tensors are viewed, not copied;
    half precision is widened to float32, which is exact)."""
    if hasattr(array, "detach"):  # torch.Tensor
        t = array.detach()
        if t.dtype not in (_torch().float32, _torch().float64):
            t = t.float()
        array = t.contiguous().numpy()
    a = np.asarray(array)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    return np.ascontiguousarray(a).reshape(-1)


def _torch():
    import torch

    return torch


class CheckpointReader:
    """An open `model.safetensors`: tensors by normalised key, as flat memory-mapped numpy views.

    Views are valid only while the reader is open (use `open_checkpoint`); closing unmaps the file, so a
    streaming pass over many checkpoints holds at most the pages it is using."""

    def __init__(self, handle, path: Path, scope: str) -> None:
        self._f = handle
        self.path = path
        self.keys: dict[str, str] = {normalise_key(k): k for k in handle.keys() if in_scope(k, scope)}

    def dtype(self, name: str) -> str:
        """The stored dtype ("F32", "BF16", ...)."""
        return self._f.get_slice(self.keys[name]).get_dtype()

    def names(self) -> list[str]:
        return sorted(self.keys)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._f.get_slice(self.keys[name]).get_shape())

    def array(self, name: str) -> np.ndarray:
        return flat(self._f.get_tensor(self.keys[name]))

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the first dimension, flattened (a 0/1-D tensor is one row)."""
        sl = self._f.get_slice(self.keys[name])
        if len(sl.get_shape()) <= 1:
            return self.array(name)
        return flat(sl[start:stop])

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self.names():
            yield name, self.array(name)


@contextmanager
def open_checkpoint(path: str | Path, scope: str = "backbone", framework: str = "pt") -> Iterator[CheckpointReader]:
    """Open a safetensors checkpoint. framework "pt": memory-mapped, whole tensors are zero-copy views (nothing is
    read until touched); "np": no torch import (~0.7 GB less resident memory), each read copies its slice, no
    bfloat16 (numpy has none) -- for streaming row slices out of many files."""
    from safetensors import safe_open

    check_scope(scope)
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"weights file {path} does not exist; check the zoo folder (or re-download the checkpoint)")
    with safe_open(str(path), framework=framework) as f:
        yield CheckpointReader(f, path, scope)
