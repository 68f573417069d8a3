"""Figures, one way for every report: matplotlib without a display, PNGs written atomically (a reader never sees
half a file, a rerun never leaves a broken one)."""

from __future__ import annotations

import os
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, dpi: int = 120, tight: bool = False) -> Path:
    """Write `fig` to `path` through a temporary file and a rename, then free it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight" if tight else None)
    os.replace(tmp, path)
    pyplot().close(fig)
    return path
