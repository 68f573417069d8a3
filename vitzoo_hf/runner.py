"""Running a zoo: every model not complete yet, parents first — in this process, through `accelerate launch`,
or as SLURM job arrays."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from vitzoo_hf import layout
from vitzoo_hf.blueprint import Blueprint, ModelSpec, expand, find_model, load_blueprint
from vitzoo_hf.checkpoints import is_complete
from vitzoo_hf.errors import ZooError
from vitzoo_hf.training import check_settings, check_tracker, model_record, train_model


def _launch_command(n: int) -> list[str]:
    # The precision is passed to the training module itself (--mixed-precision), the one rule on every path.
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--dynamo_backend", "no", "-m", "vitzoo_hf.training"]


def generate(ref: str | Path, out: str | Path, only: Iterable[str] | None = None, num_processes: int = 1,
             log_with: str | None = None, progress: bool = True, mixed_precision: str | None = None) -> list[ModelSpec]:
    """Train every (selected) model of the blueprint that is not complete; return the models trained now."""
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
    todo = []
    for m in models:
        if is_complete(out, m):  # skipped, but only if it is the model this blueprint describes
            check_settings(layout.model_dir(out, m), model_record(bp, m, None, m.batch_size), resuming=False)
        else:
            todo.append(m)
    for m in tqdm(todo, desc=f"zoo {bp.name}", unit="model", disable=not progress):
        if num_processes == 1:
            train_model(bp, m, out, log_with=log_with, progress=progress, mixed_precision=mixed_precision)
        else:
            cmd = [*_launch_command(num_processes), "--blueprint", str(bp.source), "--model", m.name, "--out", str(out)]
            cmd += ["--log-with", log_with] if log_with else []
            cmd += ["--mixed-precision", mixed_precision] if mixed_precision else []
            if subprocess.run(cmd).returncode != 0:
                raise ZooError(f"training '{m.name}' failed in `{shlex.join(cmd)}` (see its output above)")
    return todo


def write_slurm_script(bp: Blueprint, models: Sequence[ModelSpec], script: str | Path, out: str | Path) -> Path:
    """An sbatch submitter: one array job for the backbones, one per backbone for its children (afterok)."""
    script = Path(script)
    pre = [m for m in models if m.stage == "pretraining"]
    lines = ["#!/bin/bash", f"# Regenerates the '{bp.name}' zoo ({len(models)} models) with SLURM job arrays.",
             "# Edit the #SBATCH resources below, then run:  bash " + script.name,
             "set -euo pipefail", f'BLUEPRINT={shlex.quote(str(bp.source))}', f"OUT={shlex.quote(str(out))}",
             'GPUS="${GPUS:-1}"', 'SBATCH_ARGS="${SBATCH_ARGS:---gres=gpu:${GPUS} --cpus-per-task=8 --time=48:00:00}"',
             "run_task() {  # the job body: one model per array task",
             "  cat <<EOF", "#!/bin/bash", "set -euo pipefail", "MODELS=($1)",
             'NAME=\\${MODELS[\\$SLURM_ARRAY_TASK_ID]}',
             'accelerate launch --multi_gpu --num_processes $GPUS --num_machines 1 --dynamo_backend no '
             'training/train.py --blueprint $BLUEPRINT --model \\$NAME --out $OUT',
             "EOF", "}"]
    names = " ".join(m.name for m in pre)
    lines += [f'PRE=$(run_task "{names}" | sbatch --parsable $SBATCH_ARGS --job-name {bp.name}-pre '
              f'--array=0-{len(pre) - 1})', 'echo "pre-training: job $PRE"']
    for i, p in enumerate(pre):
        kids = [m.name for m in models if m.parent == p.name]
        if kids:
            lines.append(f'FT=$(run_task "{" ".join(kids)}" | sbatch --parsable $SBATCH_ARGS --job-name '
                         f'{bp.name}-ft{i} --dependency=afterok:${{PRE}}_{i} --array=0-{len(kids) - 1})')
            lines.append(f'echo "fine-tuning children of {p.name}: job $FT"')
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script

