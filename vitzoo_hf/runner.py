"""Running a zoo: every model not complete yet, parents first — in this process, through `accelerate launch`,
many models at once as subprocesses (`--jobs`), or as SLURM job arrays."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from vitzoo_hf import layout
from vitzoo_hf.blueprint import Blueprint, ModelSpec, expand, find_model, load_blueprint
from vitzoo_hf.checkpoints import is_complete
from vitzoo_hf.errors import ZooError
from vitzoo_hf.recipe import default_num_workers
from vitzoo_hf.training import check_settings, check_tracker, model_record, train_model

JOB_LOGS = ".logs"  # under the zoo directory: one log per model trained by a --jobs subprocess


def _launch_command(n: int) -> list[str]:
    # The precision is passed to the training module itself (--mixed-precision), the one rule on every path.
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--dynamo_backend", "no", "-m", "vitzoo_hf.training"]


def generate(ref: str | Path, out: str | Path, only: Iterable[str] | None = None, num_processes: int = 1,
             log_with: str | None = None, progress: bool = True, mixed_precision: str | None = None,
             num_workers: int | None = None, jobs: int = 1, devices: Sequence[str] | None = None) -> list[ModelSpec]:
    """Train every (selected) model of the blueprint that is not complete; return the models trained now.

    `jobs` > 1 (or `devices`) trains that many models at once, each in its own subprocess on its own device or
    share of the CPU cores (`run_jobs`); otherwise models train one after another in this process (or, with
    `num_processes` > 1, each through `accelerate launch` across that many processes). Before anything trains,
    the checks of `vitzoo check` (vitzoo_hf.checks) run; any problem stops it with one line each."""
    bp = load_blueprint(ref)
    out = Path(out)
    models = expand(bp)
    if only:
        names = {m.name for m in models}
        unknown = sorted(set(only) - names)
        if unknown:
            raise ZooError(f"--only names models not in blueprint '{bp.name}': {', '.join(unknown)}; "
                           f"list them with `vitzoo plan {bp.source}`")
        models = [m for m in models if m.name in set(only)]
        chosen = {m.name for m in models}
        for m in models:
            if m.parent and m.parent not in chosen and not is_complete(out, find_model(bp, m.parent)):
                raise ZooError(f"'{m.name}' needs its parent '{m.parent}', which is not trained; "
                               "add the parent to --only")
    if num_processes < 1:
        raise ZooError(f"--num-processes must be >= 1, got {num_processes}")
    check_tracker(log_with)
    if jobs < 1:
        raise ZooError(f"--jobs must be >= 1, got {jobs}")
    if num_workers is not None and num_workers < 0:
        raise ZooError(f"--num-workers must be >= 0, got {num_workers}")
    if devices is not None and (not devices or not all(d.strip() for d in devices)):
        raise ZooError(f"--devices must be a comma-separated list of device ids such as 0,1,2,3, got "
                       f"{','.join(devices)!r}")
    if num_processes > 1 and (jobs > 1 or devices):
        raise ZooError("--jobs/--devices (many models, one process each) and --num-processes (one model across "
                       "processes) do not combine; use one of them, or SLURM for many multi-GPU models")
    todo = []
    for m in models:
        if is_complete(out, m):  # skipped, but only if it is the model this blueprint describes
            check_settings(layout.model_dir(out, m), model_record(bp, m, None, m.batch_size), resuming=False)
        else:
            todo.append(m)
    if todo:  # fail in the first minute, not on day three: data, precision, disk, launcher (`vitzoo check`)
        from vitzoo_hf.checks import preflight

        problems, _ = preflight(bp, todo, out, mixed_precision=mixed_precision, num_processes=num_processes,
                                jobs=jobs, devices=devices)
        if problems:
            raise ZooError("\n".join([*problems, f"({len(problems)} problem(s) found before training; nothing was "
                                                  "written. `vitzoo check` lists them again)"]))
    if jobs > 1 or devices:
        report = run_jobs(bp, todo, out, jobs, devices, num_workers=num_workers, mixed_precision=mixed_precision,
                          log_with=log_with, progress=progress)
        if report.failed:
            raise ZooError(f"{len(report.failed)} of {len(todo)} models failed (reasons above, logs in "
                           f"{out / JOB_LOGS}); fix the cause and rerun the same command: finished models are "
                           "skipped, interrupted ones resume")
        return report.done
    for m in tqdm(todo, desc=f"zoo {bp.name}", unit="model", disable=not progress):
        if num_processes == 1:
            train_model(bp, m, out, log_with=log_with, progress=progress, mixed_precision=mixed_precision,
                        num_workers=num_workers)
        else:
            cmd = [*_launch_command(num_processes), "--blueprint", str(bp.source), "--model", m.name, "--out", str(out)]
            cmd += ["--log-with", log_with] if log_with else []
            cmd += ["--mixed-precision", mixed_precision] if mixed_precision else []
            cmd += ["--num-workers", str(num_workers)] if num_workers is not None else []
            if subprocess.run(cmd).returncode != 0:
                raise ZooError(f"training '{m.name}' failed in `{shlex.join(cmd)}` (see its output above)")
    return todo


@dataclass
class JobsReport:
    """What `run_jobs` did: models trained, failed (with the reason), skipped (because a parent failed)."""

    done: list[ModelSpec] = field(default_factory=list)
    failed: list[tuple[ModelSpec, str]] = field(default_factory=list)
    skipped: list[tuple[ModelSpec, str]] = field(default_factory=list)

    def summary(self, seconds: float, jobs: int) -> str:
        lines = [f"vitzoo generate: {len(self.done)} done, {len(self.failed)} failed, {len(self.skipped)} skipped "
                 f"in {seconds:.0f} s with {jobs} job(s)"]
        lines += [f"  failed  {m.name}: {reason}" for m, reason in self.failed]
        lines += [f"  skipped {m.name}: {reason}" for m, reason in self.skipped]
        return "\n".join(lines)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries: that variable's list when it is set (ids
    or UUIDs, in its order), else every device CUDA reports; none without CUDA."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def job_devices(jobs: int, devices: Sequence[str] | None, visible: Sequence[str]) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each of `jobs` slots: round-robin over `devices` if given, else over the
    visible GPUs (so `--jobs 8` on a 4-GPU node puts two jobs on each, not eight on GPU 0); None (CPU threads
    only) where there is no GPU."""
    pool = [d.strip() for d in devices] if devices else list(visible)
    return [pool[k % len(pool)] if pool else None for k in range(jobs)]


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def launch_order(m: ModelSpec) -> tuple[bool, bool]:
    """Sort key (stable: plan order within a class): backbones first, since each unlocks its children, and among
    them the contrastive ones (two views per image: the longest runs) first, so that no long backbone starts last
    and leaves its children waiting while the other slots idle."""
    backbone = m.stage == "pretraining"
    return not backbone, backbone and m.task != "contrastive"


def run_jobs(bp: Blueprint, todo: Sequence[ModelSpec], out: Path, jobs: int, devices: Sequence[str] | None = None,
             num_workers: int | None = None, mixed_precision: str | None = None, log_with: str | None = None,
             progress: bool = True) -> JobsReport:
    """Train `todo` with up to `jobs` subprocesses at once (`python -m vitzoo_hf.training`, one model each).

    A model starts as soon as its parent is complete; backbones go first, since each unlocks its children. Job
    slot k runs on `job_devices(...)[k]` (CUDA_VISIBLE_DEVICES: round-robin over `devices`, else over the visible
    GPUs) with cores // jobs torch threads. A failed model does not stop the others; its children are skipped. Each
    model's output goes to `out/.logs/NAME.log`; its last line is the reason reported for a failure. Ctrl-C
    (SIGINT) is passed once to every running job, which stops cleanly and resumes on the next run."""
    cores = available_cores()
    threads = max(1, cores // jobs)
    slot_device = job_devices(jobs, devices, visible_gpus())
    if num_workers is None:
        num_workers = bp.num_workers if bp.num_workers is not None else default_num_workers(jobs)
    logs = out / JOB_LOGS
    logs.mkdir(parents=True, exist_ok=True)
    names = {m.name for m in todo}
    pending = sorted(todo, key=launch_order)
    state: dict[str, str] = {}
    running: dict[int, tuple[_Worker, ModelSpec, float]] = {}  # slot -> (worker, model, start)
    report = JobsReport()
    t_start = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"zoo {bp.name} ({jobs} jobs)", unit="model", disable=not progress)

    workers: dict[int, _Worker] = {}  # slot -> its long-lived training process

    def launch(m: ModelSpec, slot: int) -> None:
        argv = ["--blueprint", str(bp.source), "--model", m.name, "--out", str(out), "--no-progress",
                "--num-workers", str(num_workers)]
        argv += ["--log-with", log_with] if log_with else []
        argv += ["--mixed-precision", mixed_precision] if mixed_precision else []
        if slot not in workers or not workers[slot].alive():
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            if slot_device[slot] is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot_device[slot]
            workers[slot] = _Worker(env, logs / f".worker-{slot}.log")
        log = logs / f"{m.name}.log"
        log.write_text(f"$ {shlex.join([sys.executable, '-m', 'vitzoo_hf.training', *argv])}\n")
        workers[slot].send(argv, log)
        running[slot] = (workers[slot], m, time.perf_counter())

    def finish(slot: int, code: int) -> None:
        _, m, t0 = running.pop(slot)
        if code == 0:
            state[m.name] = "done"
            report.done.append(m)
            if progress:
                bar.write(f"done    {m.name} ({time.perf_counter() - t0:.0f} s)")
        else:
            state[m.name] = "failed"
            reason = f"{_last_line(logs / f'{m.name}.log')} (exit {code}; log {logs / f'{m.name}.log'})"
            report.failed.append((m, reason))
            bar.write(f"FAILED  {m.name}: {reason}")
        bar.update()

    try:
        while pending or running:
            for m in list(pending):  # children of a failed or skipped parent are skipped
                if m.parent in names and state.get(m.parent) in ("failed", "skipped"):
                    pending.remove(m)
                    state[m.name] = "skipped"
                    report.skipped.append((m, f"its parent {m.parent} {state[m.parent]}"))
                    bar.update()
            free = [k for k in range(jobs) if k not in running]
            for m in list(pending):
                if not free:
                    break
                if m.parent not in names or state.get(m.parent) == "done":
                    pending.remove(m)
                    launch(m, free.pop(0))
            time.sleep(0.2)
            for slot, (worker, _, _) in list(running.items()):
                if (code := worker.result()) is not None:
                    finish(slot, code)
    except KeyboardInterrupt:
        for worker in workers.values():
            if worker.alive():
                worker.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        for worker in workers.values():
            try:
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()  # checkpoints are atomic: even this loses at most the epoch in progress
                worker.proc.wait()
        bar.close()
        stopped = ", ".join(m.name for _, m, _ in running.values())
        print(f"{report.summary(time.perf_counter() - t_start, jobs)}\n  interrupted: {stopped or 'none running'}; "
              "rerun the same command to resume", file=sys.stderr)
        raise
    finally:
        for worker in workers.values():
            worker.close()
    bar.close()
    print(report.summary(time.perf_counter() - t_start, jobs))
    return report


class _Worker:
    """One --jobs slot: a long-lived `python -m vitzoo_hf.runner --worker` that trains the models it is sent one
    after another, so each model skips interpreter and library start-up (about 5 s on 2 cores, as long as a whole
    mini fine-tune). Each model's output goes to its own log; its exit code comes back on a status pipe. A worker
    that dies (a crash, Ctrl-C) reports its exit status for the model it was running and is replaced."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        read, write = os.pipe()
        with open(log, "w") as out:
            # Own session: a terminal's Ctrl-C reaches only the scheduler, which passes it on exactly once.
            self.proc = subprocess.Popen([sys.executable, "-m", "vitzoo_hf.runner", "--worker"],
                                         stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True,
                                         env={**env, "VITZOO_STATUS_FD": str(write)}, pass_fds=(write,),
                                         start_new_session=True)
        os.close(write)
        os.set_blocking(read, False)
        self.status, self.buffer = read, b""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, argv: list[str], log: Path) -> None:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.proc.stdin.flush()

    def result(self) -> int | None:
        """The running model's exit code once it has finished, else None."""
        try:
            self.buffer += os.read(self.status, 64)
        except BlockingIOError:
            pass
        if b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            return int(line)
        code = self.proc.poll()
        return None if code is None else (code or 1)  # died mid-model: a failure, whatever the status

    def close(self) -> None:
        if self.alive():
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        os.close(self.status)


def _worker() -> int:
    """The body of a --jobs worker: one JSON request per line on stdin, `{"argv": [...], "log": PATH}`; trains
    the model with `vitzoo_hf.training.main(argv)`, its output appended to PATH, and writes the exit code as one
    line to the status pipe."""
    import traceback

    from vitzoo_hf.training import main as train_main

    status = os.fdopen(int(os.environ["VITZOO_STATUS_FD"]), "w", buffering=1)
    for line in sys.stdin:
        request = json.loads(line)
        with open(request["log"], "a") as log:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                code = train_main(request["argv"])
            except Exception:  # a bug, not a user error: its traceback goes to the model's log
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
        status.write(f"{code}\n")
        if code == 130:  # interrupted: stop, the scheduler is shutting down
            return 130
    return 0


# The body of every array task (a static script: its values come as arguments, so nothing needs escaping).
# Each task gets its own rendezvous port, from its job id; SLURM's `--signal=B:TERM@LEAD` reaches this shell,
# which stops the training process (it finishes a checkpoint it is writing, then exits) and requeues the task
# under the same job id, so its afterok dependants keep waiting for it; the requeued task resumes from the last
# complete epoch (the epoch in progress is trained again, the same batches: `vitzoo_hf.training`).
SLURM_TASK = r"""#!/bin/bash
# vitzoo: one model per array task. Arguments: PYTHON BLUEPRINT OUT GPUS MODEL...
set -uo pipefail
PYTHON=$1; BLUEPRINT=$2; OUT=$3; GPUS=$4; shift 4
MODELS=("$@")
NAME=${MODELS[$SLURM_ARRAY_TASK_ID]}
# A port of its own for the process group's rendezvous: distinct for any two tasks whose job ids are less than
# 20000 apart (every task has its own SLURM_JOB_ID), below Linux's ephemeral range; MAIN_PROCESS_PORT overrides.
PORT=${MAIN_PROCESS_PORT:-$((10000 + SLURM_JOB_ID % 20000))}
TASK_ID=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
echo "vitzoo: task $TASK_ID (job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}): $NAME, port $PORT"
if [ "$GPUS" -gt 1 ]; then
  CMD=("$PYTHON" -m accelerate.commands.launch --multi_gpu --num_processes "$GPUS" --num_machines 1
       --main_process_port "$PORT" --dynamo_backend no -m vitzoo_hf.training)
else  # one process: no launcher in between, so SIGTERM reaches the training process itself
  CMD=("$PYTHON" -m vitzoo_hf.training)
fi
PREEMPTED=""; PID=""
stop() {
  PREEMPTED=1
  echo "vitzoo: SIGTERM (time limit near): stopping $NAME to requeue it"
  kill -TERM "$PID" 2>/dev/null
}
trap stop TERM
"${CMD[@]}" --blueprint "$BLUEPRINT" --model "$NAME" --out "$OUT" --no-progress &
PID=$!
while :; do  # a trapped signal interrupts `wait`: wait again until the training process has really exited
  wait "$PID"; CODE=$?
  kill -0 "$PID" 2>/dev/null || break
done
if [ -n "$PREEMPTED" ]; then
  if [ "${SLURM_RESTART_COUNT:-0}" -ge "${MAX_REQUEUES:-20}" ]; then
    echo "vitzoo: $NAME was requeued ${SLURM_RESTART_COUNT} times (MAX_REQUEUES); raise --time," \
         "or rerun the submitter: complete models are skipped"
    exit 1
  fi
  if scontrol requeue "$TASK_ID"; then
    echo "vitzoo: requeued $NAME; it resumes from its last complete epoch"
  else
    echo "vitzoo: scontrol requeue failed; rerun the submitter (complete models are skipped, this one resumes)"
  fi
  exit 143
fi
exit "$CODE"
"""


def write_slurm_script(bp: Blueprint, models: Sequence[ModelSpec], script: str | Path, out: str | Path) -> Path:
    """An sbatch submitter: one array job for the backbones, one per backbone for its children (afterok).

    Each array task (`SLURM_TASK`) trains one model: `python -m vitzoo_hf.training` for one GPU, `accelerate
    launch --multi_gpu --main_process_port PORT` (a port per task) for GPUS > 1. Every job asks for
    CPUS_PER_GPU × GPUS cores, is requeueable and gets SIGTERM SIGNAL_LEAD seconds before its time limit; a task
    that gets it stops, requeues itself and resumes, so a SimCLR backbone longer than one time limit finishes and
    its children, which wait on the task's job id, start when it does. Paths are passed as sbatch arguments, so a
    zoo folder or blueprint path may hold spaces.
    """
    script = Path(script)
    pre = [m for m in models if m.stage == "pretraining"]
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"# Regenerates the '{bp.name}' zoo ({len(models)} models) with SLURM job arrays: one array of pre-trainings,",
        "# then per backbone one array of its fine-tunes, started once that backbone succeeded (afterok).",
        "# Resources come from the environment (no #SBATCH lines to edit):",
        "#   GPUS          processes (GPUs) per model, default 1",
        "#   CPUS_PER_GPU  cores per GPU, default 8 (each job asks for CPUS_PER_GPU x GPUS)",
        "#   SBATCH_ARGS   extra sbatch arguments (they win over the ones above), default:",
        "#                 --gres=gpu:$GPUS --time=48:00:00",
        "#   SIGNAL_LEAD   seconds before the time limit at which a task checkpoints and requeues, default 300",
        "#   MAX_REQUEUES  requeues per task before it fails, default 20",
        "#   PYTHON        the interpreter that has vitzoo_hf, default: the one that wrote this script",
        f"# Run:  GPUS=4 SBATCH_ARGS='--partition=gpu --gres=gpu:4 --time=48:00:00' bash {q(script.name)}",
        "set -euo pipefail",
        f"BLUEPRINT={q(str(Path(bp.source).resolve()) if Path(bp.source).is_file() else bp.source)}",
        f"OUT={q(str(Path(out).resolve()))}",
        f'PYTHON="${{PYTHON:-{sys.executable}}}"',
        'GPUS="${GPUS:-1}"',
        'CPUS_PER_GPU="${CPUS_PER_GPU:-8}"',
        'SBATCH_ARGS="${SBATCH_ARGS:---gres=gpu:${GPUS} --time=48:00:00}"',
        'FIXED="--cpus-per-task=$((CPUS_PER_GPU * GPUS)) --signal=B:TERM@${SIGNAL_LEAD:-300} --requeue"',
        'TASK=$(mktemp); trap \'rm -f "$TASK"\' EXIT  # sbatch keeps its own copy of the job script',
        "cat > \"$TASK\" <<'VITZOO_TASK'",
        SLURM_TASK.rstrip("\n"),
        "VITZOO_TASK",
        "submit() {  # prints the job id (--parsable may append ';cluster')",
        '  local id; id=$(sbatch --parsable $FIXED $SBATCH_ARGS "$@"); echo "${id%%;*}"',
        "}",
    ]
    task_args = '"$TASK" "$PYTHON" "$BLUEPRINT" "$OUT" "$GPUS"'
    names = " ".join(q(m.name) for m in pre)
    lines += [f'PRE=$(submit --job-name {q(bp.name + "-pre")} --array=0-{len(pre) - 1} {task_args} {names})',
              'echo "pre-training: job $PRE"']
    for i, p in enumerate(pre):
        kids = [m.name for m in models if m.parent == p.name]
        if kids:
            lines.append(f'FT=$(submit --job-name {q(f"{bp.name}-ft{i}")} --dependency=afterok:${{PRE}}_{i} '
                         f'--kill-on-invalid-dep=yes --array=0-{len(kids) - 1} {task_args} '
                         f'{" ".join(q(k) for k in kids)})')
            lines.append(f'echo "fine-tuning children of {p.name}: job $FT"')
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


if __name__ == "__main__":
    sys.exit(_worker() if sys.argv[1:] == ["--worker"] else 2)
