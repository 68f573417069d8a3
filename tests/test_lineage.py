"""Lineage prediction on synthetic weights: metrics on hand-made matrices, MoTHeR and our method on planted
trees, arborescence invariants, the Table 3 sub-zoo protocol."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitzoo_hf import lineage
from vitzoo_hf.errors import ZooError
from vitzoo_hf.lineage.metrics import score_adjacency
from vitzoo_hf.lineage.mother import MotherOptions, arborescence, kurtosis_scores, mother, prior_matrix
from vitzoo_hf.lineage.table3 import draw
from vitzoo_hf.lineage.weights import backbone

SHAPES = {"layers.0.attention.q_proj.weight": (32, 32), "layers.0.attention.o_proj.weight": (32, 32),
          "layers.0.mlp.fc1.weight": (64, 32), "layers.0.mlp.fc2.weight": (32, 64), "layernorm.weight": (32,)}


def planted_forest(n_roots=3, chains=2, length=4, seed=0, drift=0.0):
    """Heavy-tailed roots far apart; each child = parent + Gaussian step (which lowers kurtosis, as MoTHeR
    expects of fine-tuning), optionally with a drift shared by all chains of one root."""
    rng = np.random.default_rng(seed)
    models, edges = [], []
    for _ in range(n_roots):
        root = {k: rng.standard_t(3, size=s).astype(np.float32) for k, s in SHAPES.items()}
        r = len(models)
        models.append(root)
        shared = {k: drift * rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
        for _ in range(chains):
            parent = r
            for _ in range(length):
                child = {k: models[parent][k] + shared[k] + 0.3 * rng.standard_normal(s).astype(np.float32)
                         for k, s in SHAPES.items()}
                models.append(child)
                edges.append((parent, len(models) - 1))
                parent = len(models) - 1
    return models, edges


def test_metrics_on_hand_made_matrices():
    truth = np.zeros((4, 4), int)
    truth[0, 1] = truth[1, 2] = truth[1, 3] = 1
    pred = np.zeros((4, 4), int)
    pred[0, 1] = pred[1, 2] = pred[2, 3] = 1  # one right way, one wrong edge, one missed
    s = score_adjacency(pred, truth)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (2, 1, 1, 12)
    assert s["accuracy"] == pytest.approx(14 / 16)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    # a reversed edge is wrong twice (a false positive and a false negative)
    rev = lineage.score([(1, 0)], [(0, 1)], nodes=[0, 1])
    assert rev["f1"] == 0.0 and rev["accuracy"] == pytest.approx(2 / 4)
    assert lineage.score([(0, 1)], [(0, 1)], nodes=[0, 1])["f1"] == 1.0
    # the paper's arithmetic: 130 nodes, 120 true edges, 98 found -> acc 0.9974, F1 0.8167 (Table 3, epochs)
    nodes = list(range(130))
    true_edges = [(i, i + 1) for i in range(0, 130, 13) for i in range(i, i + 12)]
    pred_edges = true_edges[:98] + [(e[1], e[0]) for e in true_edges[98:]]
    s = lineage.score(pred_edges, true_edges, nodes)
    assert round(s["accuracy"], 4) == 0.9974 and round(s["f1"], 4) == 0.8167


def test_mother_recovers_a_planted_tree():
    models, edges = planted_forest()
    pred = mother(models, MotherOptions(n_clusters=3))
    assert lineage.score(pred, edges, list(range(len(models))))["f1"] == 1.0
    # number of trees estimated from the dendrogram
    assert sorted(mother(models, MotherOptions())) == sorted(edges)
    # kurtosis falls along every planted edge, so the reversed prior direction must do worse
    kurt = kurtosis_scores(models)
    assert all(kurt[c] < kurt[p] for p, c in edges)
    reversed_pred = mother(models, MotherOptions(n_clusters=3, direction="increase", lam=5.0))
    assert lineage.score(reversed_pred, edges, list(range(len(models))))["f1"] < 0.5


@pytest.mark.parametrize("variant", ["official", "modeltree"])
def test_mother_variants_run_and_find_the_clusters(variant):
    models, edges = planted_forest(seed=1)
    pred = mother(models, MotherOptions.variant(variant, n_clusters=3))
    roots = {0, 9, 18}
    # every predicted edge stays within one planted tree
    tree_of = {}
    for r in roots:
        for i in range(r, r + 9):
            tree_of[i] = r
    assert len(pred) == len(models) - 3 and all(tree_of[p] == tree_of[c] for p, c in pred)


def test_ours_recovers_planted_trees_with_shared_drift():
    for seed in range(3):
        models, edges = planted_forest(seed=seed, drift=0.2)
        order = np.random.default_rng(seed).permutation(len(models))
        shuffled = [models[i] for i in order]
        where = {int(old): new for new, old in enumerate(order)}
        pred = lineage.method("ours")(shuffled)
        s = lineage.score(pred, [(where[p], where[c]) for p, c in edges], list(range(len(models))))
        assert s["f1"] >= 0.9, (seed, s)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=9), st.integers(min_value=0, max_value=2**31 - 1), st.booleans())
def test_arborescence_is_a_spanning_tree(n, seed, with_ties):
    rng = np.random.default_rng(seed)
    dist = rng.integers(0, 3, (n, n)).astype(float) if with_ties else rng.random((n, n))
    dist = dist + dist.T
    cost = prior_matrix(dist, rng.random(n), lam=0.3)
    edges = arborescence(cost)
    children = [c for _, c in edges]
    assert len(edges) == n - 1
    assert all(p != c for p, c in edges)  # no self-loop
    assert len(set(children)) == len(children)  # at most one parent per node
    roots = set(range(n)) - set(children)
    assert len(roots) == 1
    # every node reaches the root by following parents (no cycle)
    parent = {c: p for p, c in edges}
    for node in range(n):
        seen = set()
        while node in parent:
            assert node not in seen
            seen.add(node)
            node = parent[node]
        assert node in roots


@settings(max_examples=15, deadline=None)
@given(st.integers(min_value=0, max_value=2**31 - 1), st.sampled_from(["mother", "mother-official", "ours"]))
def test_methods_give_each_node_at_most_one_parent(seed, name):
    rng = np.random.default_rng(seed)
    models = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
              for _ in range(int(rng.integers(2, 9)))]
    edges = lineage.method(name)(models)
    children = [c for _, c in edges]
    assert all(p != c for p, c in edges) and len(set(children)) == len(children)


def test_backbone_drops_the_head_and_prefix(tmp_path):
    import torch
    from safetensors.torch import save_file

    state = {"vit.layers.0.attention.q_proj.weight": torch.ones(4, 4), "classifier.0.weight": torch.ones(2, 4),
             "vit.embeddings.cls_token": torch.zeros(1, 1, 4, dtype=torch.bfloat16)}
    save_file(state, tmp_path / "model.safetensors")
    w = backbone(tmp_path / "model.safetensors")
    assert sorted(w) == ["embeddings.cls_token", "layers.0.attention.q_proj.weight"]
    assert all(v.dtype == np.float32 for v in w.values())
    with pytest.raises(ZooError, match="does not exist"):
        backbone(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ZooError, match="not a readable safetensors"):
        backbone(tmp_path / "bad.safetensors")


def test_predict_by_name_and_path(tmp_path):
    from safetensors.numpy import save_file

    models, edges = planted_forest(n_roots=1, chains=1, length=3)
    named = {}
    for i, m in enumerate(models):
        path = tmp_path / f"m{i}.safetensors"
        save_file({"vit." + k: v for k, v in m.items()}, path)
        named[f"m{i}"] = path
    pred = lineage.predict(named, "mother", n_clusters=1)
    assert sorted(pred) == [("m0", "m1"), ("m1", "m2"), ("m2", "m3")]


def _rows(n_backbones=3, epochs=6):
    rows = []
    for b in range(n_backbones):
        rows.append({"name": f"b{b}", "stage": "pretraining", "parent": None, "final_epoch": 4})
        for head in ("linear", "mlp"):
            for opt in ("adamw", "sgd"):
                for lr in (1e-3, 1e-4):
                    for hs in (1, 2):
                        rows.append({"name": f"b{b}-{head}-{opt}-{lr}-{hs}", "stage": "finetuning", "parent": f"b{b}",
                                     "head": head, "optimizer": opt, "lr": lr, "head_seed": hs, "final_epoch": epochs,
                                     "momentum": 0.9 if opt == "sgd" else None})
    return rows


@pytest.mark.parametrize("setting", ["epochs", "seed", "lr", "head", "optimizer"])
def test_table3_subzoo_structure(setting):
    rows = _rows()
    sub = draw(rows, setting, random.Random(0), n_pretrained=10, n_children=12)
    roots = [n for n in sub.nodes if n[0].startswith("b") and "-" not in n[0]]
    assert len(roots) == 3  # only 3 backbones available
    expected_children = 6 if setting == "epochs" else 12  # a chain holds at most the 6 trained epochs
    assert len(sub.nodes) == 3 * (1 + expected_children) and len(sub.edges) == 3 * expected_children
    assert all(e >= 1 for name, e in sub.nodes if "-" in name)  # no epoch-0 checkpoint
    by_name = {r["name"]: r for r in rows}
    for parent, child in sub.edges:
        if "-" in parent[0]:  # checkpoint -> later checkpoint of the same fine-tune
            assert parent[0] == child[0] and parent[1] < child[1]
        else:
            assert by_name[child[0]]["parent"] == parent[0]
    for root in roots:
        variants = {by_name[n[0]] ["name"] for n in sub.nodes if sub.backbone_of[n] == root[0] and n != root}
        if setting != "epochs":
            factor = {"seed": "head_seed", "lr": "lr", "head": "head", "optimizer": "optimizer"}[setting]
            kept = [f for f in ("head", "head_seed", "optimizer", "lr") if f != factor]
            assert len({tuple(by_name[v][f] for f in kept) for v in variants}) == 1
            assert len({by_name[v][factor] for v in variants}) == 2
        else:
            assert len(variants) == 1
    star = draw(rows, setting, random.Random(0), truth="backbone")
    if setting != "epochs":
        assert all("-" not in p[0] for p, _ in star.edges)
    with pytest.raises(ZooError, match="unknown Table 3 setting"):
        draw(rows, "colour", random.Random(0))


def test_cli_table3_on_the_smoke_zoo(smoke_all, tmp_path):
    import csv

    from vitzoo_hf.cli import main

    _, zoo_dir = smoke_all
    out = tmp_path / "lineage"
    assert main(["lineage", str(zoo_dir), "--out", str(out), "--draws", "2", "--seed", "3"]) == 0
    table = (out / "table3.md").read_text()
    # smoke fine-tunes vary by head and optimizer only (one lr, one head seed): those and epochs are run
    assert "| mother | f1 |" in table and "| ours | f1 |" in table and "Skipped" in table
    rows = list(csv.DictReader((out / "table3_draws.csv").open()))
    assert {r["setting"] for r in rows} == {"epochs", "head", "optimizer"}
    assert len(rows) == 3 * 2 * 2  # settings x draws x methods
    for r in rows:
        # 2 backbones; epochs: 2 trained epochs each -> 6 nodes, 4 edges; head/optimizer: 2 variants x 2 epochs
        assert (int(r["nodes"]), int(r["true_edges"])) == ((6, 4) if r["setting"] == "epochs" else (10, 8))
        assert int(r["tp"]) + int(r["fn"]) == int(r["true_edges"])
    summary = list(csv.DictReader((out / "table3.csv").open()))
    assert {(r["method"], r["metric"]) for r in summary} >= {("mother", "f1"), ("ours", "accuracy")}
    for s in ("epochs", "head", "optimizer"):
        assert (out / f"tree_{s}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bad inputs: one clear line, exit 2, nothing written
    assert main(["lineage", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    (tmp_path / "file").write_text("")
    assert main(["lineage", str(zoo_dir), "--out", str(tmp_path / "file")]) == 2
    assert main(["lineage", str(zoo_dir), "--out", str(out), "--methods", "magic"]) == 2
