"""Weight-space datasets over any `Zoo` (a folder or the Hub): checkpoints as samples, metadata as targets.

    zoo = Zoo.from_hub("ORG/mini-metadata")
    ds = WeightSpaceDataset(zoo, "stats", target="accuracy", where={"stage": "finetuning"})
    x, y = ds[0]["x"], ds[0]["y"]                    # torch.utils.data.Dataset: DataLoader, random access
    stream = WeightSpaceStream(zoo, "tokens", target="optimizer", augment=PermutationAugment())
    for sample in stream: ...                        # IterableDataset: one checkpoint in memory at a time
    hf = stream.to_hf()                              # datasets.IterableDataset (shards, split_dataset_by_node)

Samples are rows of the zoo's `checkpoints` table joined with their model's `models` row (`sample_rows`); the
selection is a `where` filter on those columns plus an `epochs` choice. Targets (`TARGETS`): the checkpoint's
validation accuracy (`accuracy`), the final one (`final_accuracy`), the generalisation gap (`ggap` = train − validation
accuracy, and `final_ggap`), the `epoch`, and every generating factor (`FACTORS`: categorical, returned as class
indices into `dataset.classes`). A stream from the Hub reads each `model.safetensors` into memory over HTTP (its
sha256 checked against the metadata) and writes nothing to disk: the zoo is never downloaded as a whole.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from vitzoo_hf import layout
from vitzoo_hf.errors import ZooError
from vitzoo_hf.weightspace import representations as reps
from vitzoo_hf.weightspace.splits import group_of

NUMERIC_TARGETS = ("accuracy", "final_accuracy", "ggap", "final_ggap", "epoch")
FACTORS = ("task", "head", "optimizer", "lr", "head_seed", "weight_decay", "momentum", "batch_size", "seed",
           "dataset", "stage", "backbone")
TARGETS = NUMERIC_TARGETS + FACTORS
Where = Mapping[str, Any] | Callable[[dict[str, Any]], bool] | None


def _gap(train: float | None, val: float | None) -> float | None:
    return None if train is None or val is None else train - val


def sample_rows(zoo, where: Where = None, epochs: str | Sequence[int] = "all") -> list[dict[str, Any]]:
    """Every selected checkpoint as one dict: the `checkpoints` columns, the model's columns (the model's final
    accuracy and gap as `final_accuracy` / `final_ggap`), the targets and its lineage (`backbone`)."""
    from vitzoo_hf.weightspace.splits import roots

    parents = {r["name"]: r["parent"] for r in zoo.models}
    root = roots(parents)
    wanted = None if epochs in ("all", "final") else set(epochs)
    rows = []
    for ck in zoo.checkpoints:
        m = zoo.model(ck["name"])
        final = ck["epoch"] == m["final_epoch"]
        if (epochs == "final" and not final) or (wanted is not None and ck["epoch"] not in wanted):
            continue
        row = {**{k: v for k, v in m.items() if k not in ck}, **ck}
        row.update(final_accuracy=m["validation_accuracy"],
                   final_ggap=_gap(m["train_accuracy"], m["validation_accuracy"]),
                   accuracy=ck["validation_accuracy"], ggap=_gap(ck["train_accuracy"], ck["validation_accuracy"]),
                   backbone=root[ck["name"]])
        if not _matches(row, where):
            continue
        rows.append(row)
    rows.sort(key=lambda r: (r["name"], r["epoch"]))
    if not rows:
        raise ZooError(f"the filter selects no checkpoint of zoo {zoo.name!r} (where={where!r}, epochs={epochs!r}); "
                       f"its columns are {', '.join(zoo.models.column_names)}")
    return rows


def _matches(row: dict[str, Any], where: Where) -> bool:
    if where is None:
        return True
    if callable(where):
        return bool(where(row))
    for col, want in where.items():
        if col not in row:
            raise ZooError(f"filter column {col!r} is not a column of the zoo's tables; use one of "
                           f"{', '.join(sorted(row))}")
        if isinstance(want, list | tuple | set | frozenset):
            if row[col] not in want:
                return False
        elif row[col] != want:
            return False
    return True


def target_kind(target: str) -> str:
    """`numeric` or `categorical`."""
    if target not in TARGETS:
        raise ZooError(f"unknown target {target!r}; choose accuracy, final_accuracy, ggap, final_ggap, epoch or a "
                       f"generating factor ({', '.join(FACTORS)})")
    return "numeric" if target in NUMERIC_TARGETS else "categorical"


def target_values(rows: Sequence[Mapping[str, Any]], target: str) -> tuple[list, list | None]:
    """(values, classes): floats for numeric targets (NaN where missing), class indices (−1 where missing) and the
    sorted class values for categorical ones."""
    raw = [r.get(target) for r in rows]
    if target_kind(target) == "numeric":
        return [math.nan if v is None else float(v) for v in raw], None
    classes = sorted({v for v in raw if v is not None}, key=lambda v: (str(type(v)), v))
    index = {c: i for i, c in enumerate(classes)}
    return [-1 if v is None else index[v] for v in raw], classes


# ----------------------------------------------------------------------------------------------------------------
# Reading one checkpoint


def load_state_dict(zoo, name: str, epoch: int, stream: bool = False) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors. A folder zoo reads its file; a Hub zoo either through the HF cache (`stream=False`:
    downloaded once, reused) or, with `stream=True`, straight into memory over HTTP (nothing written to disk)."""
    from safetensors.torch import load, load_file

    if not stream or not hasattr(zoo, "repo_id"):
        return load_file(str(zoo.weights_path(name, epoch)))
    from huggingface_hub import get_session, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    ck = zoo.checkpoint(name, epoch)
    repo = zoo.model(name)["repo_id"]
    url = hf_hub_url(repo, layout.WEIGHTS_FILE, revision=ck["commit"] or ck["branch"])
    try:
        response = get_session().get(url, headers=build_hf_headers(), follow_redirects=True)
        response.raise_for_status()
    except Exception as err:  # httpx errors: the network, a missing repo
        raise ZooError(f"cannot stream {repo}@{ck['branch']}/{layout.WEIGHTS_FILE} ({type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''}); check HF_ENDPOINT and the network") from None
    data = response.content
    if ck.get("weights_sha256") and hashlib.sha256(data).hexdigest() != ck["weights_sha256"]:
        raise ZooError(f"{repo}@{ck['branch']}/{layout.WEIGHTS_FILE} does not match the sha256 in the metadata; "
                       "the repo changed after publication or the transfer was damaged: rerun, or republish")
    return load(data)


def num_heads(zoo, name: str) -> int:
    return int(zoo.record(name)["architecture"]["num_attention_heads"])


class _Representer:
    """State dict → the sample's tensors, in one representation."""

    def __init__(self, representation: str, layers: str | Sequence[str], token_width: int) -> None:
        if representation not in reps.REPRESENTATIONS:
            raise ZooError(f"unknown representation {representation!r}; use one of {', '.join(reps.REPRESENTATIONS)}")
        self.representation, self.layers, self.token_width = representation, layers, token_width
        self.index: reps.LayerIndex | None = None
        self.feature_names: list[str] | None = None
        self.modules: list[str] | None = None

    def __call__(self, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.representation == "flat":
            x, index = reps.flatten(sd, self.layers)
            self.index = self.index or index
            if index != self.index:
                raise ZooError("checkpoints of different layouts in one flat dataset (their layer indexes differ); "
                               "filter to one architecture, or use tokens / stats")
            return {"x": x}
        if self.representation == "stats":
            x, names = reps.stats(sd, self.layers)
            hx, hnames = reps.head_stats(sd)
            self.feature_names = self.feature_names or names + hnames
            return {"x": torch.cat([x, hx])}
        t = reps.tokenize(sd, self.token_width, self.layers)
        self.modules = self.modules or t.modules
        return {"x": t.tokens, "mask": t.mask, "layer": t.layer, "position": t.position, "index": t.index}


class _Base:
    def __init__(self, zoo, representation: str = "stats", target: str | None = "accuracy", where: Where = None,
                 epochs: str | Sequence[int] = "all", layers: str | Sequence[str] = "backbone", token_width: int = 64,
                 augment=None) -> None:
        self.zoo = zoo
        self.rows = sample_rows(zoo, where, epochs)
        self.target = target
        self.targets, self.classes = target_values(self.rows, target) if target else (None, None)
        self.represent = _Representer(representation, layers, token_width)
        self.augment = augment

    @property
    def representation(self) -> str:
        return self.represent.representation

    @property
    def index(self) -> reps.LayerIndex | None:
        """flat: the LayerIndex (known after the first sample)."""
        return self.represent.index

    @property
    def feature_names(self) -> list[str] | None:
        """stats: the name of every feature (known after the first sample)."""
        return self.represent.feature_names

    def groups(self, level: str = "lineage") -> list[str]:
        """The split group of every sample (see `vitzoo_hf.weightspace.splits`)."""
        return group_of(self.rows, {r["name"]: r["parent"] for r in self.zoo.models}, level)

    def _sample(self, i: int, sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        row = self.rows[i]
        if self.augment is not None:
            sd = self.augment(sd, num_heads(self.zoo, row["name"]))
        out: dict[str, Any] = {"name": row["name"], "epoch": row["epoch"], **self.represent(sd)}
        if self.target:
            y = self.targets[i]
            out["y"] = torch.tensor(y, dtype=torch.float32 if self.classes is None else torch.int64)
        return out


class WeightSpaceDataset(_Base, torch.utils.data.Dataset):
    """Map-style: `ds[i]` → {"name", "epoch", "x" (and tokens' "mask", "layer", "position", "index"), "y"}.

    With `cache=True` (default) each checkpoint is read once: its representation is kept (or, when augmenting,
    its state dict, so every access draws a new permuted view)."""

    def __init__(self, zoo, representation: str = "stats", target: str | None = "accuracy", where: Where = None,
                 epochs: str | Sequence[int] = "all", layers: str | Sequence[str] = "backbone", token_width: int = 64,
                 augment=None, cache: bool = True, stream: bool = False) -> None:
        super().__init__(zoo, representation, target, where, epochs, layers, token_width, augment)
        self.cache, self.stream = cache, stream
        self._cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        if self.augment is None and i in self._cache:
            return self._cache[i]
        sd = self._cache.get(i) if self.augment is not None else None
        if sd is None:
            row = self.rows[i]
            sd = load_state_dict(self.zoo, row["name"], row["epoch"], stream=self.stream)
        sample = self._sample(i, sd)
        if self.cache:
            self._cache[i] = sd if self.augment is not None else sample
        return sample


class WeightSpaceStream(_Base, torch.utils.data.IterableDataset):
    """Iterable: checkpoints one at a time in table order, each read, represented and dropped (from a Hub zoo:
    over HTTP into memory, nothing cached on disk). DataLoader workers take disjoint shares."""

    def __init__(self, zoo, representation: str = "stats", target: str | None = "accuracy", where: Where = None,
                 epochs: str | Sequence[int] = "all", layers: str | Sequence[str] = "backbone", token_width: int = 64,
                 augment=None, stream: bool = True) -> None:
        super().__init__(zoo, representation, target, where, epochs, layers, token_width, augment)
        self.stream = stream

    def __len__(self) -> int:
        return len(self.rows)

    def _indices(self) -> range:
        info = torch.utils.data.get_worker_info()
        return range(len(self.rows)) if info is None else range(info.id, len(self.rows), info.num_workers)

    def iter_indices(self, indices: Sequence[int]) -> Iterator[dict[str, Any]]:
        for i in indices:
            row = self.rows[i]
            yield self._sample(i, load_state_dict(self.zoo, row["name"], row["epoch"], stream=self.stream))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_indices(self._indices())

    def to_hf(self, num_shards: int | None = None):
        """The same stream as a `datasets.IterableDataset` (numpy arrays; sharded by checkpoint, so
        `split_dataset_by_node` and DataLoader workers divide the zoo between them)."""
        from datasets import IterableDataset

        n = len(self.rows)
        k = max(1, min(num_shards or n, n))
        shards = [list(range(j, n, k)) for j in range(k)]

        def generate(shards: list[list[int]]):
            for shard in shards:
                for s in self.iter_indices(shard):
                    yield {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in s.items()}

        return IterableDataset.from_generator(generate, gen_kwargs={"shards": shards})


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples; token sequences of different lengths (zoos of several architectures) are right-padded and
    get a `padding` mask (True = padding)."""
    out: dict[str, Any] = {"name": [s["name"] for s in samples], "epoch": torch.tensor([s["epoch"] for s in samples])}
    if "y" in samples[0]:
        out["y"] = torch.stack([s["y"] for s in samples])
    lengths = [s["x"].shape[0] for s in samples]
    if "layer" not in samples[0] or len(set(lengths)) == 1:
        for k in ("x", "mask", "layer", "position", "index"):
            if k in samples[0]:
                out[k] = torch.stack([s[k] for s in samples])
        if "layer" in samples[0]:
            out["padding"] = torch.zeros(len(samples), lengths[0], dtype=torch.bool)
        return out
    n = max(lengths)
    for k in ("x", "mask", "layer", "position", "index"):
        out[k] = torch.nn.utils.rnn.pad_sequence([s[k] for s in samples], batch_first=True)
    out["padding"] = torch.arange(n)[None, :] >= torch.tensor(lengths)[:, None]
    return out
