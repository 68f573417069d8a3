"""Preflight: what would make a zoo run fail on day three, checked in its first minute.

`vitzoo check BLUEPRINT --out DIR` runs these checks and reports; `vitzoo generate` runs the same ones before it
trains anything. Each check returns problems, one line each that names what is wrong and how to fix it:

* data sets: reachable and readable (Hub access, gating, token; an image column and a class-label column; the
  class count the name promises) without downloading them;
* precision: bf16 only where it runs natively (a GPU of compute capability >= 8.0; `torch.cuda.is_bf16_supported`
  also says yes where bf16 is emulated, e.g. V100, T4), fp16 only with a GPU;
* disk: room for every checkpoint the run will write (parameters from the architecture, x epochs, plus the
  optimizer states kept in the two newest checkpoints);
* launcher: processes and devices that exist, and batch sizes the processes divide.

The machine's facts come in as a `Machine` (`Machine.here()` measures them), so every rule is a pure function.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from vitzoo_hf import layout
from vitzoo_hf.blueprint import Blueprint, ModelSpec

# The class counts the data sets' names promise (their Hub repos: vitzoo_hf.data.HUB_REPOS, one home).
CLASS_COUNTS = {"digits": 10, "fashion_mnist": 10, "cifar100": 100, "imagenet-1k": 1000}
CHECKPOINT_OVERHEAD = 64 * 1024  # config, manifest, image processor, modelling code, predictions: generous


@dataclass(frozen=True)
class Machine:
    """What the checks judge against: the visible CUDA GPUs' compute capabilities and whether the CPU has bf16."""

    gpu_capabilities: tuple[tuple[int, int], ...] = ()
    gpu_ids: tuple[str, ...] = ()  # as CUDA_VISIBLE_DEVICES names them (what --devices must use)
    cpu_bf16: bool = True

    @classmethod
    def here(cls) -> Machine:
        import torch

        from vitzoo_hf.runner import visible_gpus

        caps: tuple[tuple[int, int], ...] = ()
        if torch.cuda.is_available():
            caps = tuple(torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))
        return cls(caps, tuple(visible_gpus())[: len(caps)] if caps else (), _cpu_has_bf16())


def _cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX on x86 Linux (elsewhere: assumed, not known)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    if "flags" not in flags:  # not x86 (e.g. ARM lists 'Features'): assumed
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_native(machine: Machine) -> bool:
    """bf16 runs natively on every visible GPU (compute capability >= 8.0: A100, H100, RTX 30xx and later)."""
    return bool(machine.gpu_capabilities) and all(major >= 8 for major, _ in machine.gpu_capabilities)


def resolve_auto(machine: Machine) -> str:
    """`mixed_precision: auto` → bf16 where it is native on the GPUs, else fp32 ('no')."""
    return "bf16" if bf16_native(machine) else "no"


def precision_problems(setting: str, machine: Machine) -> list[str]:
    if setting == "fp16" and not machine.gpu_capabilities:
        return ["mixed precision 'fp16' needs a CUDA GPU and none is visible; use mixed_precision: no (or auto)"]
    if setting != "bf16":
        return []
    if machine.gpu_capabilities:
        slow = [f"GPU {i} (compute capability {a}.{b})" for i, (a, b) in enumerate(machine.gpu_capabilities) if a < 8]
        if slow:
            return [f"mixed precision 'bf16' is emulated, not native, on {', '.join(slow)}: it needs compute "
                    "capability >= 8.0 (A100, H100, ...); use mixed_precision: fp16 or no (auto picks fp32 there)"]
        return []
    if not machine.cpu_bf16:
        return ["mixed precision 'bf16' on this CPU is emulated (no AVX512-BF16 or AMX); use mixed_precision: no"]
    return []


# --------------------------------------------------------------------------------------------------------------
# Disk


@cache
def parameter_count(bp: Blueprint, stage: str, task: str, head: str | None, num_labels: int) -> int:
    """Parameters of one model as saved (backbone + classifier, or backbone + SimCLR projector), counted on the
    meta device: no memory, no time."""
    import torch

    from vitzoo_hf.modeling import ZooViTForImageClassification, ZooViTModel
    from vitzoo_hf.recipe import model_config
    from vitzoo_hf.simclr import ProjectionHead

    labels = [str(i) for i in range(num_labels)]
    with torch.device("meta"):
        if stage == "pretraining" and task == "contrastive":
            c = bp.pretraining.tasks.contrastive
            parts = [ZooViTModel(model_config(bp, labels)),
                     ProjectionHead(bp.architecture.hidden_size, c.projection_hidden_size, c.projection_dim,
                                    layers=1 if c.projection == "linear" else 2)]
        else:
            parts = [ZooViTForImageClassification(model_config(bp, labels, head or "linear"))]
    return sum(p.numel() for part in parts for p in part.parameters())


def optimizer_state_factor(spec: ModelSpec) -> int:
    """fp32 tensors of optimizer state per parameter: AdamW's two moments, SGD's momentum buffer (if any)."""
    if spec.optimizer == "adamw":
        return 2
    return 1 if spec.momentum else 0


def bytes_to_write(bp: Blueprint, spec: ModelSpec, out: Path, num_labels: int) -> int:
    """What training `spec` still writes into `out`: one fp32 checkpoint per epoch not saved yet (epoch 0
    included) and the optimizer state of the two newest checkpoints."""
    params = parameter_count(bp, spec.stage, spec.task, spec.head, num_labels)
    left = spec.epochs + 1 - len(layout.checkpoints(layout.model_dir(out, spec)))
    if left <= 0:
        return 0
    return left * (4 * params + CHECKPOINT_OVERHEAD) + 2 * 4 * params * optimizer_state_factor(spec)


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest existing ancestor: where a folder not made yet would take its disk space from."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def disk_problems(bp: Blueprint, todo: Sequence[ModelSpec], out: Path,
                  classes: dict[str, int | None]) -> tuple[list[str], str]:
    """(problems, a note with the estimate). Class counts unknown (data set unreachable) count as 1000."""
    need = sum(bytes_to_write(bp, m, out, classes.get(m.dataset) or 1000) for m in todo)
    where = nearest_existing(out)
    free = shutil.disk_usage(where).free
    note = f"disk: {len(todo)} model(s) to train write about {human(need)}; {human(free)} free at {where}"
    if need <= free:
        return [], note
    return [f"not enough free disk at {where} for --out {out}: the {len(todo)} model(s) to train write about "
            f"{human(need)} (a checkpoint per epoch + the two newest optimizer states), {human(free)} is free; free "
            f"{human(need - free)}, choose an --out on a bigger file system, or train part with --only"], note


# --------------------------------------------------------------------------------------------------------------
# Data sets


@dataclass
class DatasetReport:
    name: str
    problems: list[str] = field(default_factory=list)
    classes: int | None = None
    note: str = ""


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _hub_dataset(name: str, repo: str) -> DatasetReport:
    """Reachable (endpoint, repo, gating, token) and readable (first example of the train split, streamed:
    an Image column and a ClassLabel column) without downloading the data set."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    report = DatasetReport(name)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        HfApi(endpoint=endpoint).dataset_info(repo)
    except GatedRepoError:
        report.problems.append(f"data set '{name}' ({repo}) is gated and this account has no access: accept its "
                               f"terms on https://huggingface.co/datasets/{repo} and log in with `hf auth login` "
                               "(or set HF_TOKEN)")
        return report
    except RepositoryNotFoundError:
        report.problems.append(f"data set '{name}': no repo {repo} on {endpoint or 'the Hub'} (or it is private and "
                               "no token with access is set); check the name, or log in with `hf auth login`")
        return report
    except Exception as err:  # HfHubHTTPError, the HTTP client's connection errors, timeouts
        report.problems.append(f"data set '{name}' ({repo}) is unreachable: {type(err).__name__}: {_first_line(err)}; "
                               f"make {endpoint or 'https://huggingface.co'} reachable (or set HF_ENDPOINT to a "
                               "mirror)")
        return report
    try:
        from datasets import ClassLabel, Image, load_dataset

        stream = load_dataset(repo, split="train", streaming=True)
        features = stream.features
        if features is None:
            features = stream._resolve_features().features
    except Exception as err:  # any reason the data cannot be read: scripts, no train split, format
        report.problems.append(f"data set '{name}' ({repo}) is not readable: {type(err).__name__}: "
                               f"{_first_line(err)}; use a Parquet or WebDataset copy with a train split")
        return report
    image = [c for c, f in features.items() if isinstance(f, Image)]
    labels = [c for c, f in features.items() if isinstance(f, ClassLabel)]
    wds_label = getattr(features.get("cls"), "dtype", "").startswith("int")  # WebDataset shards: jpg + cls
    if image and not labels and wds_label:
        report.note = f"{repo}: WebDataset columns {image[0]}, cls (class count not in the schema: not checked)"
        return report
    if not image or not labels:
        report.problems.append(f"data set '{name}' ({repo}) needs an Image column and a ClassLabel column; its "
                               f"train split has {', '.join(f'{c}: {type(f).__name__}' for c, f in features.items())}; "
                               "use an image-classification data set")
        return report
    label = next((c for c in ("label", "labels", "fine_label") if c in labels), labels[0])  # as data._normalise
    report.classes = features[label].num_classes
    report.note = f"{repo}: columns {image[0]}, {label}; {report.classes} classes"
    return report


def _folder_dataset(name: str, path: str) -> DatasetReport:
    report = DatasetReport(name)
    root = Path(path).expanduser()
    if not root.is_dir():
        report.problems.append(f"data set '{name}': folder {root} does not exist; give a folder with one "
                               "sub-folder of images per class (optionally under train/ and validation/)")
        return report
    train = root / "train" if (root / "train").is_dir() else root
    classes = sorted(p for p in train.iterdir() if p.is_dir())
    if len(classes) < 2:
        report.problems.append(f"data set '{name}': {train} has {len(classes)} class sub-folder(s); it needs one "
                               "sub-folder of images per class, at least 2")
        return report
    image = next((f for f in classes[0].iterdir() if f.is_file()), None)
    try:
        from PIL import Image as PILImage

        if image is None:
            raise OSError("no files")
        with PILImage.open(image) as im:
            im.verify()
    except Exception as err:
        report.problems.append(f"data set '{name}': {image or classes[0]} is not a readable image "
                               f"({_first_line(err)}); every class folder must hold image files")
        return report
    report.classes, report.note = len(classes), f"{train}: {len(classes)} class folders"
    return report


def _shards_dataset(name: str, path: str) -> DatasetReport:
    """Local WebDataset shards: the path must hold .tar shards (read for real when training starts)."""
    report = DatasetReport(name)
    root = Path(path).expanduser()
    shards = sorted(root.rglob("*.tar")) if root.is_dir() else [root] if root.is_file() else []
    if not shards:
        report.problems.append(f"data set '{name}': no WebDataset .tar shards at {root}; give a folder of shards "
                               "(split names in the file or folder names) or one .tar file")
    else:
        report.note = f"{root}: {len(shards)} shard(s)"
    return report


def dataset_report(name: str) -> DatasetReport:
    from vitzoo_hf.data import FASHION_MNIST_DIR

    if name == "digits":
        report = DatasetReport(name, classes=10, note="scikit-learn's bundled digits")
    elif name == "fashion_mnist" and FASHION_MNIST_DIR.is_dir():
        report = DatasetReport(name, classes=10, note=str(FASHION_MNIST_DIR))
    elif name == "fashion_mnist":
        report = _hub_dataset(name, "zalando-datasets/fashion_mnist")
    elif name.startswith("folder:"):
        report = _folder_dataset(name, name[len("folder:"):])
    elif name.startswith("wds:"):
        report = _shards_dataset(name, name[len("wds:"):])
    else:
        from vitzoo_hf.data import HUB_REPOS

        report = _hub_dataset(name, HUB_REPOS.get(name) or name.removeprefix("hf:"))
    expected = CLASS_COUNTS.get(name)
    if report.classes is not None and expected is not None and report.classes != expected:
        report.problems.append(f"data set '{name}' has {report.classes} classes where {expected} are expected; point "
                               f"the blueprint at the right data (or use hf:ORG/NAME for another data set)")
    elif report.classes is not None and report.classes < 2:
        report.problems.append(f"data set '{name}' has {report.classes} class(es); classification needs at least 2")
    return report


# --------------------------------------------------------------------------------------------------------------
# Launcher


def launcher_problems(todo: Sequence[ModelSpec], machine: Machine, num_processes: int = 1, jobs: int = 1,
                      devices: Sequence[str] | None = None) -> list[str]:
    problems = []
    gpus = len(machine.gpu_capabilities)
    if num_processes > 1 and gpus and num_processes > gpus:
        problems.append(f"--num-processes {num_processes} but {gpus} GPU(s) are visible; use --num-processes {gpus} "
                        "or fewer, or make more GPUs visible (CUDA_VISIBLE_DEVICES)")
    for batch in sorted({m.batch_size for m in todo if m.batch_size % num_processes}):
        names = [m.name for m in todo if m.batch_size == batch]
        problems.append(f"batch size {batch} ({names[0]}{f' and {len(names) - 1} more' if len(names) > 1 else ''}) "
                        f"is not divisible by {num_processes} processes; use a --num-processes that divides it")
    if devices:
        if not gpus:
            problems.append(f"--devices {','.join(devices)} but no CUDA GPU is visible; drop --devices (jobs then "
                            "share the CPU cores)")
        else:
            missing = [d.strip() for d in devices if d.strip() not in machine.gpu_ids]
            if missing:
                problems.append(f"--devices names GPU(s) {', '.join(missing)} that are not visible here (visible: "
                                f"{', '.join(machine.gpu_ids)}); use ids from that list")
    return problems  # more --jobs than GPUs is fine: small models share a GPU, round-robin (runner.job_devices)


# --------------------------------------------------------------------------------------------------------------
# All of it


def preflight(bp: Blueprint, todo: Sequence[ModelSpec], out: str | Path, *, mixed_precision: str | None = None,
              num_processes: int = 1, jobs: int = 1, devices: Sequence[str] | None = None,
              machine: Machine | None = None) -> tuple[list[str], list[str]]:
    """(problems, notes) for training `todo` into `out`: every check, each problem one line with its fix."""
    machine = machine or Machine.here()
    problems: list[str] = []
    notes: list[str] = []
    classes: dict[str, int | None] = {}
    for name in dict.fromkeys(m.dataset for m in todo):
        report = dataset_report(name)
        problems += report.problems
        classes[name] = report.classes
        if not report.problems:
            notes.append(f"data set {name}: {report.note}")
    setting = mixed_precision or bp.mixed_precision
    bad_precision = precision_problems(setting, machine)
    problems += bad_precision
    resolved = resolve_auto(machine) if setting == "auto" else setting
    caps = ", ".join(f"{a}.{b}" for a, b in machine.gpu_capabilities) or "none"
    if not bad_precision:
        notes.append(f"precision: {setting} -> {resolved} (GPU compute capabilities: {caps})")
    disk, note = disk_problems(bp, todo, Path(out), classes)
    problems += disk
    notes += [] if disk else [note]
    bad_launch = launcher_problems(todo, machine, num_processes, jobs, devices)
    problems += bad_launch
    notes += [] if bad_launch else [f"launcher: {num_processes} process(es) per model, {jobs} job(s), "
                 f"{len(machine.gpu_capabilities)} GPU(s) visible"]
    return problems, notes


def print_report(problems: Sequence[str], notes: Sequence[str], prog: str = "vitzoo check") -> int:
    for note in notes:
        print(f"ok       {note}")
    for problem in problems:
        print(f"{prog}: problem: {problem}", file=sys.stderr)
    return 2 if problems else 0
