"""The paper's findings as checks: each on a hand-made zoo table where it holds and one where it does not."""

import itertools
import math

import numpy as np
import pytest

from vitzoo_hf.analysis import findings as F

LRS = (3e-3, 1e-3, 1e-4)
N_VAL = 300


def paper_like(**knobs):
    """A zoo table shaped like the paper's: 2 supervised + 2 contrastive backbones, the full fine-tuning grid.
    Every knob defaults to the paper's direction; flip one to break one finding."""
    k = {"sup": 0.80, "con": 0.76, "adam_bonus": 0.04, "sgd_low": 0.05, "gap_adam": {3e-3: .20, 1e-3: .16, 1e-4: .04},
         "gap_sgd": 0.0, "noise": {3e-3: .35, 1e-3: .35, 1e-4: .10}, "kurt": {"supervised": (0.8, 0.9),
                                                                            "contrastive": (3.0, 3.1)},
         "within": 5.0, "between": 100.0, **knobs}
    rng = np.random.default_rng(0)
    models, names = [], []
    templates = {lr: rng.integers(0, 10, N_VAL) for lr in LRS}
    for task, seeds in (("supervised", (1, 2)), ("contrastive", (1, 2))):
        for i, s in enumerate(seeds):
            name = f"{task}-{s}"
            models.append({"name": name, "stage": "pretraining", "task": task, "kurtosis": k["kurt"][task][i],
                           "validation_accuracy": 0.7 if task == "supervised" else 0.9})
            names.append(name)
    for parent in list(names):
        task = parent.split("-")[0]
        for head, opt, lr, seed in itertools.product(("linear", "mlp"), ("adamw", "sgd"), LRS, (1, 2)):
            base = k["sup"] if task == "supervised" else k["con"]
            if opt == "adamw":
                acc, gap = base, k["gap_adam"][lr]
            else:
                acc, gap = base - k["adam_bonus"], k["gap_sgd"]
                if lr == 1e-4:
                    acc = k["sgd_low"]
            preds = templates[lr].copy()
            swap = rng.random(N_VAL) < k["noise"][lr]
            preds[swap] = rng.integers(0, 10, int(swap.sum()))
            models.append({"name": f"{parent}-{head}-{opt}-{lr:g}-{seed}", "stage": "finetuning", "task": task,
                           "parent": parent, "head": head, "optimizer": opt, "lr": lr, "head_seed": seed,
                           "validation_accuracy": acc + 0.002 * seed, "train_accuracy": acc + 0.002 * seed + gap,
                           "predictions": preds})
    pre = [m["name"] for m in models if m["stage"] == "pretraining"]
    order = pre + [m["name"] for m in models if m["stage"] == "finetuning"]
    pos = {}  # points: backbones far apart on orthogonal axes, fine-tunes `within` from their parent
    for i, n in enumerate(pre):
        pos[n] = np.eye(len(pre))[i] * k["between"] / math.sqrt(2)
    for m in models:
        if m["stage"] == "finetuning":
            d = rng.normal(size=len(pre))
            pos[m["name"]] = pos[m["parent"]] + d / np.linalg.norm(d) * k["within"]
    x = np.stack([pos[n] for n in order])
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return F.Evidence(models=models, distance_names=order, distances=dist, threshold=0.65, num_classes=10)


def verdict(check, ev):
    f = check(ev)
    assert f.zoo and f.rule and f.paper and f.statistic
    return f.verdict


@pytest.mark.parametrize("check,broken", [
    (F.supervised_beats_contrastive, {"sup": 0.74, "con": 0.80}),
    (F.adamw_beats_sgd, {"adam_bonus": -0.03}),
    (F.sgd_low_lr_collapses, {"sgd_low": 0.55}),
    (F.adamw_overfits_more, {"gap_adam": {3e-3: .03, 1e-3: .02, 1e-4: .01}}),
    (F.lr_moves_generalisation_not_accuracy, {"gap_adam": {3e-3: .1, 1e-3: .1, 1e-4: .1}, "gap_sgd": .1}),
    (F.clusters_around_parent, {"within": 40.0}),
    (F.kurtosis_separates_tasks, {"kurt": {"supervised": (0.8, 3.05), "contrastive": (3.0, 3.1)}}),
])
def test_population_finding_holds_on_a_paper_like_zoo_and_not_when_broken(check, broken):
    assert verdict(check, paper_like()) == F.HELD
    assert verdict(check, paper_like(**broken)) == F.NOT_HELD


def test_population_findings_not_applicable_without_the_groups_they_compare():
    ev = paper_like()
    only_sup = F.Evidence([m for m in ev.models if m["task"] == "supervised"], ev.distance_names, ev.distances)
    assert F.supervised_beats_contrastive(only_sup).verdict == F.NA
    assert F.kurtosis_separates_tasks(only_sup).verdict == F.NA
    low = F.Evidence(ev.models, ev.distance_names, ev.distances, threshold=0.99)  # empty refined zoo
    assert F.adamw_beats_sgd(low).verdict == F.NA
    assert F.lr_moves_generalisation_not_accuracy(low).verdict == F.NA


def test_one_backbone_per_task_cannot_separate_kurtosis():
    ev = paper_like()
    one = [m for m in ev.models if m["stage"] == "finetuning" or m["name"].endswith("-1")]
    assert F.kurtosis_separates_tasks(F.Evidence(one)).verdict == F.NA


def _epochs(gains):
    return [{"model": f"m{i}", "gain": g} for i, g in enumerate(gains)]


def _soups(seed, other):
    return ([{"factor": "head_seed", "gain": g} for g in seed] + [{"factor": "lr", "gain": g} for g in other])


def _rebasin(merged, ends=(0.8, 0.78)):
    return ([{"accuracy_a": ends[0], "accuracy_b": ends[1], "aligned_average_accuracy": merged}],
            [{"mergemany_average_accuracy": merged}])


def _table3(epochs_f1, branch_f1):
    rows = [{"method": "mother", "metric": "f1", "setting": "epochs", "mean": epochs_f1}]
    rows += [{"method": "mother", "metric": "f1", "setting": s, "mean": branch_f1} for s in ("seed", "lr")]
    rows += [{"method": "ours", "metric": "f1", "setting": "seed", "mean": 1.0}]  # another method: ignored
    return rows


@pytest.mark.parametrize("check,field,holds,broken", [
    (F.epoch_average_beats_best, "epoch_rows", _epochs([.01, .02, -.01]), _epochs([.01, -.02, -.01])),
    (F.seed_soups_most_promising, "soup_rows", _soups([.01, -.01], [-.05, -.04]), _soups([-.01, -.02], [.01, .0])),
    (F.mother_chains_not_branches, "table3", _table3(0.82, 0.09), _table3(0.82, 0.6)),
])
def test_study_finding_holds_and_not(check, field, holds, broken):
    ev = paper_like()
    assert check(ev).verdict == F.NA  # no study results: not applicable
    setattr(ev, field, holds)
    assert check(ev).verdict == F.HELD
    setattr(ev, field, broken)
    assert check(ev).verdict == F.NOT_HELD


def test_mother_check_reads_the_backbone_truth_with_given_trees_whatever_the_row_order():
    """table3.csv holds every truth reading and tree mode; the check must not take whichever comes last."""
    def tagged(truth, trees, epochs_f1, branch_f1):
        return [{**r, "truth": truth, "trees": trees} for r in _table3(epochs_f1, branch_f1)]

    rows = (tagged("lineage", "given", 0.8, 0.6) + tagged("backbone", "given", 0.8, 0.05)
            + tagged("backbone", "estimated", 0.3, 0.6))
    ev = paper_like()
    for order in (rows, rows[::-1]):
        ev.table3 = order
        f = F.mother_chains_not_branches(ev)
        assert f.verdict == F.HELD and f.zoo == "0.80 vs ≤ 0.05" and "truth backbone" in f.note
    ev.table3 = tagged("lineage", "given", 0.8, 0.6)  # only the lineage reading: judged on it
    assert F.mother_chains_not_branches(ev).verdict == F.NOT_HELD


def test_rebasin_destroys_is_measured_against_chance():
    ev = paper_like()
    assert F.rebasin_destroys(ev).verdict == F.NA
    ev.rebasin_pairs, ev.rebasin_many = _rebasin(0.11)  # 10 classes: chance 10 %
    assert F.rebasin_destroys(ev).verdict == F.HELD
    ev.rebasin_pairs, ev.rebasin_many = _rebasin(0.31)
    assert F.rebasin_destroys(ev).verdict == F.NOT_HELD
    ev.rebasin_pairs, ev.rebasin_many = _rebasin(0.11, ends=(0.2, 0.3))  # endpoints near chance: nothing to destroy
    assert F.rebasin_destroys(ev).verdict == F.NA
    ev.num_classes = 100
    ev.rebasin_pairs, ev.rebasin_many = _rebasin(0.011)
    assert F.rebasin_destroys(ev).verdict == F.HELD


def test_report_lists_every_finding_with_counts():
    found = F.check_all(paper_like())
    assert len(found) == 11
    md, csv_text = F.to_markdown(found, "toy"), F.to_csv(found)
    assert "**7 of 11 held**" in md  # the population findings; studies absent
    assert md.count("| ") > 11 and csv_text.count("\n") == 12


def test_statistics_definitions_match_scipy_over_what_each_covers():
    """flat: every tensor; matrices: the blocks' 2-D weights only; per-matrix: their mean. Checked on a toy
    backbone whose LayerNorm gains (all near 1) dominate the flat kurtosis, as in a real ViT."""
    import scipy.stats

    from vitzoo_hf.analysis.checkpoint import DEFINITION_COLUMNS
    from vitzoo_hf.analysis.weights import weight_statistics
    from vitzoo_hf.metadata import DEFINITION_COLUMNS as META_COLUMNS

    rng = np.random.default_rng(1)
    w = {"embeddings.position_embeddings": rng.normal(0, .02, (1, 5, 16)).astype(np.float32),
         "layers.0.attention.q_proj.weight": rng.standard_t(5, (16, 16)).astype(np.float32) * .02,
         "layers.0.attention.q_proj.bias": np.zeros(16, np.float32),
         "layers.0.layernorm_before.weight": (1 + rng.normal(0, .01, 16)).astype(np.float32),
         "layers.0.mlp.fc1.weight": rng.normal(0, .02, (32, 16)).astype(np.float32)}
    mats = [w["layers.0.attention.q_proj.weight"].ravel(), w["layers.0.mlp.fc1.weight"].ravel()]
    every = np.concatenate([v.ravel() for _, v in sorted(w.items())]).astype(np.float64)
    flat, matrices, per = (weight_statistics(w, definition=d) for d in ("flat", "matrices", "per-matrix"))
    assert math.isclose(flat["kurtosis"], scipy.stats.kurtosis(every), rel_tol=1e-6)
    assert math.isclose(matrices["kurtosis"], scipy.stats.kurtosis(np.concatenate(mats)), rel_tol=1e-6)
    assert math.isclose(per["kurtosis"], np.mean([scipy.stats.kurtosis(m) for m in mats]), rel_tol=1e-6)
    assert math.isclose(matrices["l2_norm"], float(np.linalg.norm(np.concatenate(mats))), rel_tol=1e-6)
    assert flat["kurtosis"] > 10 * abs(matrices["kurtosis"])  # the LayerNorm gains dominate "flat"
    assert DEFINITION_COLUMNS == META_COLUMNS  # what analysis computes is what the metadata stores


def test_epoch_finding_says_when_the_window_is_not_five():
    ev = paper_like()
    ev.epoch_rows = [{"gain": .01, "epochs_averaged": "1-2"}, {"gain": .02, "epochs_averaged": "1-2"}]
    f = F.epoch_average_beats_best(ev)
    assert f.verdict == F.HELD and "window of 2 epochs" in f.note
    ev.epoch_rows = [{"gain": .01, "epochs_averaged": "16-20"}]
    assert F.epoch_average_beats_best(ev).note == ""


def test_analyze_refuses_a_missing_study_folder_before_writing(tmp_path, capsys):
    from vitzoo_hf.cli import main

    out = tmp_path / "a"
    assert main(["analyze", str(tmp_path / "no-zoo"), "--out", str(out), "--averaging", str(tmp_path / "nope")]) == 2
    assert "--averaging" in capsys.readouterr().err and not out.exists()
