"""Small traps a user falls into: a folder named like a blueprint, --jobs on a multi-GPU node, numba's cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from vitzoo_hf.blueprint import load_blueprint
from vitzoo_hf.runner import job_devices, visible_gpus

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_a_folder_named_like_a_shipped_blueprint_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paper").mkdir()  # `vitzoo generate paper --out paper` made it
    (tmp_path / "smoke").mkdir()
    assert load_blueprint("paper").name == "paper" and load_blueprint("smoke").source == "smoke"
    (tmp_path / "mini").write_text("extends: smoke\nname: my-mini\n")  # a file of that name still wins
    assert load_blueprint("mini").name == "my-mini"


def test_jobs_spread_round_robin_over_the_visible_gpus(monkeypatch):
    assert job_devices(6, None, ["0", "1", "2", "3"]) == ["0", "1", "2", "3", "0", "1"]
    assert job_devices(3, ["5", " 7"], ["0", "1", "2", "3"]) == ["5", "7", "5"]  # --devices wins
    assert job_devices(2, None, []) == [None, None]  # CPU only: threads, no CUDA_VISIBLE_DEVICES
    assert job_devices(1, None, ["GPU-3f2a"]) == ["GPU-3f2a"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")  # a scheduler's allocation: keep its ids and order
    assert visible_gpus() == ["2", "5"] and job_devices(4, None, visible_gpus()) == ["2", "5", "2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_numba_cache_stays_out_of_the_package(tmp_path):
    package = REPO_ROOT / "vitzoo_hf" / "analysis"
    before = {p: p.stat().st_mtime for p in package.rglob("*.nb[ic]")}
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("NUMBA_CACHE_DIR", None)
    code = ("import numpy as np, vitzoo_hf.analysis.weights as w; "
            "print(w._shifted_power_sums(np.arange(4, dtype=np.float32), 1.0))")
    started = time.time()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "cache" / "vitzoo_hf" / "numba").rglob("*weights*.nbi"))
    after = {p: p.stat().st_mtime for p in package.rglob("*.nb[ic]")}
    assert not [p for p, t in after.items() if p not in before or t >= started], "numba wrote into the package"
