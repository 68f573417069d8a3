"""Population analysis of a model zoo: performance, behavioural and weight-space diversity (the paper's Tables 1,
2, 6, 7, 8), for a local zoo folder or a published one, from the weights or from the metadata alone.

Pure maths, one concept per module: `performance`, `agreement`, `weights` (statistics), `distances`, `sketch`;
`checkpoint` (the per-checkpoint metadata columns); `population` (the only module that reads a `Zoo`);
`tables`, `figures`, `run` (`vitzoo analyze`).
"""

import os
import sys
from pathlib import Path


def numba_cache_dir() -> Path:
    """Where numba's `cache=True` keeps compiled code: $NUMBA_CACHE_DIR if the user set it, else a per-user cache
    folder. Never next to the modules: in a wheel install that is site-packages, and a folder numba leaves there
    outlives `pip uninstall` and shadows a later editable install of the package."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vitzoo_hf" / "numba"


# Set before any `@njit(cache=True)` below is decorated (the cache location is fixed then); numba reads the
# variable when it is imported, or its config attribute later if something imported numba before us.
os.environ["NUMBA_CACHE_DIR"] = str(numba_cache_dir())
if "numba" in sys.modules and not sys.modules["numba"].config.CACHE_DIR:
    sys.modules["numba"].config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]

from vitzoo_hf.analysis.checkpoint import STAT_COLUMNS, checkpoint_statistics  # noqa: E402

__all__ = ["STAT_COLUMNS", "checkpoint_statistics"]
