"""Training on the smoke zoo: files, loading, distribution, resume after SIGKILL, corruption detection."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand, load_blueprint
from vitzoo_hf.checkpoints import is_complete, verify_checkpoint
from vitzoo_hf.cli import main as cli_main
from vitzoo_hf.errors import ZooError
from vitzoo_hf.runner import generate
from vitzoo_hf.training import train_model

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "training" / "train.py"), "--no-progress"]


@pytest.fixture
def smoke_zoo(smoke_all):
    """The supervised backbone and its four fine-tuned children."""
    bp, out = smoke_all
    return bp, [m for m in expand(bp) if m.task == "supervised"], out


def test_smoke_generates_completely_with_both_tasks(smoke_all):
    bp, out = smoke_all
    models = expand(bp)
    assert len(models) == 10 and all(is_complete(out, m) for m in models)
    assert {m.task for m in models if m.stage == "finetuning"} == {"supervised", "contrastive"}


def test_supervised_models_train_end_to_end(smoke_zoo):
    bp, models, out = smoke_zoo
    assert len(models) == 5
    for spec in models:
        path = layout.model_dir(out, spec)
        assert is_complete(out, spec)
        config = json.loads((path / "config.json").read_text())
        assert config["factors"] == spec.factors() and config["seeds"]["data"] == spec.data_seed
        assert {"torch", "transformers", "accelerate"} <= set(config["versions"])
        rows = [json.loads(line) for line in (path / "result.json").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(spec.epochs + 1))
        assert rows[0]["train_objective"] is None and all(r["train_objective"] > 0 for r in rows[1:])
        assert all(r["validation_examples"] == 64 for r in rows)
        ckpts = layout.checkpoints(path)
        assert list(ckpts) == list(range(spec.epochs + 1))
        for epoch, ckpt in ckpts.items():
            manifest = verify_checkpoint(ckpt)
            assert manifest["metrics"]["validation_accuracy"] == rows[epoch]["validation_accuracy"]
            assert rows[epoch]["weights_sha256"] == manifest["sha256"]["model.safetensors"]
            model = AutoModelForImageClassification.from_pretrained(ckpt)
            assert model.config.head_type == (spec.head or "linear")
            preds = load_file(str(ckpt / layout.PREDICTIONS_FILE))["predictions"]
            assert preds.shape == (64,)
            # optimizer state is only kept where a resume may need it
            assert (ckpt / layout.TRAINING_STATE_FILE).exists() == (epoch >= spec.epochs - 1)
        assert not list(path.glob(".*partial"))


def test_finetuning_starts_from_the_parents_final_backbone(smoke_zoo):
    bp, models, out = smoke_zoo
    parent, children = models[0], models[1:]
    final_dir = layout.checkpoint_dir(layout.model_dir(out, parent), parent.epochs)
    parent_final = load_file(str(final_dir / "model.safetensors"))
    heads: dict[str, list] = {}
    for child in children:
        start = load_file(str(layout.checkpoint_dir(layout.model_dir(out, child), 0) / "model.safetensors"))
        for key, value in start.items():
            if key.startswith("vit."):
                torch.testing.assert_close(value, parent_final[key], rtol=0, atol=0)
        heads.setdefault(child.head, []).append({k: v for k, v in start.items() if k.startswith("classifier")})
        final = load_file(str(layout.checkpoint_dir(layout.model_dir(out, child), child.epochs) / "model.safetensors"))
        assert not torch.equal(final["vit.layernorm.weight"], start["vit.layernorm.weight"])
    for same_seed in heads.values():  # adamw and sgd children share the head seed: same fresh head
        for key in same_seed[0]:
            assert torch.equal(same_seed[0][key], same_seed[1][key])


def test_completed_models_are_skipped(smoke_zoo):
    _, models, out = smoke_zoo
    before = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    assert generate("smoke", out, only=[m.name for m in models], progress=False) == []
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}


def _custom(tmp_path: Path, **patch) -> Path:
    data = {"extends": "smoke", "name": "t", **patch}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_two_process_run_counts_every_validation_example_once(tmp_path):
    bp_path = _custom(tmp_path, pretraining={"epochs": 1, "dataset": {"max_validation": 37},
                                             "tasks": {"contrastive": {"runs": []}}})
    bp = load_blueprint(bp_path)
    spec = expand(bp)[0]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *TRAIN[1:],
           "--blueprint", str(bp_path), "--model", spec.name, "--out", str(tmp_path / "zoo")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = layout.model_dir(tmp_path / "zoo", spec)
    config = json.loads((path / "config.json").read_text())
    assert config["distribution"]["num_processes"] == 2 and config["distribution"]["per_process_batch_size"] == 16
    rows = [json.loads(line) for line in (path / "result.json").read_text().splitlines()]
    assert [r["validation_examples"] for r in rows] == [37, 37]
    # The stored predictions are this model's, in data-set order: re-evaluate in one process and compare.
    from vitzoo_hf.data import load_splits
    from vitzoo_hf.recipe import image_transforms

    ckpt = layout.checkpoint_dir(path, 1)
    model = AutoModelForImageClassification.from_pretrained(ckpt).eval()
    val = load_splits("digits", 256, 37)["validation"]
    _, eval_tf = image_transforms(bp, bp.pretraining.tasks.supervised.augmentation)
    x = torch.stack([eval_tf(im) for im in val["image"]])
    with torch.no_grad():
        expected = model(pixel_values=x).logits.argmax(-1)
    stored = load_file(str(ckpt / layout.PREDICTIONS_FILE))["predictions"].long()
    assert torch.equal(stored, expected)
    acc = (expected == torch.tensor(val["label"])).float().mean().item()
    assert rows[1]["validation_accuracy"] == pytest.approx(acc)


@pytest.mark.parametrize("task", ["supervised", "contrastive"])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, task):
    other = "contrastive" if task == "supervised" else "supervised"
    bp_path = _custom(tmp_path, pretraining={"epochs": 4, "dataset": {"max_train": 512},
                                             "tasks": {other: {"runs": []}}})
    spec = expand(load_blueprint(bp_path))[0]
    assert spec.task == task
    args = ["--blueprint", str(bp_path), "--model", spec.name]
    subprocess.run([*TRAIN, *args, "--out", str(tmp_path / "a")], check=True, capture_output=True, timeout=600)

    killed = layout.model_dir(tmp_path / "b", spec)
    proc = subprocess.Popen([*TRAIN, *args, "--out", str(tmp_path / "b")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while 1 not in layout.checkpoints(killed) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not is_complete(tmp_path / "b", spec), "the run finished before it could be killed"
    subprocess.run([*TRAIN, *args, "--out", str(tmp_path / "b")], check=True, capture_output=True, timeout=600)

    uninterrupted = layout.model_dir(tmp_path / "a", spec)
    final = f"checkpoint_{spec.epochs:06d}/model.safetensors"
    assert (uninterrupted / final).read_bytes() == (killed / final).read_bytes()
    rows_a = [json.loads(line) for line in (uninterrupted / "result.json").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (killed / "result.json").read_text().splitlines()]
    assert [r["weights_sha256"] for r in rows_a] == [r["weights_sha256"] for r in rows_b]
    assert [r["validation_loss"] for r in rows_a] == [r["validation_loss"] for r in rows_b]


def test_corrupted_checkpoint_is_detected_and_named(tmp_path, capsys):
    bp_path = _custom(tmp_path, pretraining={"epochs": 1, "tasks": {"contrastive": {"runs": []}}})
    bp = load_blueprint(bp_path)
    parent, child = expand(bp)[:2]
    train_model(bp, parent, tmp_path / "zoo", progress=False)
    weights = layout.checkpoint_dir(layout.model_dir(tmp_path / "zoo", parent), 1) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ZooError, match="corrupted"):
        verify_checkpoint(weights.parent)
    assert cli_main(["generate", str(bp_path), "--out", str(tmp_path / "zoo"), "--only", child.name]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and str(weights) in errors[0] and "sha256" in errors[0], err
    weights.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(ZooError, match="corrupted"):
        verify_checkpoint(weights.parent)


def test_generate_rejects_unknown_models_and_missing_parents(tmp_path):
    with pytest.raises(ZooError, match="not in blueprint"):
        generate("smoke", tmp_path, only=["nope"], progress=False)
    child = expand(load_blueprint("smoke"))[1]
    with pytest.raises(ZooError, match="add the parent"):
        generate("smoke", tmp_path, only=[child.name], progress=False)


def test_slurm_script(tmp_path, capsys):
    script = tmp_path / "zoo.sbatch.sh"
    assert cli_main(["plan", "paper", "--slurm", str(script), "--out", "/scratch/zoo"]) == 0
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "--array=0-9" in text and text.count("--dependency=afterok:${PRE}_") == 10
    assert text.count("--array=0-23") == 10 and "-m vitzoo_hf.training" in text and "training/train.py" not in text


def test_damaged_files_and_bad_paths_give_one_clean_error(tmp_path, capsys):
    bp_path = _custom(tmp_path, pretraining={"epochs": 1, "tasks": {"contrastive": {"runs": []}}})
    bp = load_blueprint(bp_path)
    parent = expand(bp)[0]
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    assert cli_main(["generate", str(bp_path), "--out", str(a_file), "--only", parent.name]) == 2
    assert "not-a-dir" in capsys.readouterr().err
    train_model(bp, parent, tmp_path / "zoo", progress=False)
    path = layout.model_dir(tmp_path / "zoo", parent)
    (path / "result.json").write_text('{"epoch": 0, "train')  # truncated by a crash or an editor
    (layout.checkpoint_dir(path, 1) / "manifest.json").write_text("{")
    with pytest.raises(ZooError, match="manifest.json is damaged"):
        verify_checkpoint(layout.checkpoint_dir(path, 1))
    assert cli_main(["generate", str(bp_path), "--out", str(tmp_path / "zoo"), "--only", parent.name]) == 2
    err = capsys.readouterr().err
    assert "result.json is damaged" in err and "Traceback" not in err


def test_results_survive_a_crash_between_checkpoint_and_result_json(tmp_path):
    bp_path = _custom(tmp_path, pretraining={"epochs": 2, "tasks": {"contrastive": {"runs": []}}})
    bp = load_blueprint(bp_path)
    spec = expand(bp)[0]
    train_model(bp, spec, tmp_path / "zoo", progress=False)
    path = layout.model_dir(tmp_path / "zoo", spec)
    full = (path / "result.json").read_text()
    (path / "result.json").write_text("".join(full.splitlines(keepends=True)[:1]))  # rows 1, 2 never written
    assert not is_complete(tmp_path / "zoo", spec)
    before = (layout.checkpoint_dir(path, 2) / "model.safetensors").read_bytes()
    train_model(bp, spec, tmp_path / "zoo", progress=False)
    assert (path / "result.json").read_text() == full and is_complete(tmp_path / "zoo", spec)
    assert (layout.checkpoint_dir(path, 2) / "model.safetensors").read_bytes() == before  # nothing retrained


def test_changed_recipe_or_process_count_is_refused_and_deleting_a_bad_checkpoint_resumes(tmp_path):
    bp_path = _custom(tmp_path, pretraining={"epochs": 3, "tasks": {"contrastive": {"runs": []}}})
    bp = load_blueprint(bp_path)
    spec = expand(bp)[0]
    train_model(bp, spec, tmp_path / "zoo", progress=False)
    path = layout.model_dir(tmp_path / "zoo", spec)
    final = (layout.checkpoint_dir(path, 3) / "model.safetensors").read_bytes()

    tasks = {"contrastive": {"runs": []}, "supervised": {"augmentation": {"mixup_alpha": 0.2}}}
    edited = _custom(tmp_path, pretraining={"epochs": 3, "tasks": tasks})
    with pytest.raises(ZooError, match=r"other settings \(recipe"):
        generate(edited, tmp_path / "zoo", progress=False)

    # The advice for a damaged newest checkpoint: delete it and rerun; the previous one still has optimizer state.
    import shutil

    shutil.rmtree(layout.checkpoint_dir(path, 3))
    config = json.loads((path / "config.json").read_text())
    config["distribution"]["num_processes"] = 2
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ZooError, match="started with 2 process"):
        train_model(bp, spec, tmp_path / "zoo", progress=False)
    config["distribution"]["num_processes"] = 1
    (path / "config.json").write_text(json.dumps(config))
    train_model(bp, spec, tmp_path / "zoo", progress=False)
    assert (layout.checkpoint_dir(path, 3) / "model.safetensors").read_bytes() == final


def test_data_dependent_limits_fail_cleanly(tmp_path):
    bp_path = _custom(tmp_path, pretraining={"dataset": {"max_train": 5}, "tasks": {"contrastive": {"runs": []}}})
    spec = expand(load_blueprint(bp_path))[0]
    with pytest.raises(ZooError, match="max_train = 5 is below the number of classes"):
        generate(bp_path, tmp_path / "zoo", only=[spec.name], progress=False)
