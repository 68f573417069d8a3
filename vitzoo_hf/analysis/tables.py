"""The paper's Tables 1, 2, 6, 7 and 8 for any zoo, from a `Population`; rendered as Markdown, CSV and LaTeX.

Builders are pure (a Population in, a `Table` out). Accuracies, GGap and agreement are in percent; mean ± std
uses the population standard deviation. Where a cell has no data (e.g. between-cluster distances with a single
pre-trained model per task, or a factor value the refined zoo filtered out) it reads "–". For the `paper` zoo
each of our columns is followed by the paper's value ("… (paper)", from `paper_values`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitzoo_hf.analysis import paper_values
from vitzoo_hf.analysis.agreement import group_agreement
from vitzoo_hf.analysis.distances import between_cluster
from vitzoo_hf.analysis.performance import Summary, generalisation_gap
from vitzoo_hf.analysis.population import Population
from vitzoo_hf.blueprint import format_lr

DASH = "–"
TASK_LABELS = {"supervised": "Supervised", "contrastive": "Contrastive"}
TASK_SHORT = {"supervised": "Sup.", "contrastive": "Contr."}
OPTIMIZER_LABELS = {"adamw": "AdamW", "sgd": "SGD"}
HEAD_LABELS = {"linear": "Linear", "mlp": "MLP"}
TASK_ORDER = ("supervised", "contrastive")


@dataclass(frozen=True)
class Column:
    """A column: `fmt` is a format spec (".2f") or "sig" (about 4 significant digits); `style` how a Summary
    shows: "pm" (mean±std) or "paren" (mean (std))."""

    name: str
    fmt: str = ".2f"
    style: str = "pm"


@dataclass
class Table:
    key: str
    title: str
    columns: list[Column]
    rows: list[list[Any]]  # str labels, numbers, Summary, None
    row_keys: list[tuple] = field(default_factory=list)  # paper_values keys, one per row
    label_columns: int = 1
    notes: list[str] = field(default_factory=list)

    def header(self) -> list[str]:
        return [c.name for c in self.columns]

    def text_rows(self, latex: bool = False) -> list[list[str]]:
        return [[_fmt(v, c, latex) for v, c in zip(row, self.columns, strict=True)] for row in self.rows]

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header()) + " |",
                 "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in self.text_rows()]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def to_csv(self) -> str:
        """Numbers as numbers: a mean±std column becomes `NAME mean` and `NAME std`."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        summary_cols = {i for i, c in enumerate(self.columns) if any(isinstance(r[i], Summary) for r in self.rows)}
        head = []
        for i, c in enumerate(self.columns):
            head += [f"{c.name} mean", f"{c.name} std"] if i in summary_cols else [c.name]
        w.writerow(head)
        for r in self.rows:
            cells: list[Any] = []
            for i, v in enumerate(r):
                if i in summary_cols:
                    cells += [_num(v.mean), _num(v.std)] if isinstance(v, Summary) else [_num(v), ""]
                else:
                    cells.append(_num(v))
            w.writerow(cells)
        return out.getvalue()

    def to_latex(self) -> str:
        align = "l" * self.label_columns + "r" * (len(self.columns) - self.label_columns)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(self.title)}}}",
                 rf"\begin{{tabular}}{{{align}}}", r"\toprule",
                 " & ".join(_tex(h) for h in self.header()) + r" \\", r"\midrule"]
        lines += [" & ".join(r) + r" \\" for r in self.text_rows(latex=True)]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"


def _num(v: Any) -> Any:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return v


def _decimals(fmt: str, x: float) -> str:
    if fmt != "sig":
        return fmt
    if x == 0 or not math.isfinite(x):
        return ".2f"
    return f".{min(4, max(0, 3 - math.floor(math.log10(abs(x)))))}f"


def _fmt(v: Any, col: Column, latex: bool = False) -> str:
    if isinstance(v, str):
        return _tex(v) if latex else v
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "--" if latex else DASH
    if isinstance(v, Summary):
        if v.n == 0:
            return "--" if latex else DASH
        spec = _decimals(col.fmt, v.mean)
        mean, std = format(v.mean, spec), format(v.std, spec)
        if col.style == "paren":
            return f"{mean} ({std})"
        return f"${mean}\\pm{std}$" if latex else f"{mean}±{std}"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return format(v, _decimals(col.fmt, v))


_TEX = {"%": r"\%", "_": r"\_", "&": r"\&", "#": r"\#", "±": r"$\pm$", "µ": r"$\mu$", "σ": r"$\sigma$",
        "λ": r"$\lambda$", "–": "--", "−": "-"}


def _tex(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


# ---------------------------------------------------------------------------------------------------------------
# Helpers over populations

def _pct(values: Sequence[float | None]) -> list[float | None]:
    return [None if v is None else 100.0 * v for v in values]


def _acc(models: Sequence[dict]) -> Summary:
    return Summary.of(_pct([m["validation_accuracy"] for m in models]))


def _ggap(models: Sequence[dict]) -> Summary:
    return Summary.of([100.0 * generalisation_gap(m["train_accuracy"], m["validation_accuracy"]) for m in models
                       if m["train_accuracy"] is not None and m["validation_accuracy"] is not None])


def _agreement(models: Sequence[dict]) -> Summary:
    preds = [m["predictions"] for m in models if m.get("predictions") is not None]
    s = group_agreement(preds)
    return Summary(s.n, 100 * s.mean, 100 * s.std, 100 * s.min, 100 * s.max)


def _stat(models: Sequence[dict], key: str) -> Summary:
    return Summary.of([m.get(key) for m in models])


def _lrs(models: Sequence[dict]) -> list[float]:
    return sorted({m["lr"] for m in models}, reverse=True)


def _present(order: Sequence[str], models: Sequence[dict], key: str) -> list[str]:
    found = {m[key] for m in models}
    return [v for v in order if v in found] + sorted(v for v in found if v not in order)


# ---------------------------------------------------------------------------------------------------------------
# Builders


def table1(pop: Population) -> Table:
    """Pre-trained models per pre-training task: accuracy (supervised), weight statistics, distances."""
    pre = pop.pretrained
    names = [m["name"] for m in pre]
    idx = [pop.distance_names.index(n) for n in names]
    between = between_cluster(pop.distances[np.ix_(idx, idx)], [m["task"] for m in pre])
    rows, keys = [], []
    for task in [*_present(TASK_ORDER, pre, "task"), "all"]:
        group = pre if task == "all" else [m for m in pre if m["task"] == task]
        children = [m for m in pop.finetuned if task in ("all", m["task"])]
        label = "All" if task == "all" else TASK_LABELS.get(task, task)
        accuracy = _acc(group) if task == "supervised" else None
        rows.append([label, accuracy, _stat(group, "skewness"), _stat(group, "kurtosis"), _stat(group, "l2_norm"),
                     _stat(children, "l2_to_parent"), Summary.of(between.get(task, []))])
        keys.append((label,))
    cols = [Column("λP", ""), Column("Accuracy"), Column("Skewness", ".3f"), Column("Kurtosis"),
            Column("L2 norm", "sig"), Column("L2 within cluster", "sig"), Column("L2 between cluster", "sig")]
    notes = ["Accuracy: validation accuracy (%) of the supervised pre-trained models (contrastive ones: Table 8).",
             f"Weight statistics of each final backbone, definition `{pop.statistics}` (vitzoo analyze "
             "--statistics); L2 within cluster: fine-tuned models to "
             "their pre-trained ancestor; between cluster: pairwise between pre-trained models "
             f"({'estimated from the metadata sketches' if pop.distance_method == 'sketch' else 'exact'})."]
    return _with_paper(pop, Table("table1", "Table 1: pre-trained models", cols, rows, keys, 1, notes))


def table2(pop: Population, threshold: float = 0.65) -> Table:
    """The refined zoo (final validation accuracy above `threshold`), mean ± std per generating factor."""
    fine = pop.finetuned
    refined = [m for m in fine if m["validation_accuracy"] is not None and m["validation_accuracy"] > threshold]
    groups: list[tuple[str, str, Callable[[dict], bool]]] = []
    for task in _present(TASK_ORDER, fine, "task"):
        groups.append(("Pre-training", TASK_SHORT.get(task, task), lambda m, t=task: m["task"] == t))
    for head in _present(("mlp", "linear"), fine, "head"):
        groups.append(("Head", HEAD_LABELS.get(head, head), lambda m, h=head: m["head"] == h))
    for opt in _present(("adamw", "sgd"), fine, "optimizer"):
        groups.append(("Optimizer", OPTIMIZER_LABELS.get(opt, opt), lambda m, o=opt: m["optimizer"] == o))
    for lr in _lrs(fine):
        groups.append(("LR", format_lr(lr), lambda m, x=lr: m["lr"] == x))
    groups.append(("All", DASH, lambda m: True))
    rows, keys = [], []
    for factor, value, pick in groups:
        g = [m for m in refined if pick(m)]
        rows.append([factor, value, _acc(g), _ggap(g), _agreement(g), _stat(g, "skewness"), _stat(g, "kurtosis"),
                     _stat(g, "l2_norm"), _stat(g, "l2_to_parent")])
        keys.append((factor, value))
    cols = [Column("factor", ""), Column("value", ""), Column("Accuracy"), Column("GGap"), Column("Agreement"),
            Column("Skewness", ".3f"), Column("Kurtosis"), Column("L2 norm", "sig"), Column("L2 distance", "sig")]
    notes = [f"Refined zoo: {len(refined)} of {len(fine)} fine-tuned models with final validation accuracy "
             f"> {100 * threshold:g} %.",
             "GGap = train accuracy (recorded, on clean training images) − validation accuracy; agreement: "
             "pairwise share of identical validation predictions within the row's models; L2 distance: to the "
             "pre-trained ancestor. Percent except weight statistics and distances."]
    return _with_paper(pop, Table("table2", f"Table 2: refined zoo (validation accuracy > {100 * threshold:g} %)",
                                  cols, rows, keys, 2, notes), comparable=threshold == 0.65)


def table6(pop: Population) -> Table:
    """The raw zoo per pre-training task x optimizer x head x LR: min, max, mean (std), GGap, agreement."""
    fine = pop.finetuned
    rows, keys = [], []
    for task in _present(("contrastive", "supervised"), fine, "task"):
        for opt in _present(("adamw", "sgd"), fine, "optimizer"):
            for lr in _lrs(fine):
                for head in _present(("linear", "mlp"), fine, "head"):
                    g = [m for m in fine if m["task"] == task and m["optimizer"] == opt
                         and m["head"] == head and m["lr"] == lr]
                    if not g:
                        continue
                    acc = _acc(g)
                    label = (TASK_LABELS.get(task, task), OPTIMIZER_LABELS.get(opt, opt), HEAD_LABELS.get(head, head),
                             format_lr(lr))
                    rows.append([*label, acc.min, acc.max, acc, _ggap(g).mean, _agreement(g)])
                    keys.append(label)
    cols = [Column("Pre-training", ""), Column("Optimizer", ""), Column("Head", ""), Column("LR", ""),
            Column("Min"), Column("Max"), Column("µ (σ)", style="paren"), Column("Gen gap"),
            Column("Agreement", style="paren")]
    notes = ["All fine-tuned models (raw zoo), final epoch; each row pools the head seeds over the pre-trained "
             "models of that task. Percent."]
    return _with_paper(pop, Table("table6", "Table 6: raw zoo per pre-training, optimizer, head and LR", cols, rows,
                                  keys, 4, notes))


def _runs_table(pop: Population, task: str, key: str, title: str, loss: str, note: str) -> Table:
    rows, keys = [], []
    for m in pop.select(stage="pretraining", task=task):
        acc = m["validation_accuracy"]
        rows.append([m["seed"], m["batch_size"], None if acc is None else 100 * acc, m["validation_loss"]])
        keys.append((m["seed"], m["batch_size"]))
    cols = [Column("Seed", ""), Column("Batch size", ""), Column("Validation accuracy"), Column(loss, ".4f")]
    return _with_paper(pop, Table(key, title, cols, rows, keys, 2, [note]))


def table7(pop: Population) -> Table:
    return _runs_table(pop, "supervised", "table7", "Table 7: supervised pre-training runs", "Loss (CE)",
                       "Final epoch; validation accuracy in percent.")


def table8(pop: Population) -> Table:
    return _runs_table(pop, "contrastive", "table8", "Table 8: contrastive pre-training runs", "Loss (Info-NCE)",
                       "Final epoch; validation accuracy = top-1 retrieval of the other view (percent).")


def all_tables(pop: Population, threshold: float = 0.65) -> list[Table]:
    return [table1(pop), table2(pop, threshold), table6(pop), table7(pop), table8(pop)]


def _with_paper(pop: Population, table: Table, comparable: bool = True) -> Table:
    """For the paper's zoo: each value column followed by the paper's value for the same row."""
    if pop.name != paper_values.PAPER_ZOO or not comparable:
        return table
    columns, values = paper_values.TABLES[table.key]
    new_cols, picks = [], []
    for i, c in enumerate(table.columns):
        new_cols.append(c)
        picks.append((i, None))
        if c.name in columns:
            new_cols.append(Column(f"{c.name} (paper)", ""))
            picks.append((i, columns.index(c.name)))
    rows = []
    for key, row in zip(table.row_keys, table.rows, strict=True):
        paper = values.get(key)
        rows.append([row[i] if j is None else (paper[j] if paper else DASH) for i, j in picks])
    return Table(table.key, table.title, new_cols, rows, table.row_keys, table.label_columns,
                 [*table.notes, "Columns marked (paper): the values the paper reports."])
