"""Blueprints: the paper's zoo expands exactly; bad blueprints fail early with one clear line."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitzoo_hf.blueprint import MAX_REPO_NAME, expand, load_blueprint, shipped_blueprints
from vitzoo_hf.cli import main
from vitzoo_hf.errors import ZooError

SUPERVISED_RUNS = {(42, 256), (6312, 256), (6312, 512), (1957, 512), (2517, 512), (3753, 512), (7853, 512)}
CONTRASTIVE_RUNS = {(42, 96), (6312, 128), (2517, 128)}


def plan_json(capsys, ref: str) -> list[dict]:
    assert main(["plan", ref, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_paper_plan_has_the_papers_250_models(capsys):
    records = plan_json(capsys, "paper")
    assert len(records) == 250
    pre = [r for r in records if r["stage"] == "pretraining"]
    fine = [r for r in records if r["stage"] == "finetuning"]
    assert len(pre) == 10 and len(fine) == 240
    assert {(r["seed"], r["batch_size"]) for r in pre if r["task"] == "supervised"} == SUPERVISED_RUNS
    assert {(r["seed"], r["batch_size"]) for r in pre if r["task"] == "contrastive"} == CONTRASTIVE_RUNS
    assert Counter(r["task"] for r in pre) == {"supervised": 7, "contrastive": 3}
    assert all(r["dataset"] == "imagenet-1k" and r["epochs"] == 90 and r["lr"] == 1e-3 for r in pre)
    pre_names = {r["name"] for r in pre}
    children = Counter(r["parent"] for r in fine)
    assert set(children) == pre_names and set(children.values()) == {24}
    for parent in pre_names:
        combos = [(r["head"], r["optimizer"], r["lr"], r["head_seed"]) for r in fine if r["parent"] == parent]
        assert len(set(combos)) == 24 == len(combos)
        assert {c[0] for c in combos} == {"linear", "mlp"} and {c[1] for c in combos} == {"adamw", "sgd"}
        assert {c[2] for c in combos} == {3e-3, 1e-3, 1e-4} and len({c[3] for c in combos}) == 2
    assert all(r["dataset"] == "cifar100" and r["epochs"] == 50 and r["batch_size"] == 256
               and r["weight_decay"] == 0.0 for r in fine)
    assert all(r["momentum"] == 0.99 for r in fine if r["optimizer"] == "sgd")
    names = [r["name"] for r in records]
    assert len(set(names)) == 250
    assert all(len(n) <= MAX_REPO_NAME and "--" not in n for n in names)


def test_names_are_valid_hub_repo_ids_and_stable():
    from huggingface_hub.utils import validate_repo_id

    for ref in shipped_blueprints():
        models = expand(load_blueprint(ref))
        for m in models:
            validate_repo_id(f"zoo-org/{m.name}")
        assert [m.name for m in models] == [m.name for m in expand(load_blueprint(ref))]
    assert expand(load_blueprint("paper"))[1].name == "paper-vits16-224-sup-s42-b256-ft-linear-adamw-lr3e-3-h1"


def test_parents_come_before_children_and_factors_are_recorded():
    models = expand(load_blueprint("mini"))
    seen = set()
    for m in models:
        assert m.parent is None or m.parent in seen
        seen.add(m.name)
    assert len(models) == 75 and sum(m.stage == "finetuning" for m in models) == 72
    # Data seeds: a backbone's is its run seed; a fine-tune's depends on (parent, head seed) only.
    backbones = [m for m in models if m.stage == "pretraining"]
    assert all(m.data_seed == m.seed for m in backbones)
    kids = [m for m in models if m.stage == "finetuning"]
    by_group: dict[tuple, set[int]] = {}
    for k in kids:
        by_group.setdefault((k.parent, k.seed), set()).add(k.data_seed)
    assert all(len(seeds) == 1 for seeds in by_group.values())  # siblings sharing parent and head seed: one seed
    assert len(set.union(*by_group.values())) == len(by_group) == 3 * 2  # distinct otherwise


def test_smoke_covers_every_code_path():
    models = expand(load_blueprint("smoke"))
    assert {m.task for m in models} == {"supervised", "contrastive"}
    fine = [m for m in models if m.stage == "finetuning"]
    assert {m.head for m in fine} == {"linear", "mlp"} and {m.optimizer for m in fine} == {"adamw", "sgd"}


def test_plan_text_output(capsys):
    assert main(["plan", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "10 models" in out and "parent=smoke-" in out


def test_user_blueprint_extends_a_shipped_one(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"extends": "mini", "name": "mine",
                                    "architecture": {"hidden_size": 96, "num_attention_heads": 3},
                                    "finetuning": {"grid": {"lr": [5e-4]}}}))
    bp = load_blueprint(path)
    assert bp.architecture.hidden_size == 96 and bp.architecture.num_hidden_layers == 4
    models = expand(bp)
    assert len(models) == 3 + 3 * 8 and all(m.name.startswith("mine-vith96") for m in models)
    assert bp.finetuning.dataset.name == "digits"


BAD = [  # (patch to the smoke blueprint, text the one-line message must contain)
    ({"pretraining": {"epochs": 0}}, "pretraining.epochs"),
    ({"pretraining": {"lr": -1e-3}}, "pretraining.lr"),
    ({"finetuning": {"batch_size": 0}}, "finetuning.batch_size"),
    ({"finetuning": {"grid": {"optimizer": ["adam"]}}}, "'adam'"),
    ({"finetuning": {"grid": {"head": ["conv"]}}}, "'conv'"),
    ({"finetuning": {"grid": {"lr": []}}}, "finetuning.grid.lr"),
    ({"finetuning": {"grid": {"lr": [1e-3, 1e-3]}}}, "duplicate model name"),
    ({"pretraining": {"tasks": {"masked": {"runs": []}}}}, "unknown key 'pretraining.tasks.masked'"),
    ({"finetuning": {"dataset": {"name": "cifar1000"}}}, "cifar1000"),
    ({"architecture": {"hidden_szie": 64}}, "unknown key 'architecture.hidden_szie'"),
    ({"architecture": {"patch_size": 5}}, "architecture.patch_size"),
    ({"pretraining": {"tasks": {"supervised": {"runs": [{"seed": 1, "batch_size": -4}]}}}}, "batch_size"),
    ({"finetuning": {"epochs": "ten"}}, "finetuning.epochs"),
    ({"name": "Bad Name"}, "'Bad Name'"),
    ({"finetuning": {"grid": {"optimizer": "adamw"}}}, "finetuning.grid.optimizer"),
]


def _merge(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _smoke_data() -> dict:
    from importlib import resources

    return yaml.safe_load(resources.files("vitzoo_hf").joinpath("blueprints").joinpath("smoke.yaml").read_text())


@pytest.mark.parametrize(("patch", "needle"), BAD)
def test_bad_blueprints_fail_with_one_clear_line(tmp_path, capsys, patch, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_merge(_smoke_data(), patch)))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err


def test_bad_yaml_and_missing_file(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\narchitecture: [1, 2\n")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "invalid YAML at line" in err and err.count("\n") == 1
    assert main(["plan", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_process_exits_nonzero_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_merge(_smoke_data(), {"finetuning": {"grid": {"optimizer": ["adam"]}}})))
    proc = subprocess.run([sys.executable, "-m", "vitzoo_hf.cli", "plan", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "allowed: adamw, sgd" in proc.stderr


_KEYS = ["architecture", "pretraining", "finetuning"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(_KEYS), key=st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
       value=st.one_of(st.integers(-5, 0), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2)))
def test_property_any_corruption_gives_a_clean_error_or_a_valid_zoo(tmp_path_factory, section, key, value):
    """Setting any key to any junk value yields either a valid blueprint or exactly one ZooError line."""
    data = _smoke_data()
    data[section] = dict(data[section], **{key: value})
    path = Path(tmp_path_factory.mktemp("bp")) / "bp.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        bp = load_blueprint(path)
    except ZooError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    _check_expansion(bp, expand(bp))  # a draw that passed validation must expand like any valid blueprint


def _check_expansion(bp, models) -> None:
    """What every valid blueprint's expansion must satisfy, whatever its factors."""
    from vitzoo_hf.blueprint import TASKS, finetuned_name

    backbones = sum(len(getattr(bp.pretraining.tasks, t).runs) for t in TASKS)
    g = bp.finetuning.grid
    grid = {(h, o, lr, s) for h in g.head for o in g.optimizer for lr in g.lr for s in g.head_seed}
    assert len(models) == backbones * (1 + len(grid))
    names = [m.name for m in models]
    assert len(set(names)) == len(names) and max(map(len, names)) <= MAX_REPO_NAME
    position = {m.name: i for i, m in enumerate(models)}
    for m in models:
        record = m.to_record()
        assert json.loads(json.dumps(record)) == record and record["name"] == m.name
        if m.stage == "finetuning":
            assert position[m.parent] < position[m.name]  # parents first
            assert (m.head, m.optimizer, m.lr, m.seed) in grid
            assert finetuned_name(m.parent, m.head, m.optimizer, m.lr, m.seed) == m.name  # factors ↔ name
    children = Counter(m.parent for m in models if m.parent)
    assert set(children.values()) <= {len(grid)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.from_regex(r"[a-z][a-z0-9]{0,5}(-[a-z0-9]{1,7}){0,4}", fullmatch=True),  # valid, <= 38 chars
       runs=st.lists(st.tuples(st.integers(0, 2**31), st.sampled_from([16, 32, 64])), min_size=1, max_size=3,
                     unique=True),
       heads=st.lists(st.sampled_from(["linear", "mlp"]), min_size=1, unique=True),
       optimizers=st.lists(st.sampled_from(["adamw", "sgd"]), min_size=1, unique=True),
       lrs=st.lists(st.sampled_from([1e-1, 3e-2, 1e-3, 2.5e-4, 1e-5]), min_size=1, max_size=3, unique=True),
       head_seeds=st.lists(st.integers(0, 10**6), min_size=1, max_size=3, unique=True))
def test_property_valid_blueprints_expand_to_backbones_times_grid(tmp_path_factory, name, runs, heads, optimizers,
                                                                   lrs, head_seeds):
    data = _smoke_data()
    data["name"] = name
    data["pretraining"]["tasks"]["supervised"]["runs"] = [{"seed": s, "batch_size": b} for s, b in runs]
    data["finetuning"]["grid"] = {"head": heads, "optimizer": optimizers, "lr": lrs, "head_seed": head_seeds}
    path = Path(tmp_path_factory.mktemp("bp")) / "bp.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        bp = load_blueprint(path)
    except ZooError as err:  # the only refusal a valid grid can earn: a name over the Hub's limit
        assert f"more than the Hub's {MAX_REPO_NAME}" in str(err)
        return
    _check_expansion(bp, expand(bp))


def test_jobs_start_the_contrastive_backbones_first_then_the_rest_in_plan_order():
    from vitzoo_hf.runner import launch_order

    models = expand(load_blueprint("mini"))
    order = sorted(models, key=launch_order)
    backbones = [m for m in models if m.stage == "pretraining"]
    con = [m for m in backbones if m.task == "contrastive"]
    assert con and order[:len(con)] == con  # the longest runs never start last
    assert order[len(con):len(backbones)] == [m for m in backbones if m.task == "supervised"]
    assert order[len(backbones):] == [m for m in models if m.stage == "finetuning"]  # plan order kept
