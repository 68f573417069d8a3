"""The zoo's metadata schema, in one place: the `models`, `checkpoints`, `predictions` and `labels` tables.

A local zoo folder (the paper's layout, `vitzoo_hf.layout`) is read into these tables as `datasets.Dataset`s;
publishing pushes the very same tables (plus the Hub commit of every checkpoint) as the configs of the metadata
dataset repo, and `vitzoo_hf.Zoo` reads them back from either place. The columns are documented in `COLUMNS`
(that text also becomes the dataset card), so code, card and tables cannot drift apart.

Predictions are read with numpy (no tensors needed to build tables).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, List, Value

from vitzoo_hf import layout
from vitzoo_hf.checkpoints import read_json
from vitzoo_hf.errors import ZooError

CONFIGS = ("models", "checkpoints", "predictions", "labels")
METRICS = ("train_loss", "train_accuracy", "validation_loss", "validation_accuracy", "validation_examples",
           "train_objective", "seconds")
# Weight statistics under each definition of vitzoo_hf.analysis.weights.DEFINITIONS (the unsuffixed columns
# hold the default definition's, "matrices"); kept in step with analysis.checkpoint.DEFINITION_COLUMNS.
STAT_DEFINITIONS = {"matrices": "the blocks' weight matrices flattened together (no LayerNorm, biases, embeddings)",
                    "per_matrix": "each block weight matrix's own value, averaged over the matrices",
                    "flat": "every backbone parameter flattened together (LayerNorm, biases, embeddings included)"}
DEFINITION_COLUMNS = tuple(f"{s}_{d}" for d in STAT_DEFINITIONS for s in ("skewness", "kurtosis", "l2_norm"))
ANALYSIS_COLUMNS = ("skewness", "kurtosis", "l2_norm", "l2_to_parent", "sketch", *DEFINITION_COLUMNS)
# Files of a checkpoint folder that are not published (optimizer state: large and only useful to resume).
UNPUBLISHED_FILES = frozenset({layout.TRAINING_STATE_FILE})

_F64, _I64, _STR = Value("float64"), Value("int64"), Value("string")

FEATURES: dict[str, Features] = {
    "models": Features({
        "name": _STR, "repo_id": _STR, "stage": _STR, "task": _STR, "parent": _STR, "parent_repo_id": _STR,
        "dataset": _STR, "seed": _I64, "batch_size": _I64, "head": _STR, "head_seed": _I64, "optimizer": _STR,
        "lr": _F64, "weight_decay": _F64, "momentum": _F64, "epochs": _I64, "final_epoch": _I64,
        "validation_accuracy": _F64, "validation_loss": _F64, "train_accuracy": _F64, "train_loss": _F64,
    }),
    "checkpoints": Features({
        "name": _STR, "repo_id": _STR, "branch": _STR, "commit": _STR, "epoch": _I64,
        "train_loss": _F64, "train_accuracy": _F64, "validation_loss": _F64, "validation_accuracy": _F64,
        "validation_examples": _I64, "train_objective": _F64, "seconds": _F64,
        "weights_sha256": _STR, "weights_size": _I64,
        "skewness": _F64, "kurtosis": _F64, "l2_norm": _F64, "l2_to_parent": _F64, "sketch": List(_F64),
        **{c: _F64 for c in DEFINITION_COLUMNS},
    }),
    "predictions": Features({
        "name": _STR, "repo_id": _STR, "branch": _STR, "epoch": _I64, "validation_set": _STR,
        "predictions": List(_I64),
    }),
    "labels": Features({
        "validation_set": _STR, "dataset": _STR, "max_validation": _I64, "labels": List(_I64),
        "class_names": List(_STR),
    }),
}

COLUMNS: dict[str, dict[str, str]] = {
    "models": {
        "name": "model name (encodes its generating factors; unique in the zoo)",
        "repo_id": "Hub model repo (`ORG/name`); null for a local zoo read without a namespace",
        "stage": "`pretraining` (a backbone) or `finetuning` (a child of `parent`)",
        "task": "`supervised` or `contrastive` (SimCLR) pre-training; a fine-tune inherits its parent's",
        "parent": "name of the pre-trained backbone a fine-tune starts from (its final epoch); null for backbones",
        "parent_repo_id": "Hub repo of `parent`",
        "dataset": "training data set of this stage",
        "seed": "pre-training run seed (initialisation); null for fine-tunes",
        "batch_size": "training batch size (a generating factor in pre-training)",
        "head": "fine-tuning head: `linear` or `mlp`; null for backbones",
        "head_seed": "seed of the fine-tuning head's initialisation; null for backbones",
        "optimizer": "`adamw` or `sgd`",
        "lr": "learning rate (constant: no scheduler)",
        "weight_decay": "weight decay",
        "momentum": "SGD momentum; null for AdamW",
        "epochs": "planned training epochs",
        "final_epoch": "last trained epoch (the `main` branch of the model repo)",
        "validation_accuracy": "final epoch: validation accuracy (top-1; contrastive: SimCLR retrieval top-1)",
        "validation_loss": "final epoch: validation loss (contrastive: InfoNCE)",
        "train_accuracy": "final epoch: accuracy on the training split (evaluation transforms)",
        "train_loss": "final epoch: loss on the training split (evaluation transforms)",
    },
    "checkpoints": {
        "name": "model name (join with `models.name`)",
        "repo_id": "Hub model repo",
        "branch": "branch holding this epoch: `epoch-NNN` (the final epoch is also `main`)",
        "commit": "Hub commit sha of that branch at publication (pin it: `revision=commit`); null locally",
        "epoch": "epoch; 0 = the initialisation (fine-tunes: parent backbone + fresh head), before any training",
        "train_loss": "loss on the training split (evaluation transforms)",
        "train_accuracy": "accuracy on the training split (evaluation transforms)",
        "validation_loss": "validation loss",
        "validation_accuracy": "validation accuracy (contrastive: SimCLR retrieval top-1)",
        "validation_examples": "validation examples evaluated",
        "train_objective": "mean training objective over the epoch's steps (null at epoch 0)",
        "seconds": "wall time of the epoch (training + evaluation)",
        "weights_sha256": "sha256 of `model.safetensors` (= the LFS oid on the Hub)",
        "weights_size": "size of `model.safetensors` in bytes",
        "skewness": "skewness of the backbone's block weight matrices (definition `matrices`); null if not computed",
        "kurtosis": "excess kurtosis of the backbone's block weight matrices (`matrices`); null if not computed",
        "l2_norm": "L2 norm of the backbone's block weight matrices (`matrices`); null if not computed",
        "l2_to_parent": "L2 distance of the backbone to the parent's final backbone (fine-tunes); null otherwise",
        "sketch": "a fixed random projection of the backbone weights (for fast similarity); null if not computed",
        **{f"{s}_{d}": f"{s.replace('_', ' ')} under definition `{d.replace('_', '-')}`: {what}"
           for d, what in STAT_DEFINITIONS.items() for s in ("skewness", "kurtosis", "l2_norm")},
    },
    "predictions": {
        "name": "model name",
        "repo_id": "Hub model repo",
        "branch": "`epoch-NNN`",
        "epoch": "epoch",
        "validation_set": "key into the `labels` config: the validation examples these predictions refer to",
        "predictions": "predicted class index per validation example, in the `labels` order (classifiers only)",
    },
    "labels": {
        "validation_set": "key: `DATASET:validation:N` (N examples, stratified, seed 0; `all` when uncapped)",
        "dataset": "data set name",
        "max_validation": "cap on validation examples; null = the whole validation split",
        "labels": "true class index per validation example",
        "class_names": "class names, by index",
    },
}


def branch_name(epoch: int) -> str:
    """The Hub branch of a checkpoint: `epoch-NNN`."""
    return f"epoch-{epoch:03d}"


def repo_id_for(namespace: str | None, name: str | None) -> str | None:
    return f"{namespace}/{name}" if namespace and name else None


def metadata_repo_name(zoo: str) -> str:
    return f"{zoo}-metadata"


def validation_set_key(dataset: dict[str, Any]) -> str:
    cap = dataset.get("max_validation")
    return f"{dataset['name']}:validation:{'all' if cap is None else cap}"


# --------------------------------------------------------------------------------------------------------------
# A local zoo folder


@dataclass
class LocalModel:
    """One model folder of a zoo: its training record, per-epoch results and completed checkpoints."""

    name: str
    path: Path
    record: dict[str, Any]
    results: list[dict[str, Any]]
    checkpoints: dict[int, Path] = field(default_factory=dict)

    @property
    def parent(self) -> str | None:
        return self.record.get("parent")

    @property
    def final_epoch(self) -> int | None:
        return max(self.checkpoints) if self.checkpoints else None

    @property
    def complete(self) -> bool:
        planned = self.record.get("factors", {}).get("epochs")
        return planned in self.checkpoints and len(self.results) == planned + 1

    def manifest(self, epoch: int) -> dict[str, Any]:
        return read_json(self.checkpoints[epoch] / layout.MANIFEST_FILE)

    def result(self, epoch: int) -> dict[str, Any]:
        for row in self.results:
            if row.get("epoch") == epoch:
                return row
        return self.manifest(epoch)["metrics"]


def scan(zoo_dir: str | Path) -> list[LocalModel]:
    """Every model folder of a zoo (backbones first, each followed by nothing: children come after all
    backbones), or a clear error when the folder is not a zoo."""
    root = Path(zoo_dir)
    if not root.is_dir():
        raise ZooError(f"zoo folder {root} does not exist; give the --out folder of `vitzoo generate`")
    configs = sorted((root / "pretraining").glob(f"*/{layout.CONFIG_FILE}"))
    configs += sorted((root / "finetuning").glob(f"*/*/{layout.CONFIG_FILE}"))
    if not configs:
        raise ZooError(f"{root} is not a zoo folder (no pretraining/MODEL/{layout.CONFIG_FILE} or "
                       f"finetuning/PARENT/MODEL/{layout.CONFIG_FILE}); give the --out folder of `vitzoo generate`")
    models = []
    for cfg in configs:
        record = read_json(cfg)
        if not isinstance(record, dict) or "name" not in record or "factors" not in record:
            raise ZooError(f"{cfg} is not a vitzoo training record (no name/factors); is {root} a zoo folder?")
        results = read_json(cfg.parent / layout.RESULT_FILE, lines=True) \
            if (cfg.parent / layout.RESULT_FILE).exists() else []
        models.append(LocalModel(record["name"], cfg.parent, record, results, layout.checkpoints(cfg.parent)))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ZooError(f"{root} holds models with the same name in several folders ({', '.join(dup)}); keep one")
    return models


def zoo_name(models: list[LocalModel]) -> str:
    names = {m.record.get("blueprint", {}).get("name") for m in models}
    names.discard(None)
    if len(names) != 1:
        raise ZooError(f"the zoo folder mixes models of several blueprints ({sorted(map(str, names))}); "
                       "keep one blueprint per zoo folder")
    return names.pop()


# --------------------------------------------------------------------------------------------------------------
# Rows


def model_row(m: LocalModel, namespace: str | None) -> dict[str, Any]:
    f = m.record["factors"]
    final = m.result(m.final_epoch) if m.final_epoch is not None else {}
    pre = m.record["stage"] == "pretraining"
    return {
        "name": m.name, "repo_id": repo_id_for(namespace, m.name), "stage": m.record["stage"],
        "task": m.record.get("task", f.get("task")), "parent": m.parent,
        "parent_repo_id": repo_id_for(namespace, m.parent), "dataset": f.get("dataset"),
        "seed": f.get("seed") if pre else None, "batch_size": m.record.get("batch_size", f.get("batch_size")),
        "head": None if pre else f.get("head"), "head_seed": None if pre else f.get("head_seed"),
        "optimizer": f.get("optimizer"), "lr": f.get("lr"), "weight_decay": f.get("weight_decay"),
        "momentum": f.get("momentum"), "epochs": f.get("epochs"), "final_epoch": m.final_epoch,
        **{k: final.get(k) for k in ("validation_accuracy", "validation_loss", "train_accuracy", "train_loss")},
    }


def checkpoint_statistics(weights: Path, parent_weights: Path | None) -> dict[str, Any]:
    """The analysis columns of one checkpoint (skewness, kurtosis, l2_norm, l2_to_parent, sketch), computed by
    `vitzoo_hf.analysis` in one pass over the weights. Publishing fills them; a local `Zoo.from_dir` leaves them
    None (reading every weight file on each open would be slow) and `vitzoo analyze` computes what is missing."""
    from vitzoo_hf.analysis.checkpoint import checkpoint_statistics as compute

    return compute(weights, parent_weights)


def checkpoint_row(m: LocalModel, epoch: int, namespace: str | None, commit: str | None = None,
                   parent_weights: Path | None = None,
                   statistics: Callable[[Path, Path | None], dict[str, Any]] | None = None) -> dict[str, Any]:
    ckpt = m.checkpoints[epoch]
    manifest = m.manifest(epoch)
    metrics = {**manifest.get("metrics", {}), **m.result(epoch)}
    weights = ckpt / layout.WEIGHTS_FILE
    stats = statistics(weights, parent_weights) if statistics else dict.fromkeys(ANALYSIS_COLUMNS)
    return {
        "name": m.name, "repo_id": repo_id_for(namespace, m.name), "branch": branch_name(epoch), "commit": commit,
        "epoch": epoch, **{k: metrics.get(k) for k in METRICS},
        "weights_sha256": manifest["sha256"][layout.WEIGHTS_FILE], "weights_size": weights.stat().st_size,
        **{k: stats.get(k) for k in ANALYSIS_COLUMNS},
    }


def read_predictions(ckpt: Path) -> list[int] | None:
    """The stored validation predictions of a checkpoint (None for contrastive backbones, which have none)."""
    path = ckpt / layout.PREDICTIONS_FILE
    if not path.exists():
        return None
    from safetensors.numpy import load_file

    return load_file(str(path))["predictions"].astype("int64").tolist()


def prediction_row(m: LocalModel, epoch: int, namespace: str | None) -> dict[str, Any] | None:
    preds = read_predictions(m.checkpoints[epoch])
    if preds is None:
        return None
    return {"name": m.name, "repo_id": repo_id_for(namespace, m.name), "branch": branch_name(epoch), "epoch": epoch,
            "validation_set": validation_set_key(m.record["recipe"]["dataset"]), "predictions": preds}


def validation_labels(dataset: dict[str, Any]) -> dict[str, Any]:
    """The validation labels a model's predictions refer to: the same split, cap and order training used."""
    from vitzoo_hf.data import validation_labels_and_names

    labels, names = validation_labels_and_names(dataset)
    return {"validation_set": validation_set_key(dataset), "dataset": dataset["name"],
            "max_validation": dataset.get("max_validation"), "labels": labels, "class_names": names}


# --------------------------------------------------------------------------------------------------------------
# Tables


def table(config: str, rows: Iterable[dict[str, Any]]) -> Dataset:
    features = FEATURES[config]
    rows = list(rows)
    return Dataset.from_dict({c: [r.get(c) for r in rows] for c in features}, features=features)


def parent_weights(models: dict[str, LocalModel], m: LocalModel) -> Path | None:
    """The parent's final weights (what a fine-tune started from)."""
    parent = models.get(m.parent) if m.parent else None
    if parent is None or parent.final_epoch is None:
        return None
    return parent.checkpoints[parent.final_epoch] / layout.WEIGHTS_FILE


def build_tables(models: list[LocalModel], namespace: str | None = None,
                 epochs: Callable[[LocalModel], list[int]] | None = None,
                 commits: dict[tuple[str, int], str] | None = None, with_labels: bool = True,
                 statistics: Callable[[Path, Path | None], dict[str, Any]] | None = None,
                 missing_labels: list[str] | None = None) -> dict[str, Dataset]:
    """The four tables of a zoo. `epochs(model)` selects the checkpoints (default: all); `commits` maps
    (name, epoch) to a Hub commit sha; `statistics` computes the analysis columns (None: left None, e.g.
    `checkpoint_statistics`); `with_labels=False` skips loading the validation sets. A validation set
    that cannot be loaded here is left out of `labels` and its key appended to `missing_labels`."""
    by_name = {m.name: m for m in models}
    chosen = {m.name: (epochs(m) if epochs else list(m.checkpoints)) for m in models}
    ckpt_rows, pred_rows = [], []
    for m in models:
        pw = parent_weights(by_name, m)
        for e in chosen[m.name]:
            ckpt_rows.append(checkpoint_row(m, e, namespace, (commits or {}).get((m.name, e)), pw, statistics))
            if (row := prediction_row(m, e, namespace)) is not None:
                pred_rows.append(row)
    label_rows = []
    if with_labels:
        sets = {validation_set_key(m.record["recipe"]["dataset"]): m.record["recipe"]["dataset"] for m in models
                if any(r["name"] == m.name for r in pred_rows)}
        for key, ds in sorted(sets.items()):
            try:
                label_rows.append(validation_labels(ds))
            except ZooError:
                if missing_labels is None:
                    raise
                missing_labels.append(key)
    return {"models": table("models", (model_row(m, namespace) for m in models)),
            "checkpoints": table("checkpoints", ckpt_rows), "predictions": table("predictions", pred_rows),
            "labels": table("labels", label_rows)}


def tables_from_dir(zoo_dir: str | Path, namespace: str | None = None, with_labels: bool = True) -> dict[str, Dataset]:
    return build_tables(scan(zoo_dir), namespace, with_labels=with_labels)
