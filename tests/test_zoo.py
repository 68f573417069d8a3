"""`vitzoo_hf.Zoo` over a local zoo folder (the smoke zoo): tables, lineage, tensors, predictions, records."""

from __future__ import annotations

import pytest
import torch

from vitzoo_hf import layout, metadata
from vitzoo_hf.blueprint import expand
from vitzoo_hf.errors import ZooError
from vitzoo_hf.zoo import Zoo


@pytest.fixture(scope="module")
def smoke_zoo(smoke_all):
    bp, out = smoke_all
    return bp, out, Zoo.from_dir(out, namespace="zoo-org")


def test_tables_match_the_blueprint(smoke_zoo):
    bp, _, zoo = smoke_zoo
    specs = {s.name: s for s in expand(bp)}
    assert zoo.name == "smoke"
    assert sorted(zoo.models["name"]) == sorted(specs)
    assert set(zoo.models.column_names) == set(metadata.FEATURES["models"])
    for row in zoo.models:
        s = specs[row["name"]]
        assert (row["stage"], row["task"], row["parent"], row["optimizer"], row["lr"], row["epochs"]) == \
            (s.stage, s.task, s.parent, s.optimizer, s.lr, s.epochs)
        assert row["repo_id"] == f"zoo-org/{s.name}"
        assert row["parent_repo_id"] == (f"zoo-org/{s.parent}" if s.parent else None)
        assert row["head"] == s.head and row["final_epoch"] == s.epochs
        assert row["seed"] == (s.seed if s.stage == "pretraining" else None)
        assert row["head_seed"] == (s.seed if s.stage == "finetuning" else None)
        assert row["momentum"] == (s.momentum if s.optimizer == "sgd" else None)
    # one checkpoint row per model x epoch (0..epochs), final metrics agree with the models table
    assert len(zoo.checkpoints) == sum(s.epochs + 1 for s in specs.values())
    for row in zoo.models:
        final = zoo.checkpoint(row["name"])
        assert final["epoch"] == row["final_epoch"] and final["branch"] == f"epoch-{row['final_epoch']:03d}"
        assert final["validation_accuracy"] == row["validation_accuracy"]
        assert final["commit"] is None  # hub-only column
    adamw = zoo.models.filter(lambda r: r["optimizer"] == "adamw" and r["stage"] == "finetuning")
    assert sorted(adamw["name"]) == sorted(n for n, s in specs.items() if s.stage == "finetuning"
                                           and s.optimizer == "adamw")


def test_lineage_and_records(smoke_zoo):
    bp, _, zoo = smoke_zoo
    truth = sorted((s.parent, s.name) for s in expand(bp) if s.parent)
    assert sorted(zoo.lineage()) == truth
    name = truth[0][1]
    assert zoo.record(name)["factors"]["head"] in ("linear", "mlp")
    assert zoo.record(name)["parent"] == truth[0][0]


def test_tensors_predictions_and_labels(smoke_zoo):
    _, out, zoo = smoke_zoo
    ft = next(r for r in zoo.models if r["stage"] == "finetuning")
    sd = zoo.state_dict(ft["name"], 1)
    model = zoo.load_model(ft["name"], 1)
    assert set(sd) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k
    assert not torch.equal(zoo.state_dict(ft["name"], 0)["classifier.weight" if ft["head"] == "linear"
                                                          else "classifier.0.weight"], sd[
        "classifier.weight" if ft["head"] == "linear" else "classifier.0.weight"])
    assert zoo.weights_path(ft["name"]).parent.name == f"checkpoint_{ft['final_epoch']:06d}"
    # stored predictions reproduce the recorded validation accuracy against the reconstructed labels
    for epoch in zoo.epochs(ft["name"]):
        preds, labels = zoo.predictions(ft["name"], epoch), zoo.labels(ft["name"])
        assert preds.dtype == torch.int64 and preds.shape == labels.shape
        acc = (preds == labels).double().mean().item()
        assert acc == pytest.approx(zoo.checkpoint(ft["name"], epoch)["validation_accuracy"])
    con = next(r for r in zoo.models if r["task"] == "contrastive" and r["stage"] == "pretraining")
    assert "embeddings.cls_token" in zoo.state_dict(con["name"])  # ZooViTModel keys: no `vit.` prefix
    with pytest.raises(ZooError, match="no stored predictions"):
        zoo.predictions(con["name"])


def test_open_and_bad_sources(smoke_zoo, tmp_path):
    _, out, zoo = smoke_zoo
    assert Zoo.open(str(out)).models["name"] == Zoo.from_dir(out).models["name"]
    assert Zoo.from_dir(out).models["repo_id"] == [None] * len(zoo.models)
    with pytest.raises(ZooError, match="not a zoo folder"):
        Zoo.from_dir(tmp_path)
    with pytest.raises(ZooError, match="neither a zoo folder nor a Hub repo id"):
        Zoo.open(str(tmp_path / "missing"))
    with pytest.raises(ZooError, match="has no model"):
        zoo.model("nope")
    with pytest.raises(ZooError, match="no checkpoint for epoch 9"):
        zoo.checkpoint(zoo.names[0], 9)
    broken = tmp_path / "broken" / "pretraining" / "m"
    broken.mkdir(parents=True)
    (broken / layout.CONFIG_FILE).write_text("{not json")
    with pytest.raises(ZooError, match="damaged"):
        Zoo.from_dir(tmp_path / "broken")


def test_from_hub_equals_from_dir(pubhub):
    """The same zoo read from its folder and from the Hub: equal tables (the Hub adds `commit`), equal tensors."""
    hub = Zoo.from_hub(pubhub.meta)
    local = Zoo.from_dir(pubhub.zoo_dir, namespace=pubhub.namespace)
    assert hub.name == local.name == "smoke"
    assert hub.models.to_list() == local.models.to_list()
    assert hub.models.features == local.models.features
    hub_ckpts = hub.checkpoints.to_list()
    assert all(len(r["commit"]) == 40 and len(r["sketch"]) > 0 and r["l2_norm"] > 0 for r in hub_ckpts)
    assert all((r["l2_to_parent"] is not None) == (hub.model(r["name"])["parent"] is not None) for r in hub_ckpts)
    publish_only = {"commit": None, **dict.fromkeys(metadata.ANALYSIS_COLUMNS)}
    assert [{**r, **publish_only} for r in hub_ckpts] == local.checkpoints.to_list()
    # the analysis columns are exactly what vitzoo_hf.analysis computes from the local weights
    r = hub_ckpts[-1]
    parent = hub.model(r["name"])["parent"]
    expected = metadata.checkpoint_statistics(local.weights_path(r["name"], r["epoch"]),
                                              local.weights_path(parent) if parent else None)
    assert {k: r[k] for k in metadata.ANALYSIS_COLUMNS} == expected
    assert hub.predictions_table().to_list() == local.predictions_table().to_list()
    assert hub.labels_table().to_list() == local.labels_table().to_list()
    assert sorted(hub.lineage()) == sorted(local.lineage())
    for name in (hub.names[0], hub.names[-1]):
        for epoch in (0, None):
            a, b = hub.state_dict(name, epoch), local.state_dict(name, epoch)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert hub.record(name) == local.record(name)
    ft = hub.names[-1]
    assert torch.equal(hub.predictions(ft, 1), local.predictions(ft, 1))
    assert torch.equal(hub.labels(ft), local.labels(ft))
    model = hub.load_model(ft, 1)
    assert all(torch.equal(v, local.state_dict(ft, 1)[k]) for k, v in model.state_dict().items())
    # reads go through the HF cache: a second read downloads nothing new
    path = hub.weights_path(ft, 1)
    assert hub.weights_path(ft, 1) == path and "snapshots" in path.parts
    assert Zoo.open(pubhub.meta).name == "smoke"
    with pytest.raises(ZooError, match="does not exist or is private"):
        Zoo.from_hub("zoo-org/nothing-metadata")
