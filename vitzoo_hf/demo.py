"""`vitzoo demo`: a whole zoo end to end on one machine, and a report a researcher wants to read.

    generate (resumable, every core) ─► local Hub (embedded, persisted under DIR/hub) ─► publish
        ─► lineage ─► averaging ─► analysis + findings (all three read only from the Hub) ─► DIR/report/index.{md,html}

Each stage records what it consumed in DIR/demo_state.json (the zoo's manifests, the metadata dataset's commit), so
a second run skips finished work and takes seconds; a stage interrupted (Ctrl-C, a crash, a full disk) leaves
what its own machinery makes resumable, and the same command continues from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitzoo_hf import layout
from vitzoo_hf.checkpoints import write_json_atomic
from vitzoo_hf.errors import ZooError

NAMESPACE = "vitzoo-demo"
STATE_FILE = "demo_state.json"
HINT_PORT = 8470  # `vitzoo hub serve`'s default port, used by the closing hints
# Rough stage durations on 2 CPU cores (seconds), for the time-left estimate before a stage has run once.
EXPECTED = {"smoke": {"generate": 15, "publish": 15, "analysis": 3, "lineage": 2, "averaging": 5, "weightspace": 20,
                      "report": 1},
            "mini": {"generate": 350, "publish": 80, "analysis": 3, "lineage": 70, "averaging": 180, "weightspace": 95,
                     "report": 1}}
# analysis after lineage and averaging: its findings check their results too
STAGES = ("generate", "publish", "lineage", "averaging", "analysis", "weightspace", "report")


@dataclass
class Demo:
    """Where a demo lives and what it has done; every stage reads and writes through this."""

    out: Path
    blueprint: str
    progress: bool = True
    state: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def zoo_dir(self) -> Path:
        return self.out / "zoo"

    @property
    def hub_dir(self) -> Path:
        return self.out / "hub"

    @property
    def report_dir(self) -> Path:
        return self.out / "report"

    def load(self) -> None:
        path = self.out / STATE_FILE
        if path.exists():
            try:
                self.state = json.loads(path.read_text())
            except ValueError:
                self.state = {}  # ours, rebuilt by rerunning the stages (each is idempotent)

    def save(self) -> None:
        write_json_atomic(self.out / STATE_FILE, json.dumps(self.state, indent=1, sort_keys=True))

    def done(self, stage: str, key: str) -> bool:
        return self.state.get(stage, {}).get("key") == key

    def mark(self, stage: str, key: str, **info: Any) -> None:
        self.state[stage] = {"key": key, **info}
        self.save()


def zoo_key(zoo_dir: Path) -> str:
    """A digest of every model's result.json (which lists each checkpoint's weights sha256): changes whenever a
    checkpoint is added or retrained, costs one small read per model."""
    h = hashlib.sha256()
    for path in sorted(zoo_dir.glob("**/" + layout.RESULT_FILE)):
        h.update(str(path.relative_to(zoo_dir)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _check_out_dir(out: Path) -> None:
    """Never write into (or later clean) a folder we did not make: an existing non-empty DIR must be a demo."""
    if out.exists() and not out.is_dir():
        raise ZooError(f"--out {out} is a file; choose a folder (it is created if missing)")
    if out.is_dir() and any(out.iterdir()) and not (out / STATE_FILE).exists() and not (out / "zoo").exists():
        raise ZooError(f"--out {out} is a non-empty folder that is not a vitzoo demo; choose an empty or new folder")


def _free_space_check(out: Path, blueprint: str) -> None:
    need = {"smoke": 50e6, "mini": 3e9}.get(blueprint, 3e9)  # mini: 1.1 GB of checkpoints, again in the Hub
    from vitzoo_hf.checks import nearest_existing

    probe = nearest_existing(out)
    free = shutil.disk_usage(probe).free
    if free < need:
        raise ZooError(f"only {free / 1e9:.2f} GB free under {probe}; the {blueprint} demo needs about "
                       f"{need / 1e9:.1f} GB: free some space or choose another --out")


class _Clock:
    """Per-stage progress lines with elapsed time and an estimate of what is left."""

    def __init__(self, demo: Demo, stages: tuple[str, ...]) -> None:
        self.demo, self.stages, self.t0 = demo, stages, time.perf_counter()
        seen = demo.state.get("_seconds", {})
        self.expected = {s: seen.get(s, EXPECTED.get(demo.blueprint, EXPECTED["mini"])[s]) for s in stages}

    def start(self, stage: str, skipped: bool) -> float:
        i = self.stages.index(stage)
        left = sum(self.expected[s] for s in self.stages[i:])
        verb = "up to date" if skipped else f"about {_fmt(left)} left in all"
        print(f"[{i + 1}/{len(self.stages)}] {stage} ({verb})", file=sys.stderr, flush=True)
        return time.perf_counter()

    def stop(self, stage: str, t: float, ran: bool) -> None:
        secs = time.perf_counter() - t
        self.demo.timings[stage] = secs
        if ran:
            self.demo.state.setdefault("_seconds", {})[stage] = round(secs, 1)


def _fmt(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def run_demo(out: str | Path = "vitzoo-demo", blueprint: str = "mini", progress: bool = True,
             jobs: int | None = None) -> Path:
    """Run (or finish, or refresh) the demo under `out`; return the report's index.html."""
    if blueprint not in EXPECTED:
        raise ZooError(f"--blueprint {blueprint!r} is not a demo blueprint; choose smoke (under a minute) or mini "
                       "(about 13 min)")
    out = Path(out).expanduser().resolve()
    _check_out_dir(out)
    _free_space_check(out, blueprint)
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(out, blueprint, progress)
    if not progress:
        import datasets

        datasets.disable_progress_bars()
    demo.load()
    clock = _Clock(demo, STAGES)
    stage = "generate"
    try:
        key = _generate(demo, clock, progress, jobs)
        from vitzoo_hf.hub import local_hub

        with local_hub(demo.hub_dir, user=NAMESPACE) as hub:
            stage = "publish"
            meta_repo, meta_sha = _publish(demo, clock, key, hub.endpoint, progress)
            for stage, fn in (("lineage", _lineage), ("averaging", _averaging), ("analysis", _analysis),
                              ("weightspace", _weightspace)):
                _cached_stage(demo, clock, stage, meta_sha, lambda fn=fn: fn(demo, meta_repo))
            stage = "report"
            key = json.dumps([meta_sha, *(demo.state[s]["key"] for s in STAGES[2:-1])])
            index = demo.report_dir / "index.html"
            skipped = demo.done(stage, key) and index.is_file()
            t = clock.start(stage, skipped=skipped)
            if not skipped:
                from vitzoo_hf.report import write_report

                index = write_report(demo, meta_repo)
                demo.mark(stage, key)
            clock.stop(stage, t, ran=not skipped)
    except KeyboardInterrupt:
        demo.save()
        raise ZooError(f"interrupted during {stage}; everything finished so far is kept: run the same command again "
                       "to continue from there") from None
    except OSError as err:
        if err.errno == 28:  # ENOSPC
            raise ZooError(f"the disk filled up during {stage} ({err.filename or out}); free some space and run the "
                           "same command again to continue") from None
        raise
    demo.save()
    write_json_atomic(demo.report_dir / "timings.json", json.dumps(demo.timings, indent=1))
    _print_next_steps(demo, meta_repo, index)
    return index


def _generate(demo: Demo, clock: _Clock, progress: bool, jobs: int | None) -> str:
    from vitzoo_hf.blueprint import expand, load_blueprint
    from vitzoo_hf.checkpoints import is_complete

    bp = load_blueprint(demo.blueprint)
    complete = all(is_complete(demo.zoo_dir, m) for m in expand(bp))
    t = clock.start("generate", skipped=complete)
    if not complete:
        from vitzoo_hf.runner import generate

        generate(demo.blueprint, demo.zoo_dir, progress=progress, **_jobs_kwargs(jobs))
    clock.stop("generate", t, ran=not complete)
    return zoo_key(demo.zoo_dir)


def _jobs_kwargs(jobs: int | None) -> dict[str, Any]:
    """Every core: several models at once where the runner supports it."""
    import inspect

    from vitzoo_hf.runner import generate

    if "jobs" not in inspect.signature(generate).parameters:
        return {}
    return {"jobs": jobs or max(1, (os.cpu_count() or 1))}


def _publish(demo: Demo, clock: _Clock, key: str, endpoint: str, progress: bool) -> tuple[str, str]:
    from huggingface_hub import HfApi

    from vitzoo_hf import metadata
    from vitzoo_hf.blueprint import load_blueprint

    bp = load_blueprint(demo.blueprint)
    meta_repo = f"{NAMESPACE}/{metadata.metadata_repo_name(bp.name)}"
    api = HfApi(endpoint=endpoint)

    def remote_sha() -> str | None:
        try:
            return api.dataset_info(meta_repo).sha
        except Exception:  # not published yet
            return None

    sha = remote_sha()
    skipped = demo.done("publish", key) and sha is not None and demo.state["publish"].get("sha") == sha
    t = clock.start("publish", skipped=skipped)
    if not skipped:
        from vitzoo_hf.publish import publish

        report = publish(demo.zoo_dir, NAMESPACE, endpoint=endpoint, progress=progress)
        sha = remote_sha()
        demo.mark("publish", key, sha=sha, summary=report.summary())
    clock.stop("publish", t, ran=not skipped)
    return meta_repo, sha or ""


def _cached_stage(demo: Demo, clock: _Clock, stage: str, key: str, fn: Callable[[], dict[str, Any]]) -> dict:
    skipped = demo.done(stage, key) and (demo.report_dir / stage).is_dir()
    t = clock.start(stage, skipped=skipped)
    if not skipped:
        info = fn()
        demo.mark(stage, key, **info)
    clock.stop(stage, t, ran=not skipped)
    return demo.state[stage]


def _analysis(demo: Demo, meta_repo: str) -> dict[str, Any]:
    from vitzoo_hf.analysis.run import analyze

    out = demo.report_dir / "analysis"
    written = analyze(meta_repo, out, update_metadata=False, progress=demo.progress,
                      averaging=demo.report_dir / "averaging", lineage=demo.report_dir / "lineage")
    return {"files": len(written)}


def _lineage(demo: Demo, meta_repo: str) -> dict[str, Any]:
    from vitzoo_hf.lineage.report import run_table3

    draws = 3 if demo.blueprint == "smoke" else 5
    result = run_table3(meta_repo, demo.report_dir / "lineage", draws=draws, seed=0, progress=demo.progress)
    return {"skipped": list(result.get("skipped") or [])}


def _weightspace(demo: Demo, meta_repo: str) -> dict[str, Any]:
    """`vitzoo predict` on the published zoo: every target against its controls, lineages held out. The demo runs
    the ridge and gradient-boosted baselines on the per-layer statistics, six checkpoints per fine-tune; the token
    transformer (16 CPU-minutes on mini) and the sketch features (more than half of the stage's time, 244 s with
    them and 106 s without, for gradient boosting over 720 columns; no target predictable from them on mini) are
    left to `vitzoo predict`, which runs every method on every feature set and checkpoint."""
    from vitzoo_hf.blueprint import load_blueprint
    from vitzoo_hf.weightspace.predict import report_section

    epochs = demo_predict_epochs(load_blueprint(demo.blueprint).finetuning.epochs)
    return report_section(meta_repo, demo.report_dir / "weightspace", progress=demo.progress,
                          methods=DEMO_PREDICT_METHODS, epochs=epochs, features=DEMO_PREDICT_FEATURES)


DEMO_PREDICT_METHODS = ("ridge", "gbt")
DEMO_PREDICT_FEATURES = ("stats",)


def demo_predict_epochs(epochs: int, samples: int = 6) -> list[int]:
    """The checkpoints per fine-tune the demo's weight-space study reads: `samples` epochs evenly spaced from the
    start to the last (all of them when there are fewer), so the data set spans training at a fixed size however
    long the schedule is. `vitzoo predict --epochs all` reads every one."""
    if epochs + 1 <= samples:
        return list(range(epochs + 1))
    return sorted({round(i * epochs / (samples - 1)) for i in range(samples)})


AVERAGING_METHODS = ("epochs", "soup", "greedy-soup", "rebasin")


def _averaging(demo: Demo, meta_repo: str) -> dict[str, Any]:
    from vitzoo_hf.averaging.report import run
    from vitzoo_hf.blueprint import load_blueprint

    epochs = load_blueprint(demo.blueprint).finetuning.epochs
    windows = sorted({min(w, epochs) for w in (2, 3, 5)})  # Fig. 2a at several windows; the paper's is 5
    summaries = {}
    for method in AVERAGING_METHODS:
        result = run(meta_repo, method, demo.report_dir / "averaging" / method, window=windows,
                     progress=demo.progress)
        summaries[method] = result["summary"]
    return {"summaries": summaries}


def next_steps(demo: Demo, meta_repo: str) -> list[str]:
    """Shell commands that work as printed for this demo's paths (tested): serve its Hub, load a model and the
    metadata from it, re-run one model's training on the demo's zoo folder (it finds the model complete and checks
    its recorded settings; point --out at a new folder holding its parent to retrain it), and re-check the
    findings."""
    import shlex

    from vitzoo_hf.blueprint import expand, load_blueprint

    child = next(m for m in expand(load_blueprint(demo.blueprint)) if m.stage == "finetuning")
    q = shlex.quote
    load = (f"from transformers import AutoModelForImageClassification as M; "
            f"m = M.from_pretrained('{NAMESPACE}/{child.name}', revision='epoch-001', trust_remote_code=True); "
            f"from datasets import load_dataset; "
            f"t = load_dataset('{meta_repo}', 'models', split='train').filter(lambda r: r['optimizer'] == 'sgd'); "
            "print(type(m).__name__, len(t), 'SGD models')")
    return [f"vitzoo hub serve --root {q(str(demo.hub_dir))} --port {HINT_PORT}",
            f"HF_ENDPOINT=http://127.0.0.1:{HINT_PORT} HF_HUB_DISABLE_XET=1 python -c {q(load)}",
            f"accelerate launch -m vitzoo_hf.training --blueprint {demo.blueprint} --model {child.name} "
            f"--out {q(str(demo.zoo_dir))}",
            f"vitzoo analyze {q(str(demo.zoo_dir))} --out {q(str(demo.out / 'analysis'))} "
            f"--averaging {q(str(demo.report_dir / 'averaging'))} --lineage {q(str(demo.report_dir / 'lineage'))}"]


def _print_next_steps(demo: Demo, meta_repo: str, index: Path) -> None:
    times = ", ".join(f"{s} {_fmt(demo.timings.get(s, 0))}" for s in STAGES)
    serve, load, train, analyze = next_steps(demo, meta_repo)
    print(f"\nDone ({times}). Report: {index}\n")
    print("Next: serve the demo's Hub (leave it running):")
    print(f"  {serve}")
    print("load a model and the metadata from it (in another shell):")
    print(f"  {load}")
    print("re-run one model's training on the demo's zoo (finds it complete and checks its settings):")
    print(f"  {train}")
    print("re-check the paper's findings from the zoo folder:")
    print(f"  {analyze}")
