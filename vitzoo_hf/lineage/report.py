"""`vitzoo lineage SOURCE --experiment table3`: the paper's Table 3 on any zoo, for MoTHeR and our method.

Writes, in OUT: table3.md (mean ± std over draws, with the run's settings), table3.csv (the same numbers),
table3_draws.csv (every draw and method), tree_<setting>.png (the first draw's truth beside each method's tree).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vitzoo_hf.errors import ZooError
from vitzoo_hf.lineage.table3 import SETTINGS, evaluate, markdown, summarise

DEFAULT_METHODS = ("mother", "ours")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _label(node: tuple[str, int], zoo) -> str:
    name, epoch = node
    row = zoo.model(name)
    if row["stage"] == "pretraining":
        return "-".join(name.split("-")[-3:-1])  # task and run seed, e.g. sup-s42
    parts = [row.get("head"), row.get("optimizer"), f"{row.get('lr'):g}" if row.get("lr") else None,
             f"h{row.get('head_seed')}"]
    return "-".join(str(p) for p in parts if p) + f"@{epoch}"


def run_table3(source: str, out: str | Path, draws: int = 5, seed: int = 0, methods: Sequence[str] = DEFAULT_METHODS,
               settings: Sequence[str] = tuple(SETTINGS), n_pretrained: int = 10, n_children: int = 12,
               truth: str = "lineage", trees: str = "given", progress: bool = True) -> dict:
    """Run the protocol on the zoo at `source` (folder or metadata repo id) and write the outputs to `out`."""
    from vitzoo_hf.lineage import METHODS
    from vitzoo_hf.lineage.plot import draw_trees
    from vitzoo_hf.lineage.weights import backbone
    from vitzoo_hf.zoo import Zoo

    for m in methods:
        if m not in METHODS:
            raise ZooError(f"unknown lineage method {m!r}; use any of {', '.join(METHODS)}")
    for s in settings:
        if s not in SETTINGS:
            raise ZooError(f"unknown Table 3 setting {s!r}; use any of {', '.join(SETTINGS)}")
    if draws < 1 or n_pretrained < 1 or n_children < 1:
        raise ZooError("--draws, --pretrained and --children must be at least 1")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ZooError(f"--out {out} is a file; give a folder (it is created if missing)")
    zoo = Zoo.open(source)
    rows = []
    for row in zoo.models:
        rows.append({**row, "checkpoint_epochs": zoo.epochs(row["name"])})
    if not any(r["stage"] == "finetuning" for r in rows):
        raise ZooError(f"zoo {zoo.name!r} has no fine-tuned models; lineage needs pre-trained models with children")

    def load(name: str, epoch: int):
        return backbone(zoo.weights_path(name, epoch))

    results, examples = evaluate(rows, load, list(methods), list(settings), draws=draws, seed=seed,
                                 n_pretrained=n_pretrained, n_children=n_children, truth=truth, trees=trees,
                                 progress=progress)
    done = [s for s in settings if s in examples]
    skipped = [s for s in settings if s not in examples]
    summary = summarise(results, done)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {s: (examples[s][0].nodes, examples[s][0].edges) for s in done}
    header = [
        f"# Lineage recovery, Table 3 protocol — zoo `{zoo.name}` ({source})",
        "",
        f"Mean ± std over {draws} draws (seed {seed}); per draw: up to {n_pretrained} pre-trained models x "
        f"{n_children} children; truth: {truth}; number of trees: {trees}. Accuracy over the full directed "
        "adjacency matrix (n x n), F1 on directed edges.",
        "",
        "Sub-zoo sizes (first draw): " + ", ".join(f"{s}: {len(n)} nodes / {len(e)} true edges"
                                                   for s, (n, e) in sizes.items()),
    ]
    if skipped:
        header += ["", f"Skipped (the zoo has no fine-tunes varying by that factor alone): {', '.join(skipped)}"]
    _write_atomic(out / "table3.md", "\n".join(header) + "\n\n" + markdown(summary, done) + "\n")
    flat = []
    for e in summary:
        for s in done:
            flat.append({"method": e["method"], "metric": e["metric"], "setting": s, "mean": e[s][0], "std": e[s][1],
                         "draws": draws})
    _write_atomic(out / "table3.csv", _csv(flat, ["method", "metric", "setting", "mean", "std", "draws"]))
    _write_atomic(out / "table3_draws.csv", _csv(results, ["setting", "draw", "method", "nodes", "true_edges",
                                                           "accuracy", "precision", "recall", "f1",
                                                           "tp", "fp", "fn", "tn"]))
    pngs = []
    for s in done:
        sub, predictions = examples[s]
        labels = {n: _label(n, zoo) for n in sub.nodes}
        tmp = out / f".tree_{s}.tmp.png"
        draw_trees(sub.nodes, sub.edges, predictions, tmp, labels=labels, title=f"{zoo.name}, setting '{s}', draw 0")
        os.replace(tmp, out / f"tree_{s}.png")
        pngs.append(out / f"tree_{s}.png")
    return {"summary": summary, "rows": results, "settings": done, "skipped": skipped, "out": out, "pngs": pngs,
            "markdown": markdown(summary, done)}
