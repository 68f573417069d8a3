"""Blueprints: a zoo as a YAML file of generating factors, and its expansion into named models.

A blueprint mirrors the paper's Tables 4, 5, 7 and 8: one architecture, a pre-training stage (dataset,
hyperparameters, and per task a list of (seed, batch size) runs) and a fine-tuning stage (dataset, constants
and a grid head × optimizer × learning rate × head seed). `expand()` turns it into `ModelSpec`s: the single
place that names models and fixes their factors, imported by training, publishing and analysis alike.

Blueprints are validated before anything runs: every problem is a `ZooError` whose one-line message names the
key, the bad value and what is allowed. (What depends on the data itself, such as a `max_train` below the
number of classes, is checked when the data set is loaded, with the same kind of message.)

Seeds follow the authors' code, where one seed drove initialisation, data order and augmentation together: a
backbone's run seed does all three; a fine-tune's head is drawn from its head seed, and its data order and
augmentation from (parent, head seed) only (`ModelSpec.data_seed`, `DATA_SEED_RULE`), never from the other
factors, so siblings differ in exactly their named factor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from vitzoo_hf.errors import ZooError

OPTIMIZERS = ("adamw", "sgd")
HEADS = ("linear", "mlp")
TASKS = ("supervised", "contrastive")
STAGES = ("pretraining", "finetuning")
MAX_REPO_NAME = 96
MAX_SEED = 2**32  # what numpy and torch generators accept
DATA_SEED_RULE = ("pre-training: the run seed; fine-tuning: int(sha256('<parent>/head_seed=<head seed>')[:4 bytes]) "
                  "& 0x7FFFFFFF; head initialisation: torch.manual_seed(head seed)")
PRECISIONS = ("auto", "no", "bf16", "fp16")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$|^[a-z0-9]$")

# --------------------------------------------------------------------------------------------------------------
# Schema. Field types drive validation; `_check` methods add range rules. Defaults are the paper's values.


@dataclass(frozen=True)
class Architecture:
    """The ViT (Table 4: ViT-S/16 at 224 px) plus stochastic depth (Table 5)."""

    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    intermediate_size: int = 1536
    patch_size: int = 16
    image_size: int = 224
    drop_path_rate: float = 0.1
    head_hidden_size: int = 256
    # Choices the paper leaves open (README, "Recipe choices"); defaults: transformers' ViT, as zoos were trained
    # before these keys existed. The authors' code (timm): layer_norm_eps 1e-6, init kaiming_normal, init_bias 0.01.
    layer_norm_eps: float = 1e-12
    init: Literal["hf", "kaiming_normal"] = "hf"  # hf: normal(0, 0.02) Linear/Conv weights, trunc-normal embeddings
    init_bias: float = 0.0  # every Linear/Conv bias of a model trained from scratch (and of new heads)

    def _check(self, path: str) -> None:
        if not 0.0 < self.layer_norm_eps < 1.0:
            _fail(f"{path}.layer_norm_eps", self.layer_norm_eps, "a number in (0, 1)")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "patch_size", "image_size", "head_hidden_size"):
            _positive(self, name, path)
        if self.hidden_size % self.num_attention_heads:
            _fail(f"{path}.num_attention_heads", self.num_attention_heads,
                  f"a divisor of hidden_size ({self.hidden_size})")
        if self.image_size % self.patch_size:
            _fail(f"{path}.patch_size", self.patch_size, f"a divisor of image_size ({self.image_size})")
        if not 0.0 <= self.drop_path_rate < 1.0:
            _fail(f"{path}.drop_path_rate", self.drop_path_rate, "a number in [0, 1)")

    @property
    def tag(self) -> str:
        """Short architecture tag for model names: vits16-224 for the paper's ViT-S/16 at 224 px."""
        sizes = {(192, 12): "ti", (384, 12): "s", (768, 12): "b", (1024, 24): "l"}
        size = sizes.get((self.hidden_size, self.num_hidden_layers))
        if size is None:  # not a named ViT size: spell it out
            return f"vith{self.hidden_size}l{self.num_hidden_layers}p{self.patch_size}-{self.image_size}"
        return f"vit{size}{self.patch_size}-{self.image_size}"


@dataclass(frozen=True)
class DatasetRef:
    """A data set by name (see vitzoo_hf.data), optionally capped to a deterministic subset for small zoos."""

    name: str
    max_train: int | None = None
    max_validation: int | None = None
    # Read shards as training goes instead of loading an Arrow table first; null: yes for imagenet-1k and wds:PATH.
    streaming: bool | None = None
    # The labels of a flat ILSVRC validation folder (folder:PATH): the devkit (folder or .tar.gz) or FILE LABEL lines.
    validation_labels: str | None = None

    def _check(self, path: str) -> None:
        from vitzoo_hf.data import check_dataset_name

        try:
            check_dataset_name(self.name)
        except ZooError as err:
            raise ZooError(f"key '{path}.name': {err}") from None
        for name in ("max_train", "max_validation"):
            if getattr(self, name) is not None:
                _positive(self, name, path)
        if self.is_streamed and (self.max_train or self.max_validation):
            _fail(f"{path}.max_train", self.max_train or self.max_validation,
                  "null with a streamed data set (a stream has no stratified subset); set streaming: false to cap it")
        if self.streaming is False and self.name.startswith("wds:"):
            _fail(f"{path}.streaming", False, "true or null for WebDataset shards (wds:PATH), which only stream")

    @property
    def is_streamed(self) -> bool:
        from vitzoo_hf.data import streams_by_default

        return self.streaming if self.streaming is not None else streams_by_default(self.name)


@dataclass(frozen=True)
class Augmentation:
    """Supervised recipe (paper Appendix A): crop, MixUp/CutMix, Random Erasing, label smoothing, (rot, flip)."""

    resize: int | None = None  # resize the short side before the random crop; None = image_size * 8 / 7
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    random_erasing: float = 0.25
    label_smoothing: float = 0.1
    rotation: float = 0.0
    horizontal_flip: bool = False
    # resize_crop: resize the short side to `resize`, then a random crop (ours); random_resized_crop: torchvision's
    # RandomResizedCrop over `crop_scale` of the area, aspect 3/4..4/3 (the authors' pre-training)
    crop: Literal["resize_crop", "random_resized_crop"] = "resize_crop"
    crop_scale: tuple[float, float] = (0.08, 1.0)

    def _check(self, path: str) -> None:
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            _fail(f"{path}.crop_scale", list(self.crop_scale), "[low, high] with 0 < low <= high <= 1")
        for name in ("mixup_alpha", "cutmix_alpha", "rotation"):
            if getattr(self, name) < 0:
                _fail(f"{path}.{name}", getattr(self, name), "a number >= 0")
        for name in ("random_erasing", "label_smoothing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                _fail(f"{path}.{name}", getattr(self, name), "a number in [0, 1]")
        if self.resize is not None:
            _positive(self, "resize", path)


@dataclass(frozen=True)
class Views:
    """SimCLR view generation (two independently augmented views per image)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    color_jitter: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.1)
    p_color_jitter: float = 0.8
    p_grayscale: float = 0.2
    blur_kernel: int = 9
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    p_blur: float = 0.5

    def _check(self, path: str) -> None:
        for name in ("p_color_jitter", "p_grayscale", "p_blur"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                _fail(f"{path}.{name}", getattr(self, name), "a probability in [0, 1]")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            _fail(f"{path}.crop_scale", list(self.crop_scale), "[low, high] with 0 < low <= high <= 1")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            _fail(f"{path}.blur_kernel", self.blur_kernel, "a positive odd integer")
        b, c, s, h = self.color_jitter
        if min(b, c, s) < 0 or not 0 <= h <= 0.5:
            _fail(f"{path}.color_jitter", list(self.color_jitter),
                  "[brightness, contrast, saturation, hue] with the first three >= 0 and hue in [0, 0.5]")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            _fail(f"{path}.blur_sigma", list(self.blur_sigma), "[low, high] with 0 < low <= high")


@dataclass(frozen=True)
class Run:
    """One pre-training run: the paper's (seed, batch size) pairs of Tables 7 and 8."""

    seed: int
    batch_size: int

    def _check(self, path: str) -> None:
        _positive(self, "batch_size", path)
        if not 0 <= self.seed < MAX_SEED:
            _fail(f"{path}.seed", self.seed, f"an integer in [0, {MAX_SEED})")


@dataclass(frozen=True)
class Supervised:
    runs: tuple[Run, ...] = ()
    augmentation: Augmentation = field(default_factory=Augmentation)


@dataclass(frozen=True)
class Contrastive:
    runs: tuple[Run, ...] = ()
    temperature: float = 0.07
    projection_hidden_size: int | None = None  # None = the backbone's hidden size
    projection_dim: int = 128
    # mlp: SimCLR's Linear-ReLU-Linear projector (ours); linear: one Linear to projection_dim (the authors' code
    # used the 1000-way classifier head as the projection)
    projection: Literal["mlp", "linear"] = "mlp"
    views: Views = field(default_factory=Views)

    def _check(self, path: str) -> None:
        _positive(self, "temperature", path)
        _positive(self, "projection_dim", path)
        if self.projection_hidden_size is not None:
            _positive(self, "projection_hidden_size", path)


@dataclass(frozen=True)
class Tasks:
    supervised: Supervised = field(default_factory=Supervised)
    contrastive: Contrastive = field(default_factory=Contrastive)

    def _check(self, path: str) -> None:
        if not self.supervised.runs and not self.contrastive.runs:
            _fail(f"{path}", "no runs", "at least one run under supervised.runs or contrastive.runs")


@dataclass(frozen=True)
class Pretraining:
    dataset: DatasetRef
    tasks: Tasks
    epochs: int = 90
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9

    def _check(self, path: str) -> None:
        _positive(self, "epochs", path)
        _positive(self, "lr", path)
        _non_negative(self, "weight_decay", path)
        _non_negative(self, "momentum", path)


@dataclass(frozen=True)
class Grid:
    """The fine-tuning grid; every combination is one model."""

    head: tuple[Literal["linear", "mlp"], ...] = HEADS
    optimizer: tuple[Literal["adamw", "sgd"], ...] = OPTIMIZERS
    lr: tuple[float, ...] = (3e-3, 1e-3, 1e-4)
    head_seed: tuple[int, ...] = (1, 2)

    def _check(self, path: str) -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name):
                _fail(f"{path}.{f.name}", [], "a non-empty list")
        for lr in self.lr:
            if lr <= 0:
                _fail(f"{path}.lr", lr, "positive learning rates")
        for seed in self.head_seed:
            if not 0 <= seed < MAX_SEED:
                _fail(f"{path}.head_seed", seed, f"integers in [0, {MAX_SEED})")


@dataclass(frozen=True)
class Finetuning:
    dataset: DatasetRef
    grid: Grid = field(default_factory=Grid)
    epochs: int = 50
    batch_size: int = 256
    weight_decay: float = 0.0
    momentum: float = 0.99
    augmentation: Augmentation = field(
        default_factory=lambda: Augmentation(rotation=10.0, horizontal_flip=True))
    # the new head: torch_default (nn.Linear's own init, ours) or kaiming_normal with bias architecture.init_bias
    # (the authors' linear head; their MLP head kept torch's init by a bug we do not reproduce)
    head_init: Literal["torch_default", "kaiming_normal"] = "torch_default"

    def _check(self, path: str) -> None:
        _positive(self, "epochs", path)
        _positive(self, "batch_size", path)
        _non_negative(self, "weight_decay", path)
        _non_negative(self, "momentum", path)


@dataclass(frozen=True)
class Evaluation:
    """Per-epoch evaluation cost. The training-split metrics (for the generalisation gap) use a fixed subset of at
    most `train_max` training images (null: all of them); `batch_size` is the supervised evaluation batch (as
    large as memory allows; contrastive retrieval is evaluated at the training batch size, on which it depends)."""

    train_max: int | None = 10000
    batch_size: int = 1024

    def _check(self, path: str) -> None:
        _positive(self, "batch_size", path)
        if self.train_max is not None:
            _positive(self, "train_max", path)


@dataclass(frozen=True)
class Blueprint:
    """A whole zoo. `source` records where it was read from (not a generating factor)."""

    name: str
    architecture: Architecture
    pretraining: Pretraining
    finetuning: Finetuning
    description: str = ""
    normalization: Literal["imagenet"] = "imagenet"
    # Training precision on every launch path (not a generating factor: recorded, and a resume must match it).
    # auto: bf16 on a CUDA GPU that supports it, else fp32 ("no"). `--mixed-precision` overrides it.
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    evaluation: Evaluation = field(default_factory=Evaluation)
    # DataLoader worker processes per model (decoding and augmentation); null: from the CPU count. Not a
    # generating factor: results do not depend on it. `--num-workers` overrides it.
    num_workers: int | None = None
    # Supervised training images (vitzoo_hf.decode): reference = decode, resize and augment every image in full on
    # the CPU; fast = reduced-size JPEG decoding and uint8 geometry in the workers, the float work on the device
    # batch; device = JPEGs decoded on the device too (nvJPEG on a CUDA GPU, else the CPU). Recorded per model.
    input_pipeline: Literal["reference", "fast", "device"] = "reference"
    source: str = field(default="", compare=False)

    def _check(self, path: str) -> None:
        if self.num_workers is not None:
            _non_negative(self, "num_workers", path)
        if not _NAME_RE.match(self.name) or "--" in self.name or len(self.name) > 40:
            _fail("name", self.name, "lower-case letters, digits and single '-', at most 40 characters")
        size = self.architecture.image_size
        for key, aug in (("pretraining.tasks.supervised.augmentation", self.pretraining.tasks.supervised.augmentation),
                         ("finetuning.augmentation", self.finetuning.augmentation)):
            if aug.resize is not None and aug.resize < size:
                _fail(f"{key}.resize", aug.resize, f"a size >= architecture.image_size ({size}) to crop from")

    def to_dict(self) -> dict[str, Any]:
        """The resolved blueprint as plain data (recorded with every model)."""
        data = dataclasses.asdict(self)
        data.pop("source")
        return json.loads(json.dumps(data))


# --------------------------------------------------------------------------------------------------------------
# Models: the expansion of a blueprint.


@dataclass(frozen=True)
class ModelSpec:
    """One model of the zoo with every factor resolved: what training needs, what publishing records."""

    name: str
    stage: Literal["pretraining", "finetuning"]
    task: Literal["supervised", "contrastive"]  # a fine-tuned model inherits its parent's task
    parent: str | None
    seed: int  # pre-training: the run seed; fine-tuning: the head-initialisation seed
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    epochs: int
    dataset: str
    head: str | None = None  # fine-tuning only; pre-training uses a linear head (supervised) or a projector

    def factors(self) -> dict[str, Any]:
        """The generating factors, as the paper's tables name them."""
        out: dict[str, Any] = {"task": self.task, "dataset": self.dataset}
        if self.stage == "pretraining":
            out.update(seed=self.seed, batch_size=self.batch_size)
        else:
            out.update(head=self.head, head_seed=self.seed)
        out.update(optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay, epochs=self.epochs)
        if self.optimizer == "sgd":
            out["momentum"] = self.momentum
        return out

    @property
    def data_seed(self) -> int:
        """Seed for data order and augmentation (DATA_SEED_RULE): a backbone's run seed; for a fine-tune, a hash
        of (parent, head seed) only, so siblings that share both see the same batches and differ in exactly
        their named factor (head, optimizer or lr)."""
        if self.stage == "pretraining":
            return self.seed
        digest = hashlib.sha256(f"{self.parent}/head_seed={self.seed}".encode()).digest()
        return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF

    def to_record(self) -> dict[str, Any]:
        return {"name": self.name, "stage": self.stage, "parent": self.parent, **self.factors(),
                "batch_size": self.batch_size, "data_seed": self.data_seed}


_TASK_TAGS = {"supervised": "sup", "contrastive": "con"}


def format_lr(lr: float) -> str:
    """3e-3 → '3e-3', 2.5e-4 → '2.5e-4': short, exact, and valid in a Hub repo name."""
    mantissa, exponent = f"{lr:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def pretrained_name(bp: Blueprint, task: str, run: Run) -> str:
    return f"{bp.name}-{bp.architecture.tag}-{_TASK_TAGS[task]}-s{run.seed}-b{run.batch_size}"


def finetuned_name(parent: str, head: str, optimizer: str, lr: float, head_seed: int) -> str:
    return f"{parent}-ft-{head}-{optimizer}-lr{format_lr(lr)}-h{head_seed}"


def expand(bp: Blueprint) -> list[ModelSpec]:
    """Every model of the zoo, parents before their children, in a stable order."""
    pre, fine = bp.pretraining, bp.finetuning
    models: list[ModelSpec] = []
    for task in TASKS:
        for run in getattr(pre.tasks, task).runs:
            parent = ModelSpec(
                name=pretrained_name(bp, task, run), stage="pretraining", task=task, parent=None,
                seed=run.seed, batch_size=run.batch_size, optimizer=pre.optimizer, lr=pre.lr,
                weight_decay=pre.weight_decay, momentum=pre.momentum, epochs=pre.epochs,
                dataset=pre.dataset.name)
            models.append(parent)
            grid = fine.grid
            for head, opt, lr, seed in itertools.product(grid.head, grid.optimizer, grid.lr, grid.head_seed):
                models.append(ModelSpec(
                    name=finetuned_name(parent.name, head, opt, lr, seed), stage="finetuning", task=task,
                    parent=parent.name, seed=seed, batch_size=fine.batch_size, optimizer=opt, lr=lr,
                    weight_decay=fine.weight_decay, momentum=fine.momentum, epochs=fine.epochs,
                    dataset=fine.dataset.name, head=head))
    seen: set[str] = set()
    for m in models:
        if m.name in seen:
            raise ZooError(f"blueprint '{bp.name}': duplicate model name '{m.name}'; "
                           "remove the repeated run or grid value")
        if len(m.name) > MAX_REPO_NAME:
            raise ZooError(f"blueprint '{bp.name}': model name '{m.name}' is {len(m.name)} characters, "
                           f"more than the Hub's {MAX_REPO_NAME}; shorten the blueprint name")
        seen.add(m.name)
    return models


def find_model(bp: Blueprint, name: str) -> ModelSpec:
    for m in expand(bp):
        if m.name == name:
            return m
    raise ZooError(f"model '{name}' is not in blueprint '{bp.name}'; list the models with "
                   f"`vitzoo plan {bp.source or bp.name}`")


# --------------------------------------------------------------------------------------------------------------
# Loading.


def shipped_blueprints() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("vitzoo_hf").joinpath("blueprints").iterdir()
                  if p.name.endswith(".yaml"))


def _read_yaml(ref: str) -> tuple[dict[str, Any], str]:
    path = Path(ref)
    if ref in shipped_blueprints() and not path.is_file():  # a folder named like a blueprint (--out paper) is no file
        text, source = resources.files("vitzoo_hf").joinpath("blueprints").joinpath(f"{ref}.yaml").read_text(), ref
    elif path.is_file():
        raw, source = path.read_bytes(), str(path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ZooError(f"blueprint {source} is not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}); "
                           "save it with UTF-8 encoding") from None
    else:
        raise ZooError(f"blueprint '{ref}' not found: give a path to a YAML file or one of the shipped "
                       f"blueprints: {', '.join(shipped_blueprints())}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ZooError(f"blueprint {source}: invalid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ZooError(f"blueprint {source}: expected a mapping of keys at the top level, "
                       f"got {type(data).__name__}")
    return data, source


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _relative_to(parent: str, source: str) -> str:
    """A relative `extends:` path means next to the blueprint that says it (not the working directory); a shipped
    name stays a name unless a file of that name sits next to the blueprint."""
    here = Path(source).parent if source not in shipped_blueprints() else None
    if here is None or Path(parent).is_absolute():
        return parent
    beside = here / parent
    if beside.is_file() or parent not in shipped_blueprints():
        return str(beside)
    return parent


def _resolved_data(ref: str, chain: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """The YAML data of `ref` merged over the blueprint it `extends` (recursively)."""
    data, source = _read_yaml(ref)
    parent = data.pop("extends", None)
    if parent is None:
        return data, source
    if not isinstance(parent, str):
        raise ZooError(f"blueprint {source}: key 'extends' has invalid value {parent!r}; "
                       "allowed: the name or path of another blueprint")
    parent = _relative_to(parent, source)
    if parent in (*chain, ref):
        raise ZooError(f"blueprint {source}: 'extends' forms a cycle through '{parent}'")
    base, _ = _resolved_data(parent, (*chain, ref))
    return _merge(base, data), source


def load_blueprint(ref: str | Path) -> Blueprint:
    """Read, merge (`extends: NAME_OR_PATH`), validate. `ref` is a shipped name or a YAML path."""
    data, source = _resolved_data(str(ref))
    try:
        bp = _build(Blueprint, data, "")
    except ZooError as err:
        raise ZooError(f"blueprint {source}: {err}") from None
    bp = dataclasses.replace(bp, source=source)
    expand(bp)  # names must be unique and Hub-valid
    return bp


def _fail(key: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ZooError(f"key '{key}' has invalid value {value!r}; allowed: {allowed}")


def _positive(obj: Any, name: str, path: str) -> None:
    value = getattr(obj, name)
    if not value > 0:
        _fail(f"{path}.{name}".lstrip("."), value, "a number > 0")


def _non_negative(obj: Any, name: str, path: str) -> None:
    value = getattr(obj, name)
    if not value >= 0:
        _fail(f"{path}.{name}".lstrip("."), value, "a number >= 0")


def _build(tp: Any, value: Any, path: str) -> Any:
    """Convert plain YAML data into the typed schema, failing on the first problem with a one-line message."""
    key = path.lstrip(".") or "(top level)"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _fail(key, value, f"a mapping with keys {', '.join(_field_names(tp))}")
        hints = typing.get_type_hints(tp)
        names = _field_names(tp)
        for k in value:
            if k not in names:
                raise ZooError(f"unknown key '{f'{path}.{k}'.lstrip('.')}'; allowed keys here: {', '.join(names)}")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{path}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ZooError(f"missing key '{f'{path}.{f.name}'.lstrip('.')}'")
        obj = tp(**kwargs)
        if hasattr(obj, "_check"):
            obj._check(path.lstrip("."))
        return obj
    if origin is Literal:
        if value not in args:
            _fail(key, value, ", ".join(map(str, args)))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _build(next(a for a in args if a is not type(None)), value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            _fail(key, value, "a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            _fail(key, value, f"a list of {len(args)} numbers")
        return tuple(_build(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            _fail(key, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                _fail(key, value, "a number")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            _fail(key, value, "a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(key, value, "a string")
        return value
    raise TypeError(f"unsupported schema type {tp!r}")  # a bug in the schema, not user input


def _field_names(tp: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(tp) if f.name != "source"]
