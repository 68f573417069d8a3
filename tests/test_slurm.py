"""The SLURM submitter, run for real against a stub `sbatch` that executes each array task in turn."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand
from vitzoo_hf.checkpoints import is_complete, verify_checkpoint
from vitzoo_hf.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[1]

# Records its arguments, reads the job script from stdin, refuses an unmet afterok dependency, runs every array
# task synchronously with SLURM_ARRAY_TASK_ID set, and prints the job id (--parsable) like sbatch.
STUB = """#!{python}
import json, os, subprocess, sys
from pathlib import Path

state = Path(os.environ["SBATCH_STUB_STATE"])
args = sys.argv[1:]
job = str(1000 + len(list(state.glob("job-*.sh"))))
script = state / f"job-{{job}}.sh"
script.write_text(sys.stdin.read())
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\\n")
for arg in args:
    if arg.startswith("--dependency="):
        kind, _, deps = arg.split("=", 1)[1].partition(":")
        assert kind == "afterok", arg
        for dep in deps.split(":"):
            if not (state / f"{{dep}}.ok").exists():
                sys.exit(f"sbatch: error: dependency {{dep}} has not succeeded")
first, last = map(int, next(a for a in args if a.startswith("--array=")).split("=", 1)[1].split("-"))
for task in range(first, last + 1):
    env = {{**os.environ, "SLURM_ARRAY_JOB_ID": job, "SLURM_ARRAY_TASK_ID": str(task)}}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    status = "ok" if proc.returncode == 0 else "failed"
    (state / f"{{job}}_{{task}}.{{status}}").write_text(proc.stdout + proc.stderr)
print(job if "--parsable" in args else f"Submitted batch job {{job}}")
"""


def test_slurm_script_regenerates_the_smoke_zoo_into_a_path_with_spaces(smoke_all, tmp_path):
    bp, trained = smoke_all
    out = tmp_path / "my zoos" / "smoke zoo"
    shutil.copytree(trained, out)
    # Take away the final epoch of a backbone and of one of its children: the jobs must train them again (in
    # order: the child's job waits for its parent's task).
    models = expand(bp)
    backbone = models[0]
    child = next(m for m in models if m.parent == backbone.name)
    for m in (backbone, child):
        shutil.rmtree(layout.checkpoint_dir(layout.model_dir(out, m), m.epochs))
        assert not is_complete(out, m)

    bin_dir, state = tmp_path / "bin", tmp_path / "sbatch state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "sbatch").write_text(STUB.format(python=sys.executable))
    (bin_dir / "sbatch").chmod(0o755)
    script = tmp_path / "my zoos" / "submit smoke.sh"
    assert cli_main(["plan", "smoke", "--slurm", str(script), "--out", str(out)]) == 0
    text = script.read_text()
    assert "\n#SBATCH " not in text and "SBATCH_ARGS" in text and "GPUS" in text and "training/train.py" not in text

    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SBATCH_STUB_STATE": str(state),
           "SBATCH_ARGS": "--partition=test --time=0:30:00",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("GPUS", None)
    started = time.time()
    proc = subprocess.run(["bash", str(script)], cwd="/", env=env, capture_output=True, text=True, timeout=900)
    failed = {p.name: p.read_text()[-2000:] for p in state.glob("*.failed")}
    assert proc.returncode == 0 and not failed, (proc.stdout, proc.stderr, failed)

    calls = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
    n_backbones = sum(m.stage == "pretraining" for m in models)
    assert len(calls) == 1 + n_backbones
    assert all("--parsable" in c and "--partition=test" in c and "--time=0:30:00" in c for c in calls)
    assert [a for a in calls[1] if a.startswith("--dependency=")] == ["--dependency=afterok:1000_0"]
    assert len(list(state.glob("*.ok"))) == len(models)  # one array task per model, every one succeeded
    assert "--multi_gpu" not in (state / "job-1000.sh").read_text()  # GPUS=1: accelerate refuses --multi_gpu
    for m in models:
        assert is_complete(out, m), m.name
    for m in (backbone, child):  # trained again by the jobs (accelerate launch: not bitwise the in-process run)
        final = layout.checkpoint_dir(layout.model_dir(out, m), m.epochs)
        assert verify_checkpoint(final)["epoch"] == m.epochs
        assert final.stat().st_mtime > started, m.name
