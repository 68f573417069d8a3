"""Apply the two harness mutants of issue 20 to a copy of the package and show that the lineage tests catch them.

    python benchmarks/lineage/check_mutants.py

Mutant A deletes the shuffle in `lineage/table3.py` (the methods see the drawn order: roots first, runs in epoch
order); mutant B maps predictions back through the unshuffled node list. Each runs the harness tests against a
patched copy (nothing in the working tree changes) and must fail them; the unpatched copy must pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE3 = "vitzoo_hf/lineage/table3.py"
MUTANTS = {
    "none": None,
    "A: no shuffle": ("        rng.shuffle(order)\n", "        pass  # mutant: no shuffle\n"),
    "B: back-map through the unshuffled list": ("[(shuffled[p], shuffled[c]) for p, c in factory",
                                                "[(sub.nodes[p], sub.nodes[c]) for p, c in factory"),
}
TESTS = ["tests/test_lineage_harness.py", "-k", "test_harness"]


def run(name: str, patch: tuple[str, str] | None) -> int:
    with tempfile.TemporaryDirectory(prefix="lineage-mutant-") as tmp:
        shutil.copytree(ROOT / "vitzoo_hf", Path(tmp) / "vitzoo_hf", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "tests", Path(tmp) / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        if patch is not None:
            path = Path(tmp) / TABLE3
            text = path.read_text()
            assert text.count(patch[0]) == 1, f"mutant {name}: the line to patch is not in {TABLE3} once"
            path.write_text(text.replace(patch[0], patch[1]))
        env = {**os.environ, "PYTHONPATH": tmp, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=tmp,
                              env=env, capture_output=True, text=True)
        summary = [line for line in proc.stdout.splitlines() if line.startswith("FAILED") or " passed" in line
                   or " failed" in line]
        print(f"mutant {name}: exit {proc.returncode}")
        for line in summary:
            print("   ", line)
        return proc.returncode


def main() -> int:
    codes = {name: run(name, patch) for name, patch in MUTANTS.items()}
    ok = codes["none"] == 0 and all(c != 0 for n, c in codes.items() if n != "none")
    print("all mutants caught" if ok else "NOT all mutants caught (or the unpatched tests fail)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
