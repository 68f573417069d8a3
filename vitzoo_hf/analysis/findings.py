"""The paper's findings (Sections 3–4, Appendix A) as computed checks on any zoo.

Each check is a pure function: a `Evidence` (plain model rows, the distance matrix, and, where a finding is about
averaging or lineage, those studies' result rows) in, a `Finding` out: the statistic, the paper's value, this zoo's
value, a verdict (held / not held / not applicable) and the rule that decides it, written down so a reader can
disagree with the rule rather than with a hidden threshold. Thresholds are set from the paper's own numbers
(each rule says which), loose enough that the paper's zoo passes every one of them with room.

Model rows are `Population.models`-shaped dicts: stage, task, parent, head, head_seed, optimizer, lr,
validation_accuracy, train_accuracy (fractions), kurtosis, l2_to_parent, predictions (fine-tunes).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import mean, pstdev
from typing import Any

import numpy as np

HELD, NOT_HELD, NA = "held", "not held", "not applicable"


@dataclass
class Evidence:
    """What the checks look at. Averaging and lineage rows are optional: without them those findings are n/a."""

    models: list[dict[str, Any]]
    distance_names: list[str] = field(default_factory=list)
    distances: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    threshold: float = 0.65  # the refined zoo: final validation accuracy above this (the paper's 65 %)
    num_classes: int | None = None
    epoch_rows: list[dict[str, Any]] | None = None  # averaging.methods.epoch_averaging final rows, window 5
    soup_rows: list[dict[str, Any]] | None = None  # averaging.methods.soups rows
    rebasin_pairs: list[dict[str, Any]] | None = None
    rebasin_many: list[dict[str, Any]] | None = None
    table3: list[dict[str, Any]] | None = None  # lineage table3.csv rows: method, metric, setting, mean

    @property
    def finetuned(self) -> list[dict]:
        return [m for m in self.models if m.get("stage") == "finetuning"]

    @property
    def pretrained(self) -> list[dict]:
        return [m for m in self.models if m.get("stage") == "pretraining"]

    @property
    def refined(self) -> list[dict]:
        return [m for m in self.finetuned if _num(m.get("validation_accuracy")) and
                m["validation_accuracy"] > self.threshold]


@dataclass(frozen=True)
class Finding:
    key: str
    claim: str
    where: str  # where in the paper
    statistic: str
    paper: str
    zoo: str
    verdict: str
    rule: str
    note: str = ""


def _num(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _mean(values: Sequence[float]) -> float:
    return mean(values) if values else math.nan


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _acc(models: Sequence[dict]) -> list[float]:
    return [m["validation_accuracy"] for m in models if _num(m.get("validation_accuracy"))]


def _ggaps(models: Sequence[dict]) -> list[float]:
    return [m["train_accuracy"] - m["validation_accuracy"] for m in models
            if _num(m.get("train_accuracy")) and _num(m.get("validation_accuracy"))]


def _agreement(models: Sequence[dict]) -> float:
    from vitzoo_hf.analysis.agreement import pairwise_agreements

    preds = [m["predictions"] for m in models if m.get("predictions") is not None]
    pairs = pairwise_agreements(preds) if len(preds) >= 2 else np.zeros(0)
    return float(pairs.mean()) if pairs.size else math.nan


def _na(key: str, claim: str, where: str, statistic: str, paper: str, rule: str, why: str) -> Finding:
    return Finding(key, claim, where, statistic, paper, "—", NA, rule, why)


def _verdict(ok: bool) -> str:
    return HELD if ok else NOT_HELD


# ---------------------------------------------------------------------------------------------------------------
# Section 3: performance and diversity


def supervised_beats_contrastive(ev: Evidence) -> Finding:
    args = ("sup_vs_con", "Supervised backbones fine-tune better than contrastive ones", "§3.2, Table 2",
            "refined zoo: mean validation accuracy, supervised vs contrastive fine-tunes", "78.9 vs 74.8 %",
            "held if the supervised mean is higher")
    sup = _acc([m for m in ev.refined if m.get("task") == "supervised"])
    con = _acc([m for m in ev.refined if m.get("task") == "contrastive"])
    if not sup or not con:
        missing = " or ".join(t for t, v in (("supervised", sup), ("contrastive", con)) if not v)
        return _na(*args, f"the refined zoo (> {100 * ev.threshold:g} %) has no fine-tune of a {missing} backbone")
    return Finding(*args[:5], f"{_pct(_mean(sup))} vs {_pct(_mean(con))}", _verdict(_mean(sup) > _mean(con)),
                   args[5], f"{len(sup)} vs {len(con)} models")


def adamw_beats_sgd(ev: Evidence) -> Finding:
    args = ("adamw_vs_sgd", "AdamW fine-tunes better than SGD", "§3.2, Table 2",
            "refined zoo: mean validation accuracy, AdamW vs SGD", "80.1 vs 72.8 %",
            "held if the AdamW mean is higher")
    adam = _acc([m for m in ev.refined if m.get("optimizer") == "adamw"])
    sgd = _acc([m for m in ev.refined if m.get("optimizer") == "sgd"])
    if not adam or not sgd:
        missing = " or ".join(t for t, v in (("AdamW", adam), ("SGD", sgd)) if not v)
        return _na(*args, f"the refined zoo (> {100 * ev.threshold:g} %) has no {missing} fine-tune")
    return Finding(*args[:5], f"{_pct(_mean(adam))} vs {_pct(_mean(sgd))}", _verdict(_mean(adam) > _mean(sgd)),
                   args[5], f"{len(adam)} vs {len(sgd)} models")


COLLAPSE_RATIO = 1 / 3  # paper: SGD 1e-4 averages 8.5 %, AdamW 78.5 % (raw zoo): a ratio of 0.11


def sgd_low_lr_collapses(ev: Evidence) -> Finding:
    args = ("sgd_low_lr_collapses", "SGD at the lowest learning rate collapses", "§A.2, Table 6",
            "raw zoo: mean accuracy of SGD at the lowest lr / mean accuracy of AdamW fine-tunes",
            "2–17 % vs 78.5 % (ratio 0.11)",
            f"held if the ratio is below {COLLAPSE_RATIO:.2f} and SGD's lowest lr is its worst")
    sgd = [m for m in ev.finetuned if m.get("optimizer") == "sgd" and _num(m.get("validation_accuracy"))]
    adam = _acc([m for m in ev.finetuned if m.get("optimizer") == "adamw"])
    lrs = sorted({m["lr"] for m in sgd})
    if len(lrs) < 2 or not adam:
        return _na(*args, "needs SGD fine-tunes at two or more learning rates and AdamW fine-tunes")
    per_lr = {lr: _mean(_acc([m for m in sgd if m["lr"] == lr])) for lr in lrs}
    low = per_lr[lrs[0]]
    ratio = low / _mean(adam)
    cells = [_mean(_acc([m for m in sgd if m["lr"] == lrs[0] and m.get("task") == t and m.get("head") == h]))
             for t in ("supervised", "contrastive") for h in ("linear", "mlp")]
    cells = [c for c in cells if math.isfinite(c)]
    worst = low <= min(per_lr.values())
    return Finding(*args[:5], f"{_pct(min(cells))}–{_pct(max(cells))} vs {_pct(_mean(adam))} (ratio {ratio:.2f})",
                   _verdict(ratio < COLLAPSE_RATIO and worst), args[5],
                   "SGD per lr: " + ", ".join(f"{lr:g}: {_pct(a)}" for lr, a in per_lr.items()))


OVERFIT_MARGIN = 0.05  # paper: 14.2 points


def adamw_overfits_more(ev: Evidence) -> Finding:
    args = ("adamw_overfits", "AdamW overfits more than SGD (generalisation gap)", "§3.2, Table 2",
            "refined zoo: mean GGap (train − validation accuracy), AdamW vs SGD", "13.6 vs −0.6 points",
            f"held if AdamW's mean GGap exceeds SGD's by more than {100 * OVERFIT_MARGIN:g} points "
            "(a third of the paper's 14.2)")
    adam = _ggaps([m for m in ev.refined if m.get("optimizer") == "adamw"])
    sgd = _ggaps([m for m in ev.refined if m.get("optimizer") == "sgd"])
    if not adam or not sgd:
        return _na(*args, "the refined zoo needs AdamW and SGD fine-tunes with recorded train accuracy")
    a, s = _mean(adam), _mean(sgd)
    return Finding(*args[:5], f"{100 * a:.1f} vs {100 * s:.1f} points", _verdict(a - s > OVERFIT_MARGIN), args[5])


def lr_moves_generalisation_not_accuracy(ev: Evidence) -> Finding:
    args = ("lr_ggap_agreement", "The learning rate barely moves accuracy but strongly moves GGap and agreement",
            "§3.2, Table 2", "refined zoo, across learning rates: range of the mean accuracy, GGap and agreement",
            "accuracy 1.1, GGap 4.9, agreement 1.8 points",
            "held if the GGap range is more than twice the accuracy range and the agreement range exceeds it")
    lrs = sorted({m["lr"] for m in ev.refined if _num(m.get("lr"))})
    if len(lrs) < 2:
        return _na(*args, "the refined zoo has fewer than two learning rates")
    groups = [[m for m in ev.refined if m["lr"] == lr] for lr in lrs]
    acc = [_mean(_acc(g)) for g in groups]
    gap = [_mean(_ggaps(g)) for g in groups]
    agr = [_agreement(g) for g in groups]
    if any(not math.isfinite(x) for x in [*gap, *agr]):
        return _na(*args, "some learning rate has fewer than two refined models with predictions and train accuracy")
    r_acc, r_gap, r_agr = (100 * (max(v) - min(v)) for v in (acc, gap, agr))
    return Finding(*args[:5], f"accuracy {r_acc:.1f}, GGap {r_gap:.1f}, agreement {r_agr:.1f} points",
                   _verdict(r_gap > 2 * r_acc and r_agr > r_acc), args[5],
                   "per lr (acc / GGap / agreement %): " + "; ".join(
                       f"{lr:g}: {100 * a:.1f} / {100 * g:.1f} / {100 * r:.1f}"
                       for lr, a, g, r in zip(lrs, acc, gap, agr, strict=True)))


CLUSTER_RATIO = 5.0  # paper: between 2753 / within 325 = 8.5 ("one order of magnitude")


def clusters_around_parent(ev: Evidence) -> Finding:
    args = ("clusters", "Fine-tunes cluster around their parent: within-cluster distances an order of magnitude "
            "below between-cluster ones", "§3.2, Table 1",
            "mean L2 fine-tune → parent (within) vs mean pairwise L2 between backbones (between)",
            "325 vs 2753 (8.5×)", f"held if between / within ≥ {CLUSTER_RATIO:g}")
    pre = [m["name"] for m in ev.pretrained if m["name"] in ev.distance_names]
    fine = [m for m in ev.finetuned if m["name"] in ev.distance_names and m.get("parent") in pre]
    if len(pre) < 2 or not fine:
        return _na(*args, "needs two or more backbones and their fine-tunes in the distance matrix")
    idx = {n: i for i, n in enumerate(ev.distance_names)}
    d = ev.distances
    between = [float(d[idx[a], idx[b]]) for i, a in enumerate(pre) for b in pre[i + 1:]]
    within = [float(d[idx[m["name"]], idx[m["parent"]]]) for m in fine]
    nearest = sum(min(pre, key=lambda p, m=m: d[idx[m["name"]], idx[p]]) == m["parent"] for m in fine)
    ratio = _mean(between) / _mean(within) if _mean(within) > 0 else math.inf
    return Finding(*args[:5], f"{_mean(within):.4g} vs {_mean(between):.4g} ({ratio:.1f}×)",
                   _verdict(ratio >= CLUSTER_RATIO), args[5],
                   f"{nearest} of {len(fine)} fine-tunes are nearest to their own parent")


def kurtosis_separates_tasks(ev: Evidence) -> Finding:
    args = ("kurtosis_tasks", "Weight kurtosis separates the pre-training tasks", "§3.2, Table 1",
            "backbones' kurtosis per pre-training task (mean ± std)", "0.85±0.24 vs 3.06±0.22",
            "held if the two tasks' ranges do not overlap and the means differ by more than twice the larger "
            "within-task std")
    sup = [m["kurtosis"] for m in ev.pretrained if m.get("task") == "supervised" and _num(m.get("kurtosis"))]
    con = [m["kurtosis"] for m in ev.pretrained if m.get("task") == "contrastive" and _num(m.get("kurtosis"))]
    if not sup or not con:
        return _na(*args, "needs backbones of both pre-training tasks with kurtosis")
    if len(sup) < 2 and len(con) < 2:
        return _na(*args, "one backbone per task: no within-task spread to separate against")
    disjoint = max(sup) < min(con) or max(con) < min(sup)
    spread = max(pstdev(sup), pstdev(con))
    ok = disjoint and abs(_mean(sup) - _mean(con)) > 2 * spread
    return Finding(*args[:5], f"{_mean(sup):.3g}±{pstdev(sup):.2g} vs {_mean(con):.3g}±{pstdev(con):.2g}",
                   _verdict(ok), args[5], f"{len(sup)} vs {len(con)} backbones")


# ---------------------------------------------------------------------------------------------------------------
# Section 4: lineage and averaging


def epoch_average_beats_best(ev: Evidence) -> Finding:
    args = ("epoch_averaging", "Averaging the last 5 epochs beats the best of those 5 checkpoints in most models",
            "§4.2, Fig. 2a", "share of fine-tunes whose last-5 epoch average beats the best of the 5",
            "most models (\"small but consistent improvements\")", "held if the share is above 50 %")
    rows = ev.epoch_rows
    if not rows:
        return _na(*args, "no epoch-averaging results (run `vitzoo average --method epochs --window 5`)")
    gains = [r["gain"] for r in rows if _num(r.get("gain"))]
    wins = sum(g > 0 for g in gains)
    windows = sorted({_window(r) for r in rows} - {None})
    note = "" if windows in ([], [5]) else (f"window of {'/'.join(map(str, windows))} epochs: the zoo's fine-tunes "
                                            "have fewer than 5 trained epochs")
    return Finding(*args[:5], f"{wins} of {len(gains)} ({100 * wins / len(gains):.0f} %), mean gain "
                   f"{100 * _mean(gains):+.2f} pp", _verdict(wins > len(gains) / 2), args[5], note)


def _window(row: dict) -> int | None:
    """The number of epochs averaged, from `epochs_averaged` ("16-20")."""
    span = str(row.get("epochs_averaged") or "")
    a, _, b = span.partition("-")
    try:
        return int(float(b)) - int(float(a)) + 1
    except ValueError:
        return None


def seed_soups_most_promising(ev: Evidence) -> Finding:
    args = ("seed_soups", "Soups over the head seed are the most promising soups", "§4.2, Fig. 2b",
            "per varied factor: soups that beat their best member, and mean gain",
            "seed soups sometimes gain; lr, optimizer and head soups almost always lose",
            "held if seed soups have the highest mean gain of all factors and at least one beats its best member")
    rows = ev.soup_rows
    factors = sorted({r["factor"] for r in rows or []})
    if "head_seed" not in factors or len(factors) < 2:
        return _na(*args, "needs soup results over the head seed and at least one other factor "
                   "(run `vitzoo average --method soup`)")
    stats = {f: ([r["gain"] for r in rows if r["factor"] == f]) for f in factors}
    seed = stats["head_seed"]
    best = max(factors, key=lambda f: _mean(stats[f]))
    ok = best == "head_seed" and any(g > 0 for g in seed)
    return Finding(*args[:5], "; ".join(f"{f}: {sum(g > 0 for g in v)}/{len(v)}, {100 * _mean(v):+.1f} pp"
                                        for f, v in stats.items()), _verdict(ok), args[5])


def rebasin_destroys(ev: Evidence) -> Finding:
    args = ("rebasin", "Re-Basin merges of fine-tunes from different backbones destroy the models", "§4.2",
            "mean accuracy of Re-Basin merges (all backbones at once where there are ≥ 3, else aligned pairs)",
            "≤ 1 % on CIFAR-100 (chance 1 %)", "held if the merges' mean accuracy is below twice chance (n/a when "
            "the merged models themselves average under four times chance: nothing to destroy)")
    many, pairs = ev.rebasin_many or [], ev.rebasin_pairs or []
    if not many and not pairs:
        return _na(*args, "no Re-Basin results (run `vitzoo average --method rebasin`)")
    if not ev.num_classes:
        return _na(*args, "the number of classes (chance level) is unknown")
    chance = 1 / ev.num_classes
    if many:
        merged, what = [r["mergemany_average_accuracy"] for r in many], f"{len(many)} MergeMany merges"
    else:
        merged, what = [r["aligned_average_accuracy"] for r in pairs], f"{len(pairs)} aligned pairs"
    ends = [x for r in pairs for x in (r["accuracy_a"], r["accuracy_b"])]
    if ends and _mean(ends) < 4 * chance:
        return _na(*args, f"the models merged average {_pct(_mean(ends))}, under four times chance "
                   f"({_pct(chance)}): there is nothing to destroy")
    note = f"{what}; chance {_pct(chance)}"
    if ends:
        note += f"; endpoints {_pct(min(ends))}–{_pct(max(ends))}"
    return Finding(*args[:5], _pct(_mean(merged)), _verdict(_mean(merged) < 2 * chance), args[5], note)


# Table 3's reading: a branch's fine-tunes are scored against the pre-trained model they came from (truth
# `backbone`, under which the paper's 0.08-0.09 is about one edge per tree), MoTHeR told the number of trees (its
# k-means k); the epochs setting has no branching node, so both truths score it alike.
TABLE3_READING = {"truth": ("backbone", "lineage"), "trees": ("given", "estimated")}


def _table3_rows(rows: Sequence[dict]) -> list[dict]:
    """The rows of the preferred truth reading and tree mode that the results hold (untagged rows: as they are)."""
    for key, preferred in TABLE3_READING.items():
        present = {r.get(key) for r in rows}
        pick = next((p for p in preferred if p in present), None)
        if pick is not None:
            rows = [r for r in rows if r.get(key) == pick]
    return rows


def mother_chains_not_branches(ev: Evidence) -> Finding:
    args = ("mother", "MoTHeR recovers chains (epochs) but not branches (seed, lr, head, optimizer)",
            "§4.1, Table 3", "MoTHeR F1: epochs vs the best branching setting (truth `backbone` and trees `given` "
            "where the results hold them)", "0.82 vs ≤ 0.09",
            "held if F1 on epochs ≥ 0.5 and every branching setting's F1 is below half of it")
    rows = _table3_rows([r for r in ev.table3 or [] if r.get("method") == "mother" and r.get("metric") == "f1"])
    f1 = {r["setting"]: float(r["mean"]) for r in rows if r.get("mean") not in (None, "")}
    branches = {s: v for s, v in f1.items() if s != "epochs"}
    if "epochs" not in f1 or not branches:
        return _na(*args, "no Table 3 results for MoTHeR on the epochs setting and a branching one "
                   "(run `vitzoo lineage --experiment table3`)")
    ok = f1["epochs"] >= 0.5 and all(v < f1["epochs"] / 2 for v in branches.values())
    reading = ", ".join(f"{k} {rows[0][k]}" for k in TABLE3_READING if rows[0].get(k))
    return Finding(*args[:5], f"{f1['epochs']:.2f} vs ≤ {max(branches.values()):.2f}", _verdict(ok), args[5],
                   ", ".join(f"{s} {v:.2f}" for s, v in branches.items()) + (f" ({reading})" if reading else ""))


CHECKS: tuple[Callable[[Evidence], Finding], ...] = (
    supervised_beats_contrastive, adamw_beats_sgd, sgd_low_lr_collapses, adamw_overfits_more,
    lr_moves_generalisation_not_accuracy, clusters_around_parent, kurtosis_separates_tasks,
    epoch_average_beats_best, seed_soups_most_promising, rebasin_destroys, mother_chains_not_branches)


def check_all(ev: Evidence) -> list[Finding]:
    return [check(ev) for check in CHECKS]


# ---------------------------------------------------------------------------------------------------------------
# Rendering

COLUMNS = ("key", "claim", "where", "statistic", "paper", "zoo", "verdict", "rule", "note")


def to_csv(findings: Sequence[Finding]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for f in findings:
        w.writerow([getattr(f, c) for c in COLUMNS])
    return out.getvalue()


def to_markdown(findings: Sequence[Finding], zoo: str) -> str:
    held = sum(f.verdict == HELD for f in findings)
    applicable = sum(f.verdict != NA for f in findings)
    mark = {HELD: "✅ held", NOT_HELD: "❌ not held", NA: "– n/a"}
    lines = [f"# Zoo {zoo}: the paper's findings", "",
             f"**{held} of {len(findings)} held** ({applicable} applicable). Each row: the paper's claim, the "
             "statistic that tests it, the paper's value, this zoo's value, and the rule that decides.", "",
             "| # | finding | paper | this zoo | verdict |", "|---|---|---|---|---|"]
    for i, f in enumerate(findings, 1):
        lines.append(f"| {i} | {f.claim} ({f.where}) | {f.paper} | {f.zoo} | {mark[f.verdict]} |")
    lines += ["", "Statistics and rules:", ""]
    for i, f in enumerate(findings, 1):
        extra = f" — {f.note}" if f.note else ""
        lines.append(f"{i}. **{f.key}**: {f.statistic}; {f.rule}{extra}.")
    return "\n".join(lines) + "\n"
