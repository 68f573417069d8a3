"""Generation at scale: the DataLoader worker count changes no bit; training metrics on a fixed subset; many
models at once (`--jobs`) with failures isolated and Ctrl-C resumable."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand, load_blueprint
from vitzoo_hf.checkpoints import is_complete
from vitzoo_hf.recipe import train_eval_indices
from vitzoo_hf.training import train_model


def _blueprint(tmp_path: Path, **patch) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"extends": "smoke", "name": "t", **patch}))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / layout.RESULT_FILE).read_text().splitlines()]


@pytest.mark.parametrize("task", ["supervised", "contrastive"])
def test_worker_count_changes_no_bit(tmp_path, task):
    other = "contrastive" if task == "supervised" else "supervised"
    bp = load_blueprint(_blueprint(tmp_path, pretraining={"epochs": 1, "dataset": {"max_train": 96},
                                                          "tasks": {other: {"runs": []}}},
                                   evaluation={"train_max": 70, "batch_size": 16}))
    spec = expand(bp)[0]
    paths = [train_model(bp, spec, tmp_path / f"w{w}", progress=False, num_workers=w) for w in (0, 2)]
    final = f"checkpoint_{spec.epochs:06d}/model.safetensors"
    assert (paths[0] / final).read_bytes() == (paths[1] / final).read_bytes()
    for key in ("train_loss", "train_accuracy", "validation_loss", "train_objective"):
        assert [r[key] for r in _rows(paths[0])] == [r[key] for r in _rows(paths[1])]
    config = json.loads((paths[1] / layout.CONFIG_FILE).read_text())
    assert config["distribution"]["num_workers"] == 2 and config["recipe"]["train_metrics"]["train_max"] == 70
    if task == "supervised":  # training accuracy counts exactly the 70 images of the fixed subset
        assert all(abs(r["train_accuracy"] * 70 - round(r["train_accuracy"] * 70)) < 1e-6 for r in _rows(paths[0]))


def test_training_metrics_subset_is_fixed_and_spread():
    subset = train_eval_indices(1000, 100)
    assert subset == train_eval_indices(1000, 100) == sorted(set(subset)) and len(subset) == 100
    assert subset[0] < 100 and subset[-1] > 900  # drawn from the whole split, not its head
    assert train_eval_indices(50, 100) == list(range(50)) and train_eval_indices(50, None) == list(range(50))


def _two_families(tmp_path: Path) -> Path:
    return _blueprint(tmp_path, pretraining={
        # long enough that neither backbone can finish between the first checkpoints and the Ctrl-C below (with
        # evaluation inputs kept, 3 epochs of 64 images took less than the other job's start-up)
        "epochs": 8, "dataset": {"max_train": 128, "max_validation": 32},
        "tasks": {"supervised": {"runs": [{"seed": 1, "batch_size": 32}, {"seed": 2, "batch_size": 32}]},
                  "contrastive": {"runs": []}}},
        finetuning={"epochs": 1, "dataset": {"max_train": 64, "max_validation": 32},
                    "grid": {"head": ["linear"], "optimizer": ["adamw"], "lr": [1.0e-3], "head_seed": [1]}})


def test_jobs_isolate_failures_and_ctrl_c_resumes(tmp_path):
    bp_path = _two_families(tmp_path)
    bp = load_blueprint(bp_path)
    a, a_kid, b, b_kid = expand(bp)
    out = tmp_path / "zoo"
    cmd = [sys.executable, "-m", "vitzoo_hf.cli", "generate", str(bp_path), "--out", str(out), "--jobs", "2",
           "--num-workers", "0"]

    # Ctrl-C while both backbones train: every job stops, nothing half-written, exit 130.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not all(layout.checkpoints(layout.model_dir(out, m)) for m in (a, b)) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "rerun the same command" in err
    left = subprocess.run(["pgrep", "-f", f"{out}|vitzoo_hf.runner --worker"], capture_output=True,
                          text=True).stdout.split()
    assert left == [], "a job outlived Ctrl-C"
    assert not list(out.rglob(".checkpoint_*.partial"))
    b_was_complete = is_complete(out, b)  # it may have finished its last epoch before the signal arrived
    # a finished one would be refused by the main process before any job starts, not by its own job
    assert not is_complete(out, a), "backbone a finished before the Ctrl-C: give the blueprint more epochs"

    # Backbone a is made to fail (its folder holds another model's settings); b and its child still train.
    cfg = layout.model_dir(out, a) / layout.CONFIG_FILE
    record = json.loads(cfg.read_text())
    record["factors"]["lr"] = 0.5
    cfg.write_text(json.dumps(record))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert f"failed  {a.name}: train.py: error:" in done.stdout and "other settings" in done.stdout
    assert f"skipped {a_kid.name}: its parent {a.name} failed" in done.stdout
    assert f"{2 - b_was_complete} done, 1 failed, 1 skipped" in done.stdout, done.stdout
    assert "1 of 4 models failed" in done.stderr
    assert is_complete(out, b) and is_complete(out, b_kid) and not is_complete(out, a_kid)
    assert len(layout.checkpoints(layout.model_dir(out, b))) == b.epochs + 1  # resumed after Ctrl-C, not restarted
    assert json.loads((layout.model_dir(out, b_kid) / layout.CONFIG_FILE).read_text())["distribution"][
        "torch_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
