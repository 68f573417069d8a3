"""Model cards and the metadata dataset card, rendered from the templates in `vitzoo_hf/model_cards/` (the
repo's top-level `model_cards/` links there) through `huggingface_hub.ModelCard` / `DatasetCard`.

Everything a card says comes from the zoo's tables and training records (`vitzoo_hf.metadata`), so a card never
disagrees with the metadata dataset.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from vitzoo_hf import metadata
from vitzoo_hf.blueprint import format_lr

LICENSE = "cc-by-4.0"  # the paper's zoo (Appendix C.4)
CITATION = """@article{falk2025modelzoovit,
  title   = {A Model Zoo of Vision Transformers},
  author  = {Falk, Damian and Meynent, L{\\'e}o and Pfammatter, Florence and Sch{\\"u}rholt, Konstantin and
             Borth, Damian},
  journal = {arXiv preprint arXiv:2504.10231},
  note    = {ICLR 2025 Workshop},
  year    = {2025}
}"""

# Data set name (as blueprints give it) -> (Hub dataset id or None, terms of use).
DATASETS: dict[str, tuple[str | None, str]] = {
    "imagenet-1k": ("ILSVRC/imagenet-1k", "ImageNet-1k (ILSVRC 2012): use is subject to the ImageNet terms of "
                    "access: non-commercial research and educational purposes only "
                    "(https://image-net.org/download); the Hub copy is gated with these terms."),
    "cifar100": ("uoft-cs/cifar100", "CIFAR-100 (Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html): "
                 "no explicit licence; cite the technical report *Learning Multiple Layers of Features from Tiny "
                 "Images*."),
    "fashion_mnist": ("zalando-datasets/fashion_mnist", "Fashion-MNIST (Xiao et al., 2017): MIT licence."),
    "digits": (None, "UCI Optical Recognition of Handwritten Digits (as bundled with scikit-learn): CC BY 4.0."),
}


def template(name: str) -> str:
    """A card template shipped as package data (works from a wheel, not only a checkout)."""
    return resources.files("vitzoo_hf").joinpath(f"model_cards/{name}").read_text()


def dataset_hub_id(name: str) -> str | None:
    if name.startswith("hf:"):
        return name[3:]
    return DATASETS.get(name, (None, ""))[0]


def dataset_terms(name: str) -> str:
    if name.startswith("hf:"):
        return f"{name[3:]}: see the terms on its Hub page."
    if name.startswith("folder:"):
        return f"a local image folder ({name[7:]}): the terms of its images apply."
    return DATASETS.get(name, (None, f"{name}: see its source for terms."))[1]


def factor_tags(row: dict[str, Any]) -> list[str]:
    """One tag per generating factor (`optimizer:adamw`, `lr:1e-3`, ...), filterable with `list_models`."""
    keys = ("stage", "task", "dataset", "seed", "batch_size", "head", "head_seed", "optimizer", "lr",
            "weight_decay", "momentum", "epochs")
    tags = []
    for k in keys:
        v = row.get(k)
        if v is None:
            continue
        tags.append(f"{k}:{format_lr(v) if k in ('lr', 'weight_decay') and v else v}")
    return tags


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def render_model_card(zoo: str, model: dict[str, Any], record: dict[str, Any], results: list[dict[str, Any]],
                      children: list[str], siblings: int, zoo_size: int, metadata_repo: str,
                      parent_dataset: str | None = None) -> str:
    """The README.md of a model repo (identical on every branch)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    contrastive = model["stage"] == "pretraining" and model["task"] == "contrastive"
    pipeline_tag = "image-feature-extraction" if contrastive else "image-classification"
    ds_name = model["dataset"]
    hub_ds = dataset_hub_id(ds_name)
    parent_datasets = [parent_dataset] if parent_dataset else []
    datasets = [d for d in dict.fromkeys([*(dataset_hub_id(p) for p in parent_datasets), hub_ds]) if d]
    metric_name = "SimCLR retrieval top-1 (validation)" if contrastive else "validation accuracy"
    eval_results = []
    if model["validation_accuracy"] is not None:
        eval_results = [EvalResult(task_type=pipeline_tag, dataset_type=hub_ds or ds_name, dataset_name=ds_name,
                                   dataset_split="validation", metric_type="accuracy", metric_name=metric_name,
                                   metric_value=model["validation_accuracy"])]
    data = ModelCardData(
        library_name="transformers", pipeline_tag=pipeline_tag, license=LICENSE, datasets=datasets or None,
        base_model=model["parent_repo_id"], base_model_relation="finetune" if model["parent_repo_id"] else None,
        tags=["vitzoo", f"zoo:{zoo}", "vision-transformer", "model-zoo", *factor_tags(model)],
        metrics=["accuracy"], model_name=model["name"], eval_results=eval_results or None,
        zoo_name=zoo, final_epoch=model["final_epoch"],
    )
    how = f"{model['task']} backbone, {model['head']} head" if model["parent"] else f"{model['task']} pre-training"
    summary = f"A ViT {'fine-tuned' if model['parent'] else 'pre-trained'} on `{ds_name}` ({how})."
    factors = [(k, v) for k, v in record.get("factors", {}).items()]
    recipe_src = {**record.get("recipe", {}), "architecture": record.get("architecture"),
                  "optimizer": record.get("optimizer"), "seeds": record.get("seeds"),
                  "batch_size": record.get("batch_size")}
    recipe = [(k, v) for k, v in recipe_src.items() if v is not None]
    epochs = [{"branch": metadata.branch_name(r["epoch"]), "epoch": r["epoch"],
               **{k: _fmt(r.get(k)) for k in ("train_loss", "train_accuracy", "validation_loss",
                                              "validation_accuracy", "train_objective")}} for r in results]
    metric_note = ("Contrastive backbone: *acc* is SimCLR top-1 retrieval of the positive view, *loss* is "
                   "InfoNCE." if contrastive else "Losses and accuracies are measured with evaluation transforms "
                   "after each epoch; *train objective* is the mean training loss during the epoch.")
    terms = [dataset_terms(d) for d in dict.fromkeys([*parent_datasets, ds_name])]
    card = ModelCard.from_template(
        data, template_str=template("model_card.md"), name=model["name"], summary=summary, zoo=zoo,
        zoo_size=zoo_size, blueprint=record.get("blueprint", {}).get("source", zoo), metadata_repo=metadata_repo,
        metadata_url=f"/datasets/{metadata_repo}", factors=factors, recipe=recipe,
        final_epoch=model["final_epoch"], parent=model["parent"], parent_repo=model["parent_repo_id"],
        parent_url=f"/{model['parent_repo_id']}", siblings=siblings, children=children,
        task=model["task"], contrastive=contrastive, epochs=epochs, metric_note=metric_note,
        auto_class="AutoModel" if contrastive else "AutoModelForImageClassification", repo_id=model["repo_id"],
        data_terms=terms, citation=CITATION,
    )
    return str(card)


DESCRIPTIONS = {
    "models": "One row per model: its repo, lineage, every generating factor as a column, and the final epoch's "
              "metrics.",
    "checkpoints": "One row per model and published epoch: branch, commit, every metric of `result.json`, the "
                   "weights' sha256 and size, and weight statistics.",
    "predictions": "One row per classifier checkpoint: the predicted class of every validation example.",
    "labels": "One row per validation set: the true classes, in the order of `predictions`.",
}


def render_dataset_card(zoo: str, namespace: str, repo_id: str, tables: dict[str, Any], collection_url: str,
                        datasets: list[str]) -> str:
    """The README.md of the metadata dataset repo: one config per table, every column documented."""
    from huggingface_hub import DatasetCard, DatasetCardData

    configs = [{"config_name": c, "data_files": [{"split": "train", "path": f"{c}/*.parquet"}],
                **({"default": True} if c == "models" else {})} for c in metadata.CONFIGS]
    n = len(tables["checkpoints"])
    size = "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K"
    data = DatasetCardData(license=LICENSE, pretty_name=f"{zoo} model zoo metadata", configs=configs,
                           tags=["vitzoo", f"zoo:{zoo}", "model-zoo", "vision-transformer", "weight-space"],
                           size_categories=[size], zoo_name=zoo,
                           source_datasets=[d for d in (dataset_hub_id(x) for x in datasets) if d] or None)
    card = DatasetCard.from_template(
        data, template_str=template("dataset_card.md"), pretty_name=f"The {zoo} model zoo: metadata", zoo=zoo,
        n_models=len(tables["models"]), n_checkpoints=n, namespace=namespace, repo_id=repo_id,
        collection_url=collection_url, descriptions=DESCRIPTIONS,
        configs=[(c, list(metadata.COLUMNS[c].items())) for c in metadata.CONFIGS], citation=CITATION,
    )
    return str(card)
