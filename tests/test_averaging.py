"""Weight averaging and Git Re-Basin on tiny random zoo ViTs: permutation symmetries, planted-permutation
recovery, streamed averaging."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vitzoo_hf.averaging.methods import RunningAverage, average_state_dicts
from vitzoo_hf.averaging.rebasin import (
    RES,
    apply_permutation,
    head_structured,
    interpolate,
    invert,
    merge_many,
    random_permutation,
    vit_permutation_spec,
    weight_matching,
)
from vitzoo_hf.errors import ZooError
from vitzoo_hf.modeling import ZooViTConfig, ZooViTForImageClassification, ZooViTModel

HEADS = 4


def tiny_vit(head: str = "mlp", seed: int = 0) -> ZooViTForImageClassification:
    """A tiny zoo ViT with every parameter drawn at a visible scale (LayerNorms and biases included), so a
    wrong permutation changes the logits."""
    torch.manual_seed(seed)
    config = ZooViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=32,
                          patch_size=4, image_size=8, num_labels=5, head_type=head, head_hidden_size=8)
    model = ZooViTForImageClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model


def logits(model: torch.nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    model.load_state_dict(state)
    with torch.no_grad():
        return model(pixel_values=x).logits


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_random_permutation_preserves_logits(head, images):
    model = tiny_vit(head)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    spec = vit_permutation_spec(sd, HEADS)
    expected_names = {RES, "mlp.0", "mlp.1", "qk.0", "vo.0", "qk.1", "vo.1"} | ({"head_hidden"} if head == "mlp"
                                                                                  else set())
    assert set(spec.sizes) == expected_names
    perms = random_permutation(spec, seed=3)
    # every kind really moves: residual, MLP hidden, head order, within-head Q/K and V/O, MLP-head hidden
    for name, p in perms.items():
        assert not torch.equal(p, torch.arange(len(p))), name
    dh = spec.head_dim
    heads_qk = perms["qk.0"].view(HEADS, dh)[:, 0] // dh
    assert not torch.equal(heads_qk, torch.arange(HEADS))
    assert torch.equal(heads_qk, perms["vo.0"].view(HEADS, dh)[:, 0] // dh)  # heads move as units for Q/K and V/O
    assert not torch.equal(perms["qk.0"] % dh, perms["vo.0"] % dh)  # independent within-head permutations

    permuted = apply_permutation(spec, perms, sd)
    assert any(not torch.equal(permuted[k], sd[k]) for k in sd if k.startswith("vit.layers.0.attention"))
    before = logits(model, sd, images)
    after = logits(model, permuted, images)
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
    # undoing the permutation gives the original weights back, exactly
    restored = apply_permutation(spec, invert(perms), permuted)
    assert all(torch.equal(restored[k], sd[k]) for k in sd)


def test_non_symmetries_change_logits(images):
    """Negative controls: the test above can fail. Q/K rows permuted across head boundaries, or V rows without
    the matching output-projection columns, change the function."""
    model = tiny_vit()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    spec = vit_permutation_spec(sd, HEADS)
    before = logits(model, sd, images)

    identity = spec.identity()
    crossing = dict(identity, **{"qk.0": torch.roll(torch.arange(16), 2)})  # shifts units into the next head
    assert (logits(model, apply_permutation(spec, crossing, sd), images) - before).abs().max() > 1e-3

    v_only = dict(sd)
    v_only["vit.layers.0.attention.v_proj.weight"] = sd["vit.layers.0.attention.v_proj.weight"].flip(0)
    v_only["vit.layers.0.attention.v_proj.bias"] = sd["vit.layers.0.attention.v_proj.bias"].flip(0)
    assert (logits(model, v_only, images) - before).abs().max() > 1e-3


def test_backbone_and_legacy_key_names(images):
    """A contrastive backbone (no `vit.` prefix, no head) and transformers-4 key names get the same spec."""
    backbone = ZooViTModel(tiny_vit().config)
    sd = backbone.state_dict()
    spec = vit_permutation_spec(sd, HEADS)
    assert "head_hidden" not in spec.sizes and spec.sizes[RES] == 16
    legacy = {k.replace("layers.", "encoder.layer.").replace("attention.q_proj", "attention.attention.query")
              .replace("mlp.fc1", "intermediate.dense"): v for k, v in sd.items()}
    legacy_spec = vit_permutation_spec(legacy, HEADS)
    assert sorted(legacy_spec.sizes.items()) == sorted(spec.sizes.items())
    assert legacy_spec.axes["encoder.layer.1.attention.attention.query.weight"] == ("qk.1", RES)
    with pytest.raises(ZooError, match="not part of a zoo ViT"):
        vit_permutation_spec({**sd, "pooler.dense.weight": torch.zeros(16, 16)}, HEADS)


@pytest.mark.parametrize("seed", [0, 1])
def test_rebasin_recovers_planted_permutation(seed):
    model = tiny_vit(seed=seed)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    spec = vit_permutation_spec(a, HEADS)
    planted = random_permutation(spec, seed=10 + seed)
    b = apply_permutation(spec, planted, a)
    result = weight_matching(spec, a, b)
    recovered = apply_permutation(spec, result.perms, b)
    assert all(torch.equal(recovered[k], a[k]) for k in a)
    inverse = invert(planted)
    assert all(torch.equal(result.perms[n], inverse[n]) for n in spec.sizes)
    assert result.objective > result.objective_identity


def test_rebasin_recovers_permutation_under_noise():
    """Planted permutation plus small independent noise (as two nearby models): still found exactly."""
    a = {k: v.clone() for k, v in tiny_vit(seed=2).state_dict().items()}
    spec = vit_permutation_spec(a, HEADS)
    planted = random_permutation(spec, seed=5)
    g = torch.Generator().manual_seed(0)
    b = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in apply_permutation(spec, planted, a).items()}
    result = weight_matching(spec, a, b)
    inverse = invert(planted)
    assert all(torch.equal(result.perms[n], inverse[n]) for n in spec.sizes)


def test_matching_unrelated_models_never_worse_than_identity():
    a, b = (tiny_vit(seed=s).state_dict() for s in (5, 6))
    spec = vit_permutation_spec(a, HEADS)
    result = weight_matching(spec, a, b)
    assert result.objective >= result.objective_identity


def test_one_factor_groups():
    """Siblings that differ in exactly one factor; SGD's momentum may differ along with the optimizer."""
    from vitzoo_hf.averaging.methods import one_factor_groups

    def row(name, parent="p", head="linear", opt="adamw", lr=1e-3, seed=1):
        return {"name": name, "stage": "finetuning", "parent": parent, "dataset": "digits", "head": head,
                "head_seed": seed, "optimizer": opt, "lr": lr, "weight_decay": 0.0,
                "momentum": 0.99 if opt == "sgd" else None, "epochs": 6, "batch_size": 32}

    rows = [row("a"), row("b", seed=2), row("c", opt="sgd"), row("d", lr=3e-3), row("e", parent="q"),
            row("f", head="mlp", lr=3e-3)]
    names = {f: [[m["name"] for m in ms] for _, ms in one_factor_groups(rows, f)] for f in
             ("head_seed", "optimizer", "lr", "head")}
    assert names == {"head_seed": [["a", "b"]], "optimizer": [["a", "c"]], "lr": [["a", "d"]], "head": [["d", "f"]]}
    with pytest.raises(ZooError, match="cannot soup over 'parent'"):
        one_factor_groups(rows, "parent")


def test_merge_many_aligns_permuted_copies():
    """Three permuted copies of one model: both MergeMany and align-to-reference average back to a permutation
    of the model itself (the average of identical functions in one basis)."""
    a = {k: v.clone() for k, v in tiny_vit(seed=4).state_dict().items()}
    spec = vit_permutation_spec(a, HEADS)
    copies = [a] + [apply_permutation(spec, random_permutation(spec, seed=s), a) for s in (7, 8)]
    for iterate in (False, True):
        aligned, _ = merge_many(spec, copies, iterate=iterate)
        for m in aligned[1:]:
            assert all(torch.equal(m[k], aligned[0][k]) for k in a)


def test_head_structured_layout():
    perm = head_structured([1, 0], [[1, 0], [0, 1]], head_dim=2)
    assert perm.tolist() == [3, 2, 0, 1]


def test_interpolate_endpoints():
    a = tiny_vit(seed=0).state_dict()
    b = tiny_vit(seed=1).state_dict()
    assert all(torch.equal(interpolate(a, b, 0.0)[k], a[k]) for k in a)
    mid = interpolate(a, b, 0.5)
    assert torch.allclose(mid["classifier.2.bias"], (a["classifier.2.bias"] + b["classifier.2.bias"]) / 2)


# ----------------------------------------------------------------------------------------------------------------
# The averaging engine


def test_average_of_identical_models_is_the_model(images):
    model = tiny_vit()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    avg = average_state_dicts([sd, sd, sd])
    assert all(torch.equal(avg[k], sd[k]) and avg[k].dtype == sd[k].dtype for k in sd)
    assert torch.equal(logits(model, avg, images), logits(model, sd, images))
    weighted = average_state_dicts([sd, sd], weights=[0.2, 3.0])
    assert all(torch.allclose(weighted[k], sd[k], atol=1e-7) for k in sd)


def test_streamed_average_equals_in_memory_average(tmp_path):
    """Files read one at a time into a running float64 sum == the mean of all models stacked in memory."""
    models = [tiny_vit(seed=s).state_dict() for s in range(4)]
    weights = [1.0, 2.0, 0.5, 1.5]
    paths = []
    for i, sd in enumerate(models):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(paths[-1]))

    def stream():
        from safetensors.torch import load_file

        for p in paths:
            yield load_file(str(p))

    streamed = average_state_dicts(stream(), weights=weights)
    total = sum(weights)
    for k in models[0]:
        stacked = torch.stack([sd[k].double() * w for sd, w in zip(models, weights, strict=True)])
        assert torch.allclose(streamed[k].double(), stacked.sum(0) / total, atol=1e-6), k
    uniform = average_state_dicts(iter(models))
    mean = torch.stack([m["classifier.0.weight"] for m in models]).mean(0)
    assert torch.allclose(uniform["classifier.0.weight"], mean, atol=1e-6)


def test_running_average_refuses_incompatible_models():
    avg = RunningAverage()
    avg.add(tiny_vit("mlp").state_dict(), name="mlp-model")
    with pytest.raises(ZooError, match="linear-model.*classifier"):
        avg.add(tiny_vit("linear").state_dict(), name="linear-model")
    with pytest.raises(ZooError, match="weight"):
        RunningAverage().add(tiny_vit().state_dict(), weight=-1.0)
    with pytest.raises(ZooError, match="no models"):
        RunningAverage().result()


# ----------------------------------------------------------------------------------------------------------------
# End to end on the smoke zoo (2 backbones x 4 fine-tunes, 2 epochs)


def test_average_cli_epochs_and_saved_model(smoke_all, tmp_path):
    """`vitzoo average --method epochs`: tables and figures; re-evaluated checkpoints match what training
    recorded; the saved model is exactly the mean of its two checkpoints and scores what its card says."""
    import csv
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    from vitzoo_hf.averaging.methods import Evaluator, evaluation_dataset
    from vitzoo_hf.cli import main
    from vitzoo_hf.zoo import Zoo

    _, zoo_dir = smoke_all
    out = tmp_path / "avg"
    assert main(["average", str(zoo_dir), "--method", "epochs", "--window", "2", "--out", str(out),
                 "--save-model", "smoke-avg"]) == 0
    for f in ("epochs.csv", "epochs.md", "epochs_longitudinal.csv", "fig2a_epochs.png", "fig3_longitudinal.png",
              "summary.md"):
        assert (out / f).stat().st_size > 0, f
    rows = list(csv.DictReader(open(out / "epochs_longitudinal.csv")))
    assert len(rows) == 8  # the 8 fine-tunes, one window (epochs 1-2) each
    assert all(float(r["single_accuracy"]) == float(r["recorded_accuracy"]) for r in rows)

    saved = out / "smoke-avg"
    info = json.loads((saved / "averaging.json").read_text())
    assert [i["epoch"] for i in info["ingredients"]] == [1, 2]
    zoo = Zoo.from_dir(zoo_dir)
    name = info["ingredients"][0]["name"]
    parts = [zoo.state_dict(name, e) for e in (1, 2)]
    weights = load_file(str(saved / "model.safetensors"))
    assert all(torch.allclose(weights[k], (parts[0][k].double() + parts[1][k].double()).div(2).float(), atol=1e-7)
               for k in parts[0])
    model = AutoModelForImageClassification.from_pretrained(saved)
    assert model.config.averaged_from[1] == {"name": name, "epoch": 2, "weight": 1.0}
    acc = Evaluator(evaluation_dataset(zoo.record(name)))(model)["accuracy"]
    assert acc == pytest.approx(info["validation"]["accuracy"])
    assert name in (saved / "README.md").read_text()
    # the same name again is refused, and nothing is overwritten; other bad flags are one-line errors too
    assert main(["average", str(zoo_dir), "--method", "epochs", "--window", "2", "--out", str(out),
                 "--save-model", "smoke-avg"]) == 2
    for bad in (["--window", "0"], ["--batch-size", "0"], ["--models", "no-such-model"], ["--save-model", "a/b"]):
        assert main(["average", str(zoo_dir), "--method", "epochs", "--out", str(tmp_path / "x"), *bad]) == 2, bad
    assert not (tmp_path / "x").exists()


def test_window_of_one_equals_single_checkpoints(smoke_all):
    from vitzoo_hf.averaging.methods import ZooEvaluation, epoch_averaging
    from vitzoo_hf.zoo import Zoo

    ev = ZooEvaluation(Zoo.from_dir(smoke_all[1]), progress=False)
    final, longitudinal = epoch_averaging(ev, window=1)
    assert len(longitudinal) == 16 and len(final) == 8  # epochs 1 and 2 of 8 fine-tunes
    assert all(r["averaged_accuracy"] == r["single_accuracy"] for r in longitudinal)
    assert all(r["gain"] == 0 and r["best_single_epoch"] == 2 for r in final)


def test_soups_greedy_and_rebasin_on_smoke(smoke_all):
    from vitzoo_hf.averaging.methods import ZooEvaluation, greedy_soups, rebasin, soups
    from vitzoo_hf.zoo import Zoo

    ev = ZooEvaluation(Zoo.from_dir(smoke_all[1]), progress=False)
    rows = soups(ev)
    # smoke varies head and optimizer only; each backbone x other factor gives one group of two
    assert sorted((r["factor"], r["members"]) for r in rows) == [("head", 2)] * 4 + [("optimizer", 2)] * 4
    assert all(r["heads"] == "best member's head" for r in rows if r["factor"] == "head")

    greedy = greedy_soups(ev)
    assert len(greedy) == 4
    for g in greedy:  # greedy never lowers selection accuracy below its first ingredient's
        first = g["chosen"].split()[0]
        assert g["greedy_select_accuracy"] >= ev.checkpoint(first, split="select")["accuracy"]
        assert g["best_by_select_accuracy"] == ev.checkpoint(first, split="report")["accuracy"]
        assert 1 <= g["ingredients"] <= g["members"]

    pairs, curve, many = rebasin(ev)
    assert len(pairs) == 4 and many == []  # 4 fine-tuning settings, one pair of backbones each
    assert {p["pair_type"] for p in pairs} == {"supervised–contrastive"}  # smoke: one backbone per task
    for p in pairs:  # weight matching only accepts improvements, so it never moves B away from A
        assert p["l2_aligned"] <= p["l2_naive"] + 1e-9
        ends = {(r["kind"], r["alpha"]): r["accuracy"] for r in curve
                if (r["model_a"], r["model_b"]) == (p["model_a"], p["model_b"])}
        assert ends["naive", 0.0] == ends["aligned", 0.0] == p["accuracy_a"]
        assert ends["naive", 1.0] == ends["aligned", 1.0] == p["accuracy_b"]
        assert ends["aligned", 0.5] == p["aligned_average_accuracy"]


def test_average_from_the_hub_equals_from_the_folder(pubhub, tmp_path):
    """SOURCE as a published metadata repo: the same table as from the folder, and a saved model whose card and
    averaging.json name the Hub repos and commits it came from."""
    import json

    from vitzoo_hf.cli import main

    hub_out, dir_out = tmp_path / "hub", tmp_path / "dir"
    assert main(["average", pubhub.meta, "--method", "epochs", "--window", "2", "--out", str(hub_out),
                 "--save-model", "smoke-avg"]) == 0
    assert main(["average", str(pubhub.zoo_dir), "--method", "epochs", "--window", "2", "--out", str(dir_out)]) == 0
    assert (hub_out / "epochs.csv").read_text() == (dir_out / "epochs.csv").read_text()

    info = json.loads((hub_out / "smoke-avg" / "averaging.json").read_text())
    assert all(i["repo_id"].startswith("zoo-org/") and len(i["commit"]) == 40 for i in info["ingredients"])
    card = (hub_out / "smoke-avg" / "README.md").read_text()
    assert "base_model_relation: merge" in card and info["ingredients"][0]["repo_id"] in card


def test_running_average_never_averages_integers_nor_mixes_dtypes():
    a = {"w": torch.tensor([1.0, 3.0]), "idx": torch.tensor([0, 1, 2])}
    b = {"w": torch.tensor([3.0, 5.0]), "idx": torch.tensor([0, 1, 2])}
    avg = RunningAverage()
    avg.add(a, name="a")
    avg.add(b, name="b")
    out = avg.result()
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and out["idx"].dtype == torch.int64
    assert torch.equal(out["idx"], a["idx"])
    with pytest.raises(ZooError, match="integer tensors are never averaged"):
        avg.add({"w": b["w"], "idx": torch.tensor([2, 1, 0])}, name="c")
    with pytest.raises(ZooError, match="mixed dtypes"):
        avg.add({"w": b["w"].to(torch.bfloat16), "idx": a["idx"]}, name="d")
    with pytest.raises(ZooError, match="mixed dtypes"):
        avg.result({"w": b["w"].double(), "idx": a["idx"]})
    assert avg.count == 2  # refused models were not added


def test_validation_halves_are_disjoint_and_cover_validation(smoke_all):
    from vitzoo_hf.averaging.methods import validation_halves
    from vitzoo_hf.data import load_splits

    d = smoke_all[0].finetuning.dataset
    val = load_splits(d.name, d.max_train, d.max_validation)["validation"]
    select, report = validation_halves(val)
    key = lambda im: im.tobytes()  # noqa: E731 - the image content, not its index
    s, r = {key(i) for i in select["image"]}, {key(i) for i in report["image"]}
    assert not s & r and len(select) + len(report) == len(val) and abs(len(select) - len(report)) <= 1
    assert s | r == {key(i) for i in val["image"]}


def test_greedy_selection_never_sees_the_images_it_is_scored_on(smoke_all):
    """Scramble the labels of the half the greedy soups are scored on: what they choose does not change (it is
    chosen on the other half), while what they report does."""
    from vitzoo_hf.averaging.methods import Evaluator, ZooEvaluation, evaluation_dataset, greedy_soups
    from vitzoo_hf.zoo import Zoo

    class ScrambledReport(ZooEvaluation):
        def evaluator(self, name, split="validation"):
            if split != "report":
                return super().evaluator(name, split)
            if "report" not in self._evaluators:
                images, labels = evaluation_dataset(self.zoo.record(name), "report", False).tensors
                labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
                self._evaluators["report"] = Evaluator(torch.utils.data.TensorDataset(images, (labels + 1) % 10),
                                                       self.batch_size, self.accelerator)
            return self._evaluators["report"]

    zoo = Zoo.from_dir(smoke_all[1])
    honest = greedy_soups(ZooEvaluation(zoo, progress=False))
    scrambled = greedy_soups(ScrambledReport(zoo, progress=False))
    assert [g["chosen"] for g in honest] == [g["chosen"] for g in scrambled]
    assert [g["greedy_select_accuracy"] for g in honest] == [g["greedy_select_accuracy"] for g in scrambled]
    assert [g["greedy_accuracy"] for g in honest] != [g["greedy_accuracy"] for g in scrambled]


def test_saved_average_loads_in_pipeline_without_vitzoo_hf(smoke_all, tmp_path):
    import json
    import subprocess
    import sys

    from vitzoo_hf.cli import main

    out = tmp_path / "avg"
    assert main(["average", str(smoke_all[1]), "--method", "soup", "--factors", "optimizer", "--out", str(out),
                 "--save-model", "souped"]) == 0
    saved = out / "souped"
    assert (saved / "preprocessor_config.json").is_file()
    image = tmp_path / "x.png"
    from vitzoo_hf.data import load_splits

    d = smoke_all[0].finetuning.dataset
    load_splits(d.name, d.max_train, d.max_validation)["validation"][0]["image"].save(image)
    script = f"""
import json, sys
from transformers import AutoImageProcessor, pipeline
AutoImageProcessor.from_pretrained({str(saved)!r})
clf = pipeline("image-classification", model={str(saved)!r}, trust_remote_code=True)
assert "vitzoo_hf" not in sys.modules, "vitzoo_hf was imported"
print(json.dumps(clf({str(image)!r}, top_k=1)[0]["label"]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((saved / "config.json").read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) in config["id2label"].values()


def test_epoch_averaging_at_several_windows(smoke_all, tmp_path):
    import csv

    from vitzoo_hf.cli import main

    out = tmp_path / "w"
    assert main(["average", str(smoke_all[1]), "--method", "epochs", "--window", "1", "2", "--out", str(out)]) == 0
    w1 = list(csv.DictReader(open(out / "epochs_w1.csv")))
    w2 = list(csv.DictReader(open(out / "epochs_w2.csv")))
    assert len(w1) == len(w2) == 8 and all(float(r["gain"]) == 0 for r in w1)  # a window of one is the checkpoint
    assert (out / "epochs.csv").read_text() == (out / "epochs_w2.csv").read_text()  # the largest is the main one
    assert "| 1 | 8 |" in (out / "summary.md").read_text() and (out / "fig_gain_vs_ggap.png").stat().st_size
