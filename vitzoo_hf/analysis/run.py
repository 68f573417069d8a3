"""`vitzoo analyze SOURCE --out DIR`: the paper's tables, per-checkpoint statistics and figures for any zoo.

SOURCE is a zoo folder or a published zoo's metadata dataset repo id (`vitzoo_hf.zoo.Zoo.open`). From a published
zoo everything comes from the metadata (statistics, sketches, predictions) unless something is missing there;
`--update-metadata` then pushes the statistics computed here back to the metadata repo, so the next run needs
no weights at all.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from vitzoo_hf.analysis.population import Population, collect
from vitzoo_hf.errors import ZooError

STATS_FILE = "checkpoint_stats.csv"
CHECKPOINTS_PARQUET = "checkpoints/train-00000-of-00001.parquet"  # where `vitzoo publish` puts the config
STATS_HEADER = ("model", "epoch", "skewness", "kurtosis", "l2_norm", "l2_to_parent")  # + every definition's


def _write(path: Path, text: str) -> None:
    """Write atomically: a reader never sees half a file, an interrupted run leaves the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def checkpoint_stats_csv(pop: Population) -> str:
    """One row per checkpoint: skewness, kurtosis, L2 norm under the analysis's definition, the distance to the
    parent, then every definition's statistics (`skewness_flat`, ...)."""
    from vitzoo_hf.analysis.checkpoint import DEFINITION_COLUMNS, column

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([*STATS_HEADER, *DEFINITION_COLUMNS])
    chosen = {s: column(s, pop.statistics) for s in ("skewness", "kurtosis", "l2_norm")}
    for c in sorted(pop.checkpoints, key=lambda c: (c["name"], c["epoch"])):
        keys = [chosen.get(k, k) for k in STATS_HEADER[2:]] + list(DEFINITION_COLUMNS)
        w.writerow([c["name"], c["epoch"], *("" if c.get(k) is None else repr(c[k]) for k in keys)])
    return out.getvalue()


def distance_matrix_csv(pop: Population) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["model", *pop.distance_names])
    for name, row in zip(pop.distance_names, pop.distances, strict=True):
        w.writerow([name, *(repr(float(x)) for x in row)])
    return out.getvalue()


def check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold < 1.0:
        hint = f" (did you mean {threshold / 100:g}?)" if 1.0 <= threshold <= 100.0 else ""
        raise ZooError(f"--threshold {threshold:g} is not a fraction in [0, 1){hint}; the paper's refined zoo "
                       "uses 0.65 (validation accuracy above 65 %)")
    return threshold


def analyze(source: str | Path, out: str | Path, threshold: float = 0.65, update_metadata: bool = False,
            distances: str = "auto", figures: bool = True, progress: bool = True,
            averaging: str | Path | None = None, lineage: str | Path | None = None,
            statistics: str = "matrices") -> dict[str, Path]:
    """Write the paper's findings as checks (`findings.md`, `findings.csv`), Tables 1, 2, 6, 7, 8 (Markdown, CSV,
    LaTeX), `checkpoint_stats.csv`, the distance matrix and the figures for the zoo at `source` into `out`; return
    the written paths by name. `averaging` / `lineage`: folders written by `vitzoo average` (one subfolder per
    method, as the demo lays them out, or the method's own folder) and `vitzoo lineage --experiment table3`, whose
    results the averaging and lineage findings check (without them those findings are not applicable).
    `statistics`: which definition of skewness, kurtosis and L2 norm the tables use (`analysis.weights`)."""
    from vitzoo_hf.analysis.tables import all_tables
    from vitzoo_hf.zoo import Zoo

    check_threshold(threshold)
    check_study_folders(averaging, lineage)  # before anything is read or written
    zoo = Zoo.open(source)
    if update_metadata and not hasattr(zoo, "repo_id"):
        raise ZooError(f"--update-metadata needs a published zoo (its metadata dataset repo id); {source} is a "
                       "folder, whose statistics are computed from its weights on every run")
    pop = collect(zoo, distances=distances, progress=progress, statistics=statistics)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    tables = all_tables(pop, threshold)
    for t in tables:
        for ext, text in (("md", t.to_markdown()), ("csv", t.to_csv()), ("tex", t.to_latex())):
            written[f"{t.key}.{ext}"] = out / f"{t.key}.{ext}"
            _write(written[f"{t.key}.{ext}"], text)
    written["tables.md"] = out / "tables.md"
    _write(written["tables.md"], f"# Zoo {pop.name}: population analysis\n\n"
           + "\n".join(t.to_markdown() for t in tables))
    from vitzoo_hf.analysis import findings as fnd

    evidence = findings_evidence(zoo, pop, threshold, averaging, lineage)
    found = fnd.check_all(evidence)
    for name, text in (("findings.md", fnd.to_markdown(found, pop.name)), ("findings.csv", fnd.to_csv(found))):
        written[name] = out / name
        _write(written[name], text)
    written[STATS_FILE] = out / STATS_FILE
    _write(written[STATS_FILE], checkpoint_stats_csv(pop))
    written["distance_matrix.csv"] = out / "distance_matrix.csv"
    _write(written["distance_matrix.csv"], distance_matrix_csv(pop))
    if figures:
        from vitzoo_hf.analysis.figures import all_figures

        written.update({p.name: p for p in all_figures(pop, out)})
    if update_metadata:
        push_statistics(zoo, pop)
    return written


def push_statistics(zoo, pop: Population) -> bool:
    """Replace the metadata repo's `checkpoints` Parquet file with one whose statistics are all filled: one
    commit on top of the revision the analysis read (so a concurrent update is never overwritten). False when
    the metadata already had every statistic."""
    if pop.filled == 0:
        return False
    from datasets import Dataset
    from huggingface_hub import CommitOperationAdd, HfApi

    from vitzoo_hf.metadata import FEATURES

    features = FEATURES["checkpoints"]
    from vitzoo_hf.analysis.checkpoint import column
    from vitzoo_hf.analysis.weights import DEFAULT_DEFINITION

    rows = [{**r, **{s: r.get(column(s, DEFAULT_DEFINITION)) for s in ("skewness", "kurtosis", "l2_norm")}}
            for r in pop.checkpoints]  # the unsuffixed columns: the default definition's, always
    table = Dataset.from_dict({c: [r.get(c) for r in rows] for c in features}, features=features)
    buf = io.BytesIO()
    table.to_parquet(buf)
    HfApi().create_commit(zoo.repo_id, repo_type="dataset", parent_commit=getattr(zoo, "revision", None),
                          operations=[CommitOperationAdd(CHECKPOINTS_PARQUET, buf.getvalue())],
                          commit_message=f"Analysis statistics for {pop.filled} checkpoints (vitzoo analyze)")
    return True


def read_rows(path: Path) -> list[dict] | None:
    """A CSV written by our studies, numbers parsed (None if the file is missing)."""
    if not path.is_file():
        return None

    def value(x: str):
        if x == "":
            return None
        try:
            return float(x)
        except ValueError:
            return x

    with path.open(newline="") as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _study_file(folder: Path | None, method: str, name: str) -> Path:
    if folder is None:
        return Path("/nonexistent") / name
    return folder / method / name if (folder / method / name).is_file() else folder / name


def check_study_folders(averaging: str | Path | None, lineage: str | Path | None) -> None:
    for folder, flag in ((averaging, "--averaging"), (lineage, "--lineage")):
        if folder is not None and not Path(folder).is_dir():
            raise ZooError(f"{flag} {folder} is not a folder; give the --out folder of `vitzoo "
                           f"{'average' if flag == '--averaging' else 'lineage'}` (or leave the flag out)")


def findings_evidence(zoo, pop: Population, threshold: float, averaging: str | Path | None = None,
                      lineage: str | Path | None = None):
    """The `findings.Evidence` of a zoo: its population, and the averaging and lineage results found on disk."""
    from vitzoo_hf.analysis.findings import Evidence

    avg = Path(averaging) if averaging else None
    check_study_folders(averaging, lineage)
    epochs = read_rows(_study_file(avg, "epochs", "epochs_w5.csv")) or read_rows(_study_file(avg, "epochs",
                                                                                            "epochs.csv"))
    num_classes = None
    fine = pop.finetuned
    if fine:
        try:
            num_classes = len(zoo.class_names(fine[0]["name"]))
        except Exception:  # a zoo without a labels table: chance level unknown, that finding is n/a
            num_classes = None
    return Evidence(models=pop.models, distance_names=pop.distance_names, distances=pop.distances,
                    threshold=threshold, num_classes=num_classes, epoch_rows=epochs,
                    soup_rows=read_rows(_study_file(avg, "soup", "soups.csv")),
                    rebasin_pairs=read_rows(_study_file(avg, "rebasin", "rebasin_pairs.csv")),
                    rebasin_many=read_rows(_study_file(avg, "rebasin", "rebasin_many.csv")),
                    table3=read_rows(Path(lineage) / "table3.csv") if lineage else None)
