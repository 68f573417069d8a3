"""`Zoo`: one interface to a model zoo, whether it lies in a local folder or was published to the Hub.

    zoo = Zoo.from_dir("zoo")                    # the paper's folder layout (vitzoo generate --out zoo)
    zoo = Zoo.from_hub("ORG/mini-metadata")      # the metadata dataset repo of a published zoo
    zoo = Zoo.open(source)                       # a folder if it exists, else a Hub dataset repo id

The tables (`models`, `checkpoints`) are the metadata schema of `vitzoo_hf.metadata`; weights, predictions,
labels and training records come from the folder, or from the Hub through the normal Hugging Face cache
(`hf_hub_download`: nothing is downloaded twice). Columns only a published zoo fills: in `checkpoints`, `commit`
and the analysis columns (skewness, kurtosis, l2_norm, l2_to_parent, sketch: computed at publish time; locally
None, `vitzoo analyze` computes them); `repo_id` / `parent_repo_id` a local zoo has only when `from_dir` is given
the `namespace` it was published under.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitzoo_hf import layout, metadata
from vitzoo_hf.checkpoints import read_json
from vitzoo_hf.errors import ZooError

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
TRAINING_DIR = "training"  # where a published checkpoint keeps the zoo's own config/result/manifest files


class Zoo:
    """A model zoo: its tables plus access to every checkpoint's weights, predictions and records."""

    def __init__(self, name: str, models: Dataset, checkpoints: Dataset, source: str) -> None:
        self.name = name
        self.models = models
        self.checkpoints = checkpoints
        self.source = source
        self._rows = {r["name"]: r for r in models}
        self._records: dict[str, dict[str, Any]] = {}
        self._label_sets: dict[str, dict[str, Any]] = {}
        self._epochs: dict[str, dict[int, dict[str, Any]]] = {}
        for r in checkpoints:
            self._epochs.setdefault(r["name"], {})[r["epoch"]] = r

    # ---- constructors ------------------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, zoo_dir: str | Path, namespace: str | None = None) -> Zoo:
        """A local zoo folder; `namespace` (the Hub org it is or will be published under) fills `repo_id`."""
        return _DirZoo(Path(zoo_dir), namespace)

    @classmethod
    def from_hub(cls, repo_id: str, revision: str | None = None) -> Zoo:
        """A published zoo, from its metadata dataset repo (`ORG/<zoo>-metadata`)."""
        return _HubZoo(repo_id, revision)

    @classmethod
    def open(cls, source: str | Path) -> Zoo:
        """A folder if `source` is one, else a Hub dataset repo id."""
        if Path(source).is_dir():
            return cls.from_dir(source)
        if isinstance(source, str) and _REPO_ID_RE.match(source):
            return cls.from_hub(source)
        raise ZooError(f"{source!r} is neither a zoo folder nor a Hub repo id (ORG/NAME-metadata); give the "
                       "--out folder of `vitzoo generate` or a published zoo's metadata dataset repo")

    # ---- lookups -----------------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"Zoo({self.name!r}, {len(self.models)} models, {len(self.checkpoints)} checkpoints, {self.source})"

    def __len__(self) -> int:
        return len(self.models)

    @property
    def names(self) -> list[str]:
        return list(self._rows)

    def model(self, name: str) -> dict[str, Any]:
        """The `models` row of a model."""
        try:
            return self._rows[name]
        except KeyError:
            close = [n for n in self._rows if name in n or n in name][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ZooError(f"zoo {self.name!r} has no model {name!r}{hint}; see zoo.models['name']") from None

    def epochs(self, name: str) -> list[int]:
        """The checkpoints (epochs) this zoo holds for a model."""
        self.model(name)
        return sorted(self._epochs.get(name, {}))

    def checkpoint(self, name: str, epoch: int | None = None) -> dict[str, Any]:
        """The `checkpoints` row of a model's epoch (None = final)."""
        row = self.model(name)
        epoch = row["final_epoch"] if epoch is None else epoch
        found = self._epochs.get(name, {}).get(epoch)
        if found is None:
            raise ZooError(f"model {name!r} has no checkpoint for epoch {epoch} in zoo {self.name!r} "
                           f"(it has {self.epochs(name)})")
        return found

    def lineage(self) -> list[tuple[str, str]]:
        """True (parent, child) edges, by model name."""
        return [(r["parent"], r["name"]) for r in self.models if r["parent"]]

    def children(self, name: str) -> list[str]:
        return [child for parent, child in self.lineage() if parent == name]

    # ---- tensors and records -----------------------------------------------------------------------------------

    def weights_path(self, name: str, epoch: int | None = None) -> Path:
        """The local `model.safetensors` of a checkpoint (on the Hub: downloaded once into the HF cache)."""
        return self._file(name, epoch, layout.WEIGHTS_FILE)

    def state_dict(self, name: str, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors, read from safetensors without building a model."""
        from safetensors.torch import load_file

        return load_file(str(self.weights_path(name, epoch)))

    def predictions(self, name: str, epoch: int | None = None) -> torch.Tensor:
        """int64 predicted class per validation example (classifiers; contrastive backbones have none)."""
        import torch

        ckpt = self.checkpoint(name, epoch)
        preds = self._predictions(name, ckpt["epoch"])
        if preds is None:
            raise ZooError(f"model {name!r} has no stored predictions (contrastive backbones are not classifiers); "
                           "use a supervised backbone or a fine-tuned model")
        return torch.tensor(preds, dtype=torch.int64)

    def labels(self, name: str) -> torch.Tensor:
        """int64 true class per validation example, in the order of `predictions(name, ...)`."""
        import torch

        return torch.tensor(self._labels(self.validation_set(name))["labels"], dtype=torch.int64)

    def class_names(self, name: str) -> list[str]:
        return list(self._labels(self.validation_set(name))["class_names"])

    def validation_set(self, name: str) -> str:
        return metadata.validation_set_key(self.record(name)["recipe"]["dataset"])

    def load_model(self, name: str, epoch: int | None = None):
        """The transformers model at that epoch (`ZooViTForImageClassification`; contrastive backbones:
        `ZooViTModel`), in eval mode."""
        from vitzoo_hf.modeling import ZooViTForImageClassification, ZooViTModel

        row = self.model(name)
        cls = ZooViTModel if (row["stage"], row["task"]) == ("pretraining", "contrastive") \
            else ZooViTForImageClassification
        source, kwargs = self._model_source(name, epoch)
        return cls.from_pretrained(source, **kwargs).eval()

    def record(self, name: str) -> dict[str, Any]:
        """The model's training record (its `config.json`: factors, recipe, seeds, versions)."""
        if name not in self._records:
            self._records[name] = self._record(name)
        return self._records[name]

    def _labels(self, key: str) -> dict[str, Any]:
        if key not in self._label_sets:
            self._label_sets[key] = self._load_labels(key)
        return self._label_sets[key]

    def predictions_table(self) -> Dataset:
        """The `predictions` config: one row per classifier checkpoint."""
        raise NotImplementedError

    def labels_table(self) -> Dataset:
        """The `labels` config: one row per validation set."""
        raise NotImplementedError

    # ---- backend hooks -----------------------------------------------------------------------------------------

    def _file(self, name: str, epoch: int | None, filename: str) -> Path:
        raise NotImplementedError

    def _predictions(self, name: str, epoch: int) -> list[int] | None:
        raise NotImplementedError

    def _load_labels(self, key: str) -> dict[str, Any]:
        raise NotImplementedError

    def _record(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    def _model_source(self, name: str, epoch: int | None) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError


class _DirZoo(Zoo):
    def __init__(self, root: Path, namespace: str | None) -> None:
        self.root = root
        self.namespace = namespace
        self._local = {m.name: m for m in metadata.scan(root)}
        tables = metadata.build_tables(list(self._local.values()), namespace, with_labels=False)
        super().__init__(metadata.zoo_name(list(self._local.values())), tables["models"], tables["checkpoints"],
                         str(root))

    def _ckpt_dir(self, name: str, epoch: int | None) -> Path:
        return self._local[name].checkpoints[self.checkpoint(name, epoch)["epoch"]]

    def _file(self, name: str, epoch: int | None, filename: str) -> Path:
        return self._ckpt_dir(name, epoch) / filename

    def _predictions(self, name: str, epoch: int) -> list[int] | None:
        return metadata.read_predictions(self._local[name].checkpoints[epoch])

    def _record(self, name: str) -> dict[str, Any]:
        self.model(name)
        return self._local[name].record

    def _load_labels(self, key: str) -> dict[str, Any]:
        for m in self._local.values():
            if metadata.validation_set_key(m.record["recipe"]["dataset"]) == key:
                return metadata.validation_labels(m.record["recipe"]["dataset"])
        raise ZooError(f"no model of zoo {self.name!r} uses validation set {key!r}")

    def _model_source(self, name: str, epoch: int | None) -> tuple[str, dict[str, Any]]:
        return str(self._ckpt_dir(name, epoch)), {}

    def predictions_table(self) -> Dataset:
        models = list(self._local.values())
        return metadata.build_tables(models, self.namespace, with_labels=False)["predictions"]

    def labels_table(self) -> Dataset:
        keys = sorted(set(self.predictions_table()["validation_set"]))
        return metadata.table("labels", [self._labels(k) for k in keys])


class _HubZoo(Zoo):
    def __init__(self, repo_id: str, revision: str | None) -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

        self.repo_id = repo_id
        try:
            info = HfApi().dataset_info(repo_id, revision=revision)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            raise ZooError(f"Hub dataset repo {repo_id!r} (revision {revision or 'main'}) does not exist or is "
                           "private; give a published zoo's metadata repo (ORG/<zoo>-metadata) and log in "
                           "(`hf auth login` or HF_TOKEN) for private ones") from None
        except (HfHubHTTPError, OSError) as err:
            raise ZooError(f"cannot reach the Hub for {repo_id!r} ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); check the network and HF_ENDPOINT") \
                from None
        self.revision = info.sha  # pin every table read to one commit of the metadata repo
        card = info.card_data.to_dict() if info.card_data else {}
        name = card.get("zoo_name") or repo_id.split("/", 1)[1].removesuffix("-metadata")
        super().__init__(name, self._config("models"), self._config("checkpoints"), repo_id)

    def _config(self, config: str) -> Dataset:
        from datasets import load_dataset

        return load_dataset(self.repo_id, config, split="train", revision=self.revision)

    @cached_property
    def _prediction_rows(self) -> tuple[Dataset, dict[tuple[str, int], int]]:
        """The predictions config (memory-mapped Arrow) and a row index; rows are decoded only when asked for."""
        table = self.predictions_table()
        return table, {(n, e): i for i, (n, e) in enumerate(zip(table["name"], table["epoch"], strict=True))}

    def predictions_table(self) -> Dataset:
        return self._config("predictions")

    def labels_table(self) -> Dataset:
        return self._config("labels")

    def _predictions(self, name: str, epoch: int) -> list[int] | None:
        table, index = self._prediction_rows
        i = index.get((name, epoch))
        return None if i is None else table[i]["predictions"]

    def _load_labels(self, key: str) -> dict[str, Any]:
        for r in self.labels_table():
            if r["validation_set"] == key:
                return r
        raise ZooError(f"the metadata repo {self.repo_id} has no labels for validation set {key!r}")

    def _revision(self, name: str, epoch: int | None) -> tuple[str, str]:
        ckpt = self.checkpoint(name, epoch)
        repo = self.model(name)["repo_id"]
        return repo, ckpt["commit"] or ckpt["branch"]

    def _file(self, name: str, epoch: int | None, filename: str) -> Path:
        from huggingface_hub import hf_hub_download

        repo, rev = self._revision(name, epoch)
        return Path(hf_hub_download(repo, filename, revision=rev))

    def _record(self, name: str) -> dict[str, Any]:
        return read_json(self._file(name, None, f"{TRAINING_DIR}/{layout.CONFIG_FILE}"))

    def _model_source(self, name: str, epoch: int | None) -> tuple[str, dict[str, Any]]:
        repo, rev = self._revision(name, epoch)
        return repo, {"revision": rev}
