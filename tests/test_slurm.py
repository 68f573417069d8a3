"""The SLURM submitter, run for real against a stub cluster: `sbatch` and `scontrol` stubs that record what they
are asked, and a small scheduler (below) that runs the recorded array tasks the way SLURM does: a task waits for
its afterok dependency to complete successfully, a requeued task goes back to pending under the same job id, and
the batch shell alone gets `--signal=B:TERM` (here: once, while a backbone is training)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand, load_blueprint
from vitzoo_hf.checkpoints import is_complete, read_json, verify_checkpoint
from vitzoo_hf.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[1]

# sbatch: records the submission (options, a copy of the job script, the script's arguments) and prints its job id
# (--parsable). Like the real one it returns at once; the scheduler runs the jobs later.
SBATCH = """#!{python}
import json, os, sys
from pathlib import Path

state = Path(os.environ["SBATCH_STUB_STATE"])
args = sys.argv[1:]
k = next(i for i, a in enumerate(args) if os.path.isfile(a))  # options, then the script, then its arguments
job = 1000 + len(list(state.glob("job-*.json")))
(state / f"job-{{job}}.json").write_text(json.dumps({{"id": job, "options": args[:k], "script_args": args[k + 1:],
                                                     "script": Path(args[k]).read_text()}}))
print(f"{{job}};stubcluster" if "--parsable" in args else f"Submitted batch job {{job}}")
"""
SCONTROL = """#!/bin/bash
[ "$1" = requeue ] || exit 1
echo "$2" >> "$SBATCH_STUB_STATE/requeue.txt"
"""


def _option(options: list[str], name: str) -> str | None:
    return next((o.split("=", 1)[1] for o in options if o.startswith(f"--{name}=")), None)


def run_cluster(state: Path, env: dict, term: tuple[str, Path] | None = None) -> list[dict]:
    """Run every submitted array task, in submission order, as SLURM would schedule them one at a time. `term`:
    (task id, path) — that task's first run gets SIGTERM on its batch shell as soon as `path` exists. Returns one
    event per run: task, restart count, exit code, requeued, and the state of `path`'s folder after the run."""
    jobs = sorted((json.loads(p.read_text()) for p in state.glob("job-*.json")), key=lambda j: j["id"])
    tasks, status, restarts, events = [], {}, {}, []
    for job in jobs:
        first, last = map(int, _option(job["options"], "array").split("-"))
        script = state / f"job-{job['id']}.sh"
        script.write_text(job["script"])
        for t in range(first, last + 1):
            tasks.append((f"{job['id']}_{t}", job, t, script, 5000 + len(tasks)))
    for task_id, *_ in tasks:
        status[task_id], restarts[task_id] = "pending", 0
    progress = True
    while progress:
        progress = False
        for task_id, job, t, script, slurm_job_id in tasks:
            if status[task_id] != "pending":
                continue
            deps = (_option(job["options"], "dependency") or "").removeprefix("afterok:")
            deps = [d for d in deps.split(":") if d]
            if any(status[d] in ("failed", "cancelled") for d in deps):  # --kill-on-invalid-dep=yes
                status[task_id], progress = "cancelled", True
                continue
            if not all(status[d] == "ok" for d in deps):
                continue
            run_env = {**env, "SLURM_JOB_ID": str(slurm_job_id), "SLURM_ARRAY_JOB_ID": str(job["id"]),
                       "SLURM_ARRAY_TASK_ID": str(t), "SLURM_RESTART_COUNT": str(restarts[task_id])}
            log = state / f"{task_id}.run{restarts[task_id]}.log"
            with open(log, "w") as out:
                proc = subprocess.Popen(["bash", str(script), *job["script_args"]], env=run_env, stdout=out,
                                        stderr=subprocess.STDOUT, cwd="/")
                signalled = None
                if term and term[0] == task_id and restarts[task_id] == 0:
                    while not term[1].exists() and proc.poll() is None:
                        time.sleep(0.005)
                    proc.send_signal(signal.SIGTERM)  # --signal=B:TERM: the batch shell only
                    signalled = time.time()
                code = proc.wait(timeout=600)
            requeue = state / "requeue.txt"
            requeued = requeue.exists() and task_id in requeue.read_text().split()
            if requeued:
                requeue.unlink()
            events.append({"task": task_id, "restart": restarts[task_id], "code": code, "requeued": requeued,
                           "signalled": signalled, "log": log.read_text(), "slurm_job_id": slurm_job_id,
                           "after": sorted(p.name for p in term[1].parent.iterdir()) if term else None})
            if requeued:
                restarts[task_id] += 1  # back to pending, same job id: its dependants keep waiting for it
            else:
                status[task_id] = "ok" if code == 0 else "failed"
            progress = True
    return events


def _stub_bin(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, state = tmp_path / "bin", tmp_path / "sbatch state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "sbatch").write_text(SBATCH.format(python=sys.executable))
    (bin_dir / "scontrol").write_text(SCONTROL)
    for tool in ("sbatch", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir, state


def _env(bin_dir: Path, state: Path, **extra: str) -> dict:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SBATCH_STUB_STATE": str(state),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]), **extra}
    for name in ("GPUS", "CPUS_PER_GPU", "SIGNAL_LEAD", "MAIN_PROCESS_PORT", "MAX_REQUEUES"):
        if name not in extra:
            env.pop(name, None)
    return env


SMALL = """extends: smoke
name: slurm
pretraining:
  tasks: {supervised: {runs: [{seed: 42, batch_size: 32}]}, contrastive: {runs: [{seed: 7, batch_size: 32}]}}
finetuning: {grid: {head: [linear], optimizer: [adamw]}}
"""


def test_slurm_zoo_survives_a_time_limit_requeue_and_resume(tmp_path):
    # Both tasks, one child each: a zoo trained from scratch by the stub cluster (every task a real training
    # process). The supervised backbone gets SIGTERM (its time limit) mid-run; it must requeue, resume and succeed
    # before its child starts, and every model must end complete.
    (tmp_path / "my zoos").mkdir()
    blueprint = tmp_path / "my zoos" / "slurm zoo.yaml"
    blueprint.write_text(SMALL)
    bp = load_blueprint(blueprint)
    out = tmp_path / "my zoos" / "slurm zoo"
    models = expand(bp)
    backbone = models[0]
    child = next(m for m in models if m.parent == backbone.name)
    assert len(models) == 4 and backbone.task == "supervised"

    bin_dir, state = _stub_bin(tmp_path)
    script = tmp_path / "my zoos" / "submit smoke.sh"
    assert cli_main(["plan", str(blueprint), "--slurm", str(script), "--out", str(out)]) == 0
    text = script.read_text()
    assert "\n#SBATCH " not in text and "SBATCH_ARGS" in text and "training/train.py" not in text
    env = _env(bin_dir, state, SBATCH_ARGS="--partition=test --time=0:30:00")
    proc = subprocess.run(["bash", str(script)], cwd="/", env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = sorted((json.loads(p.read_text()) for p in state.glob("job-*.json")), key=lambda j: j["id"])
    n_backbones = sum(m.stage == "pretraining" for m in models)
    assert len(calls) == 1 + n_backbones
    for c in calls:  # fixed resources first, the user's SBATCH_ARGS after them (so theirs win)
        o = c["options"]
        assert o[:4] == ["--parsable", "--cpus-per-task=8", "--signal=B:TERM@300", "--requeue"], o
        assert o[4:6] == ["--partition=test", "--time=0:30:00"], o
    assert _option(calls[1]["options"], "dependency") == "afterok:1000_0"  # ';stubcluster' stripped off the id
    assert "--kill-on-invalid-dep=yes" in calls[1]["options"]

    first_ckpt = layout.checkpoint_dir(layout.model_dir(out, backbone), 0)
    events = run_cluster(state, env, term=("1000_0", first_ckpt))
    failed = [(e["task"], e["log"][-3000:]) for e in events if e["code"] != 0 and not e["requeued"]]
    assert not failed, failed

    # The backbone's task: stopped by SIGTERM before its last epoch, requeued once, resumed, then complete.
    runs = [e for e in events if e["task"] == "1000_0"]
    assert [(e["restart"], e["requeued"]) for e in runs] == [(0, True), (1, False)], [e["log"] for e in runs]
    assert "SIGTERM" in runs[0]["log"] and "requeued" in runs[0]["log"] and runs[0]["code"] == 143
    assert layout.checkpoint_dir(Path(), backbone.epochs).name not in runs[0]["after"], runs[0]["after"]
    kept = {int(n.split("_")[1]) for n in runs[0]["after"] if n.startswith("checkpoint_")}
    assert 0 in kept  # the checkpoint the signal waited for survived the stop
    path = layout.model_dir(out, backbone)
    for epoch, ckpt in layout.checkpoints(path).items():  # kept ones untouched, the rest trained after the requeue
        assert ((ckpt / layout.WEIGHTS_FILE).stat().st_mtime < runs[0]["signalled"]) == (epoch in kept), epoch
    rows = [json.loads(line) for line in (path / layout.RESULT_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(backbone.epochs + 1))
    assert read_json(path / layout.CONFIG_FILE)["name"] == backbone.name

    # Dependants survived the requeue: the children's array ran only after the backbone's task succeeded.
    order = [e["task"] for e in events]
    assert order.index("1001_0") > order.index("1000_0", order.index("1000_0") + 1), order
    assert len(events) == len(models) + 1  # every task once, the requeued one twice
    for m in models:
        assert is_complete(out, m), m.name
    final = layout.checkpoint_dir(layout.model_dir(out, child), child.epochs)
    assert verify_checkpoint(final)["epoch"] == child.epochs

    # Every task its own rendezvous port, from its job id (a requeued task keeps its id, so its port).
    ports = {(e["task"], e["restart"]): int(re.search(r"port (\d+)", e["log"]).group(1)) for e in events}
    assert all(ports[(e["task"], e["restart"])] == 10000 + e["slurm_job_id"] % 20000 for e in events)
    assert len({p for (task, restart), p in ports.items() if restart == 0}) == len(models)


def test_slurm_resources_scale_with_gpus(tmp_path):
    bin_dir, state = _stub_bin(tmp_path)
    script = tmp_path / "zoo.sh"
    assert cli_main(["plan", "paper", "--slurm", str(script), "--out", "/scratch/zoo"]) == 0
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = _env(bin_dir, state, GPUS="4", CPUS_PER_GPU="6", SIGNAL_LEAD="900")
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = sorted((json.loads(p.read_text()) for p in state.glob("job-*.json")), key=lambda j: j["id"])
    assert len(calls) == 11 and len(calls[0]["script_args"]) == 4 + 10
    for c in calls:
        assert c["options"][1:4] == ["--cpus-per-task=24", "--signal=B:TERM@900", "--requeue"]
        assert "--gres=gpu:4" in c["options"] and "--time=48:00:00" in c["options"]  # the default SBATCH_ARGS
        assert c["script_args"][3] == "4"
    assert [_option(c["options"], "array") for c in calls] == ["0-9"] + ["0-23"] * 10
    assert [_option(c["options"], "dependency") for c in calls[1:]] == [f"afterok:1000_{i}" for i in range(10)]
    body = calls[0]["script"]
    assert "--multi_gpu" in body and '--main_process_port "$PORT"' in body and "scontrol requeue" in body
    assert subprocess.run(["bash", "-n"], input=body, text=True).returncode == 0
