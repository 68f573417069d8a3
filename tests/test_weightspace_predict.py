"""`vitzoo predict`: metrics, the token transformer learns a planted property, and a run on the published smoke zoo
from the local Hub (stats from streamed weights, sketches from the metadata) with its controls, folds and files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from vitzoo_hf.weightspace.predict import MARGIN, fit_transformer, kendall_tau, r2, run_predict, summary_rows
from vitzoo_hf.weightspace.representations import tokenize


def test_metrics_match_the_libraries():
    from scipy.stats import kendalltau
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    p = y + rng.normal(scale=0.5, size=50)
    assert r2(y, p) == pytest.approx(r2_score(y, p))
    assert kendall_tau(y, p) == pytest.approx(kendalltau(y, p).statistic)
    assert kendall_tau(y, np.zeros(50)) == 0.0  # a constant ranks nothing
    assert r2(y, np.full(50, y.mean())) == pytest.approx(0.0)


def test_margin_rule():
    base = {"target": "t", "kind": "numeric", "features": "stats", "n": 10, "tau": 0.0, "control": ""}
    rows = [{**base, "method": "ridge", "r2": 0.5}, {**base, "method": "ridge", "r2": 0.45, "control": "shuffled"},
            {**base, "method": "gbt", "r2": -0.2}, {**base, "method": "gbt", "r2": -0.5, "control": "shuffled"},
            {**base, "method": "trivial", "features": "-", "r2": -0.4}]
    table = {r["method"]: r for r in summary_rows(rows)}
    assert not table["ridge"]["predictable"]  # 0.05 over its shuffled control: under the margin
    assert table["ridge"]["margin"] == pytest.approx(0.05)
    assert not table["gbt"]["predictable"]  # 0.2 over both controls, but R² below zero
    rows[1]["r2"] = 0.5 - MARGIN - 0.01
    assert {r["method"]: r for r in summary_rows(rows)}["ridge"]["predictable"]


def test_token_transformer_learns_a_planted_property():
    """Weight scale is visible in every token: a meta-model that learns anything gets R² well above 0."""
    g = torch.Generator().manual_seed(0)
    scales = torch.rand(72, generator=g) * 2 + 0.5
    tokens = []
    for s in scales:
        sd = {"layers.0.mlp.fc1.weight": torch.randn(16, 8, generator=g) * s, "layers.0.mlp.fc1.bias": torch.zeros(16),
              "layers.0.mlp.fc2.weight": torch.randn(8, 16, generator=g), "layernorm.weight": torch.ones(8)}
        t = tokenize(sd, 8)
        tokens.append({"x": t.tokens.half(), "layer": t.layer, "position": t.position})
    y = scales.numpy().astype(np.float64)
    train, test = np.arange(48), np.arange(48, 72)
    pred, = fit_transformer(tokens, [("numeric", y)], train, test, seed=0, epochs=40, sample_tokens=32)
    assert r2(y[test], pred) > 0.6


@pytest.fixture(scope="module")
def predicted(published_smoke, tmp_path_factory):
    from vitzoo_hf.hub import configure_clients

    out = tmp_path_factory.mktemp("predict")
    with configure_clients(published_smoke.endpoint, published_smoke.token, local=True):
        result = run_predict(published_smoke.meta, out, targets=["accuracy", "ggap", "head", "optimizer", "task"],
                             transformer_epochs=3, progress=False)
    return result, out


def test_predict_from_the_hub_reports_every_target_method_and_control(predicted):
    result, out = predicted
    table = result["results"]
    combos = {(r["target"], r["method"], r["features"]) for r in table}
    for t in ("accuracy", "ggap", "head", "optimizer"):
        for method, feats in (("ridge", "stats"), ("gbt", "stats"), ("ridge", "sketch"), ("gbt", "sketch"),
                              ("transformer", "tokens")):
            assert (t, method, feats) in combos, (t, method, feats)
    assert all(np.isfinite(r["shuffled"]) and np.isfinite(r["trivial"]) for r in table)
    for r in table:
        if r["metric"] == "r2":
            assert r["trivial"] <= 1e-9  # the training mean cannot beat the held-out mean
            assert "tau" in r
        else:
            assert 0.0 <= r["score"] <= 1.0
        assert r["predictable"] == (r["margin"] >= MARGIN)
    # smoke has one backbone per task: a held-out lineage's task never occurs in training, so it is not tested
    assert any(n.startswith("task:") and "one held-out group only" in n for n in result["notes"])
    assert "task" not in {r["target"] for r in table}
    # a linear and an MLP head differ in their weights' statistics: ridge on stats reads the head type off them
    head = next(r for r in table if (r["target"], r["method"], r["features"]) == ("head", "ridge", "stats"))
    assert head["score"] >= 0.9 and head["predictable"] and head["shuffled"] < head["score"]
    md = (out / "results.md").read_text()
    assert "| head | ridge | stats |" in md and f"{MARGIN:.2f}" in md
    assert (out / "predicted_vs_true.png").stat().st_size > 5000 and (out / "factors.png").stat().st_size > 5000


def test_predict_tests_every_lineage_once_on_a_model_that_never_saw_it(predicted, published_smoke):
    _, out = predicted
    folds = json.loads((out / "folds.json").read_text())["folds"]
    tested = [g for f in folds for g in f["test"]]
    assert sorted(tested) == sorted(set(tested)) == sorted({"smoke-vith32l2p8-16-con-s7-b32",
                                                           "smoke-vith32l2p8-16-sup-s42-b32"})
    assert all(not set(f["train"]) & set(f["test"]) for f in folds)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    per = {}
    for r in rows:
        assert r["name"].startswith(r["lineage"])  # smoke names: a fine-tune's name starts with its backbone's
        per.setdefault((r["target"], r["method"], r["features"]), []).append((r["name"], r["epoch"]))
    for key, items in per.items():
        assert len(items) == len(set(items)) == 24, key  # every fine-tune checkpoint predicted exactly once


def test_predict_refuses_bad_requests_in_one_line(smoke_all, tmp_path):
    from vitzoo_hf.errors import ZooError

    proc = subprocess.run([sys.executable, "-m", "vitzoo_hf.cli", "predict", str(smoke_all[1]), "--out",
                           str(tmp_path / "p"), "--target", "colour"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert proc.stderr.startswith("vitzoo: error: unknown target 'colour'") and proc.stderr.count("\n") == 1
    with pytest.raises(ZooError, match="can be predicted on this selection"):  # backbones: one head value (none)
        run_predict(smoke_all[1], tmp_path / "p", targets=["head"], where={"stage": "pretraining"}, progress=False)
    with pytest.raises(ZooError, match="unknown method"):
        run_predict(smoke_all[1], tmp_path / "p", methods=["svm"], progress=False)
    with pytest.raises(ZooError, match="unknown feature set 'pixels'"):
        run_predict(smoke_all[1], tmp_path / "p", features=["pixels"], progress=False)
    assert not (tmp_path / "p").exists()  # nothing half-written


def test_the_demo_predicts_from_evenly_spaced_checkpoints_on_the_chosen_features(smoke_all, tmp_path):
    from vitzoo_hf.demo import demo_predict_epochs

    assert demo_predict_epochs(25) == [0, 5, 10, 15, 20, 25] and demo_predict_epochs(2) == [0, 1, 2]
    assert demo_predict_epochs(50) == [0, 10, 20, 30, 40, 50] and len(demo_predict_epochs(7)) == 6
    result = run_predict(smoke_all[1], tmp_path / "p", targets=["head"], methods=["ridge"], epochs=[2],
                         features=["stats"], progress=False)
    rows = [r for r in result["results"] if r["method"] == "ridge"]
    assert rows and {r["features"] for r in rows} == {"stats"} and {r["n"] for r in rows} == {8}  # 8 fine-tunes
