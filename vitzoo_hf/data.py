"""Data sources: every data set a blueprint can name, as a `datasets.DatasetDict` with fixed splits.

Whatever the source, the result has exactly two splits, `train` and `validation`, and two columns: `image`
(a `datasets.Image`, decoded to PIL) and `label` (a `ClassLabel`). Splits that a source lacks are made
deterministically (stratified, seed 0), so every run of every user sees the same validation set.

Names: `digits` (UCI digits bundled with scikit-learn), `fashion_mnist` (Debian package
`dataset-fashion-mnist`, else the Hub), `cifar100` (`uoft-cs/cifar100`, Parquet), `imagenet-1k`
(`timm/imagenet-1k-wds`, WebDataset shards of `jpg` + `cls`), `hf:ORG/NAME` (any Parquet / WebDataset / image
folder Hub data set), `folder:PATH` (a local image folder, one sub-folder per class, optionally under train/ and
validation/; a flat ILSVRC validation folder with the devkit's labels through `validation_labels`) and
`wds:PATH` (local WebDataset shards, split names in the file or folder names).

Large data sets stream (`load_streams`): nothing is downloaded or converted before the first step; the shards are
read as training goes (see vitzoo_hf.streaming for how they are split across processes and workers).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitzoo_hf.errors import ZooError

if TYPE_CHECKING:  # `datasets` costs ~1 s and ~150 MB: imported where data is loaded, not by `vitzoo plan`
    from datasets import Dataset, DatasetDict, IterableDataset

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
VALIDATION_FRACTION = 0.2  # for sources without a validation split


def _digits() -> DatasetDict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 255 / 16).round().astype(np.uint8)
    ds = _from_arrays(images, digits.target, [str(i) for i in range(10)])
    return _split(ds)


def _read_idx(path: Path) -> np.ndarray:
    """IDX (the MNIST file format): big-endian dims after a 4-byte magic whose last byte is the rank."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist() -> DatasetDict:
    if FASHION_MNIST_DIR.is_dir():
        parts = {}
        for split, prefix in (("train", "train"), ("validation", "t10k")):
            images = _read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
            labels = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
            parts[split] = _from_arrays(images, labels, FASHION_MNIST_CLASSES)
        from datasets import DatasetDict

        return DatasetDict(parts)
    return _hub("zalando-datasets/fashion_mnist", "apt-get install dataset-fashion-mnist (Debian/Ubuntu), or ")


def _from_arrays(images: np.ndarray, labels: np.ndarray, names: list[str]) -> Dataset:
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"image": list(images), "label": labels.astype(int).tolist()}, features=features)


def _split(ds: Dataset) -> DatasetDict:
    from datasets import DatasetDict

    try:
        parts = ds.train_test_split(test_size=VALIDATION_FRACTION, seed=0, stratify_by_column="label")
    except ValueError as err:  # a class too small to appear in both splits
        raise ZooError(f"cannot split a validation set off this data set ({err}); give every class at least "
                       "2 images, or provide a separate validation split") from None
    return DatasetDict(train=parts["train"], validation=parts["test"])


def _normalise(dd: DatasetDict, source: str) -> DatasetDict:
    """Rename to image/label, keep only those columns, and fix the validation split."""
    from datasets import ClassLabel, DatasetDict, Image

    split0 = next(iter(dd.values()))
    image_col = next((c for c, f in split0.features.items() if isinstance(f, Image)), None)
    label_col = next((c for c in ("label", "labels", "fine_label") if isinstance(split0.features.get(c), ClassLabel)),
                     next((c for c, f in split0.features.items() if isinstance(f, ClassLabel)), None))
    if image_col is None or label_col is None:
        raise ZooError(f"data set '{source}' needs an Image column and a ClassLabel column; it has "
                       f"{dict(split0.features)}; use an image-classification data set")
    if "train" not in dd:
        raise ZooError(f"data set '{source}' has no 'train' split (it has {list(dd)}); add one")
    val = next((dd[s] for s in ("validation", "valid", "val", "test") if s in dd), None)
    out = DatasetDict(train=dd["train"], validation=val) if val is not None else _split(dd["train"])
    out = out.select_columns([image_col, label_col])
    if image_col != "image":
        out = out.rename_column(image_col, "image")
    if label_col != "label":
        out = out.rename_column(label_col, "label")
    return out


def _hub_error(repo_id: str, err: Exception, hint: str = "") -> ZooError:
    """One message naming the actual cause: a script repo, a gated repo, a missing one, or no connection."""
    text = str(err).strip()
    first = (text.splitlines() or [type(err).__name__])[0][:300]
    low = text.lower()
    page = f"https://huggingface.co/datasets/{repo_id}"
    if "scripts are no longer supported" in low or ("dataset script" in low and ".py" in low):
        fix = ("it is a script-based repo, which datasets >= 4 no longer runs: use a Parquet or WebDataset copy of it "
               "(for ImageNet-1k the name `imagenet-1k`, i.e. hf:timm/imagenet-1k-wds), or local files "
               "(folder:PATH, wds:PATH)")
    elif "gated" in low or " 401" in low or " 403" in low or "unauthorized" in low or "forbidden" in low:
        fix = (f"it is gated: accept its terms on {page} with your account, then log in with `hf auth login` "
               "(or set HF_TOKEN) on this machine")
    elif isinstance(err, FileNotFoundError) or "doesn't exist" in low or "not found" in low:
        fix = (f"check the name on {page}; if it is private or gated, accept its terms and log in with "
               "`hf auth login` (or set HF_TOKEN)")
    else:
        fix = (f"{hint}make https://huggingface.co reachable (or set HF_ENDPOINT to a mirror); if the data set is "
               "gated, accept its terms on its Hub page and log in with `hf auth login`")
    return ZooError(f"data set '{repo_id}' is not available ({type(err).__name__}: {first}); {fix}")


def _hub(repo_id: str, hint: str = "") -> DatasetDict:
    from datasets import load_dataset

    try:
        dd = load_dataset(repo_id)
    except Exception as err:  # any failure to fetch: network, gating, missing repo, script repo
        raise _hub_error(repo_id, err, hint) from None
    return _normalise(dd, repo_id)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _flat_validation(root: Path) -> Path | None:
    """ROOT/val or ROOT/validation holding images directly (the ILSVRC validation layout), else None."""
    for name in ("validation", "val"):
        folder = root / name
        if folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            return folder
    return None


def _folder(path: str, validation_labels: str | None = None) -> DatasetDict:
    from datasets import load_dataset

    root = Path(path).expanduser()
    if not root.is_dir():
        raise ZooError(f"image folder '{path}' does not exist; give a folder with one sub-folder per class "
                       "(optionally under train/ and validation/)")
    flat = _flat_validation(root)
    if flat is not None:
        return _folder_with_flat_validation(root, flat, path, validation_labels)
    if validation_labels is not None:
        raise ZooError(f"validation_labels is set but '{path}' has no flat validation folder (val/ or validation/ "
                       "holding the images directly); remove the key or point the data set at such a folder")
    try:
        dd = load_dataset("imagefolder", data_dir=str(root))
    except Exception as err:
        raise ZooError(f"image folder '{path}' could not be read ({type(err).__name__}: {err}); it needs one "
                       "sub-folder of images per class") from None
    return _normalise(dd, f"folder:{path}")


def _folder_with_flat_validation(root: Path, flat: Path, path: str, labels_ref: str | None) -> DatasetDict:
    """ILSVRC layout: train/<class>/*.JPEG and a flat val/ folder labelled by `labels_ref` (devkit or text)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset

    if labels_ref is None:
        raise ZooError(f"'{flat}' holds images without class sub-folders (the ILSVRC validation layout); say where "
                       "its labels are with one blueprint line: dataset.validation_labels: PATH (the ILSVRC2012 "
                       "devkit folder or .tar.gz, or a text file of 'FILE LABEL' lines)")
    if not (root / "train").is_dir():
        raise ZooError(f"image folder '{path}' has a flat validation folder but no train/ folder of class "
                       "sub-folders; add train/<class>/... next to it")
    try:
        train = load_dataset("imagefolder", data_dir=str(root / "train"), split="train")
    except Exception as err:
        raise ZooError(f"image folder '{root / 'train'}' could not be read ({type(err).__name__}: {err}); it needs "
                       "one sub-folder of images per class") from None
    train = _normalise(DatasetDict(train=train, validation=train), f"folder:{path}")["train"]
    names = list(train.features["label"].names)
    files = sorted(p for p in flat.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    labels = read_validation_labels(Path(labels_ref).expanduser(), [p.name for p in files], names)
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    val = Dataset.from_dict({"image": [str(p) for p in files], "label": labels}, features=features)
    return DatasetDict(train=train, validation=val)


def read_validation_labels(ref: Path, files: list[str], names: list[str]) -> list[int]:
    """Class index (into `names`, the train split's class folders) of each file of a flat validation folder.

    `ref` is the ILSVRC2012 devkit (folder or .tar.gz: data/ILSVRC2012_validation_ground_truth.txt gives each
    image's ILSVRC2012_ID in file order, data/meta.mat maps the IDs to WordNet IDs = the train folder names), or
    a text file of `FILE LABEL` lines with LABEL a class folder name or index."""
    if not ref.exists():
        raise ZooError(f"validation_labels '{ref}' does not exist; give the ILSVRC2012 devkit (folder or .tar.gz) "
                       "or a text file of 'FILE LABEL' lines")
    index = {n: i for i, n in enumerate(names)}
    if ref.is_dir() or ref.name.endswith((".tar.gz", ".tgz", ".tar")):
        ids, wnid_of = _devkit(ref)
        if len(ids) != len(files):
            raise ZooError(f"the devkit's ground truth lists {len(ids)} images but the validation folder holds "
                           f"{len(files)}; use the folder the devkit describes (ILSVRC2012_val_*.JPEG)")
        wnids = [wnid_of.get(i) for i in ids]
        unknown = sorted({w for w in wnids if w not in index}, key=str)
        if unknown:
            raise ZooError(f"the devkit names classes that are not train/ folders ({', '.join(map(str, unknown[:5]))}"
                           "); the train folders must be named by WordNet ID (n01440764, ...)")
        return [index[w] for w in wnids]
    out: dict[str, int] = {}
    for n, line in enumerate(ref.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            raise ZooError(f"{ref} line {n}: expected 'FILE LABEL', got {line[:80]!r}")
        name, label = Path(parts[0]).name, parts[1]
        if label in index:
            out[name] = index[label]
        elif label.isdigit() and int(label) < len(names):
            out[name] = int(label)
        else:
            raise ZooError(f"{ref} line {n}: label {label!r} is neither a train/ class folder nor an index below "
                           f"{len(names)}")
    missing = [f for f in files if f not in out]
    if missing:
        raise ZooError(f"{ref} has no label for {len(missing)} validation image(s), e.g. {missing[0]}; list every file")
    return [out[f] for f in files]


def _devkit(ref: Path) -> tuple[list[int], dict[int, str]]:
    """(ILSVRC2012_ID per validation image, ILSVRC2012_ID -> WNID of the 1000 leaf classes) from the devkit."""
    import io
    import tarfile

    from scipy.io import loadmat  # MATLAB v5 reader: parses arrays, never unpickles

    truth_name, meta_name = "ILSVRC2012_validation_ground_truth.txt", "meta.mat"
    if ref.is_dir():
        found = {p.name: p.read_bytes() for p in ref.rglob("*") if p.name in (truth_name, meta_name)}
    else:
        with tarfile.open(ref) as tar:
            found = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers()
                     if m.isfile() and Path(m.name).name in (truth_name, meta_name)}
    if set(found) != {truth_name, meta_name}:
        raise ZooError(f"'{ref}' is not the ILSVRC2012 devkit: it lacks data/{truth_name} or data/{meta_name}")
    ids = [int(x) for x in found[truth_name].decode().split()]
    synsets = loadmat(io.BytesIO(found[meta_name]), squeeze_me=True)["synsets"]
    wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    return ids, wnid_of


# Named Hub data sets. ILSVRC/imagenet-1k is not used: datasets 5 refuses its loading script, and as Parquet it
# is downloaded and converted whole (~150-300 GB) before the first step; timm's WebDataset copy streams.
HUB_REPOS = {"cifar100": "uoft-cs/cifar100", "imagenet-1k": "timm/imagenet-1k-wds"}
STREAMED_BY_DEFAULT = ("imagenet-1k",)  # and every wds:PATH

SOURCES: dict[str, Callable[[], DatasetDict]] = {
    "digits": _digits,
    "fashion_mnist": _fashion_mnist,
    "cifar100": lambda: _hub(HUB_REPOS["cifar100"]),
    "imagenet-1k": lambda: _hub(HUB_REPOS["imagenet-1k"]),
}


def check_dataset_name(name: str) -> None:
    """Syntax check used by blueprint validation (availability is checked when the data is loaded)."""
    if name in SOURCES:
        return
    if name.startswith("hf:") and name[3:].count("/") == 1 and all(name[3:].split("/")):
        return
    if name.startswith(("folder:", "wds:")) and len(name.split(":", 1)[1]) > 0:
        return
    raise ZooError(f"unknown data set {name!r}; allowed: {', '.join(SOURCES)}, hf:ORG/NAME, folder:PATH, wds:PATH")


def streams_by_default(name: str) -> bool:
    """Whether a data set streams when its blueprint does not say (`dataset.streaming`): ImageNet-1k and local
    WebDataset shards do; everything small enough to convert in seconds loads as an Arrow table."""
    return name in STREAMED_BY_DEFAULT or name.startswith("wds:")


_BUNDLED: dict[tuple, DatasetDict] = {}  # load_splits of the bundled sources, per (name, caps)


def load_splits(name: str, max_train: int | None = None, max_validation: int | None = None,
                validation_labels: str | None = None) -> DatasetDict:
    """The named data set with `train`/`validation` splits, optionally capped to a stratified subset."""
    from datasets import DatasetDict

    check_dataset_name(name)
    if name.startswith("wds:"):
        raise ZooError(f"'{name}' is a set of WebDataset shards, which stream; set dataset.streaming: true "
                       "(or leave it out)")
    caps = {"train": max_train, "validation": max_validation}

    def capped(dd: DatasetDict) -> DatasetDict:
        return DatasetDict({split: _cap(ds, caps[split], f"max_{split}") for split, ds in dd.items()})

    if name in SOURCES:  # bundled: built once per process (a --jobs worker trains many models on them)
        key = (name, max_train, max_validation)
        if key not in _BUNDLED:
            _BUNDLED[key] = capped(SOURCES[name]())
        return DatasetDict(_BUNDLED[key])  # a new dict: a caller replacing a split changes only its own
    if name.startswith("hf:"):
        return capped(_hub(name[3:]))
    return capped(_folder(name[len("folder:"):], validation_labels))


def _cap(ds: Dataset, n: int | None, key: str) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    classes = ds.features["label"].num_classes
    if n < classes:
        raise ZooError(f"{key} = {n} is below the number of classes ({classes}); a stratified subset needs at "
                       "least one image per class: raise it or remove it")
    return ds.train_test_split(train_size=n, seed=0, stratify_by_column="label")["train"]


def class_names(dd: DatasetDict) -> list[str]:
    return list(dd["train"].features["label"].names)


# --------------------------------------------------------------------------------------------------------------
# Streams: Parquet and WebDataset shards read as training goes.

IMAGE_KEYS = ("image", "img", "jpg", "jpeg", "png", "webp")  # WebDataset members are named by extension
LABEL_KEYS = ("label", "labels", "fine_label", "cls")


@dataclass(frozen=True)
class Streams:
    """Both splits of a streamed data set: `datasets.IterableDataset`s with columns `image` (undecoded:
    {bytes, path}, decoded in the loader's workers) and `label` (int), and the class names."""

    train: IterableDataset
    validation: IterableDataset
    names: list[str]
    source: str

    def __getitem__(self, split: str) -> IterableDataset:
        return {"train": self.train, "validation": self.validation}[split]


def _stream_columns(ds: IterableDataset, source: str) -> tuple[str, str, list[str] | None]:
    from datasets import ClassLabel, Image, Value

    features = ds.features
    if features is None:  # not declared by the repo: read from the first example
        features = ds._resolve_features().features
    image = next((c for c, f in features.items() if isinstance(f, Image)),
                 next((c for c in IMAGE_KEYS if c in features), None))
    label = next((c for c in LABEL_KEYS if isinstance(features.get(c), ClassLabel)),
                 next((c for c, f in features.items() if isinstance(f, ClassLabel)), None))
    if label is None:
        label = next((c for c in LABEL_KEYS if isinstance(features.get(c), Value)
                      and str(features[c].dtype).startswith(("int", "uint"))), None)
    if image is None or label is None:
        raise ZooError(f"data set '{source}' needs an image column and an integer or ClassLabel label column "
                       f"(e.g. WebDataset members .jpg + .cls); it has {dict(features)}; use an image-classification "
                       "data set")
    names = list(features[label].names) if isinstance(features[label], ClassLabel) else None
    return image, label, names


def _normalise_stream(splits: dict[str, IterableDataset], source: str, name: str,
                      names: list[str] | None = None) -> Streams:
    from datasets import Image

    if "train" not in splits:
        raise ZooError(f"data set '{source}' has no 'train' split (it has {list(splits)}); add one")
    val_key = next((s for s in ("validation", "valid", "val", "test") if s in splits), None)
    if val_key is None:
        raise ZooError(f"streamed data set '{source}' has no validation split (it has {list(splits)}); a stream "
                       "cannot be split reproducibly: add validation shards, or set dataset.streaming: false")
    out = {}
    for split, key in (("train", "train"), ("validation", val_key)):
        ds = splits[key]
        image, label, split_names = _stream_columns(ds, source)
        names = names or split_names
        ds = ds.select_columns([image, label])
        if image != "image":
            ds = ds.rename_column(image, "image")
        if label != "label":
            ds = ds.rename_column(label, "label")
        out[split] = ds.cast_column("image", Image(decode=False))
    if names is None and name == "imagenet-1k":  # timm's shards carry the index only, in the standard order
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        names = list(_IMAGENET_CATEGORIES)
    if names is None:
        raise ZooError(f"data set '{source}' has integer labels but no class names, so the class count is unknown; "
                       "declare the label column as a class_label with its names in the data set card "
                       "(dataset_info.features), as `datasets` writes it; for local shards (wds:PATH) a classes.txt "
                       "beside them, one class name per line, also does")
    return Streams(out["train"], out["validation"], names, source)


def load_streams(name: str) -> Streams:
    """The named data set as streams: Hub repos through `load_dataset(..., streaming=True)` (Parquet, WebDataset,
    image folders), local shards through the `webdataset` builder. Nothing is downloaded ahead."""
    from datasets import load_dataset

    check_dataset_name(name)
    if name in HUB_REPOS or name.startswith("hf:"):
        repo = HUB_REPOS.get(name) or name[3:]
        try:
            splits = dict(load_dataset(repo, streaming=True))
        except Exception as err:
            raise _hub_error(repo, err) from None
        return _normalise_stream(splits, repo, name)
    if name.startswith("wds:"):
        root = Path(name[4:]).expanduser()
        if not root.is_dir() or not any(root.rglob("*.tar")):
            raise ZooError(f"'{root}' holds no WebDataset shards (*.tar); give a folder of shards named like "
                           "train-0000.tar and validation-0000.tar, or with train/ and validation/ sub-folders")
        try:  # as a local repo: a README's dataset_info (e.g. of a downloaded Hub copy) declares the classes
            splits = dict(load_dataset(str(root), streaming=True))
        except Exception as err:
            raise ZooError(f"WebDataset shards in '{root}' could not be read ({type(err).__name__}: "
                           f"{str(err)[:300]}); name them by split (train-0000.tar, validation-0000.tar)") from None
        classes = root / "classes.txt"
        names = [n.strip() for n in classes.read_text().splitlines() if n.strip()] if classes.is_file() else None
        return _normalise_stream(splits, name, name, names)
    if name.startswith("folder:"):
        from datasets import IterableDatasetDict

        dd = load_splits(name)
        return _normalise_stream(dict(IterableDatasetDict({k: v.to_iterable_dataset() for k, v in dd.items()})),
                                 name, name)
    raise ZooError(f"data set '{name}' does not stream (it is small and bundled here); set dataset.streaming: false")


def validation_labels_and_names(dataset: dict) -> tuple[list[int], list[str]]:
    """The validation labels in data-set order (the order of a model's stored predictions) and the class names,
    for a model's recorded `recipe.dataset`: streamed data sets are read as streams (labels only are kept)."""
    name, streaming = dataset["name"], dataset.get("streaming")
    if streaming if streaming is not None else streams_by_default(name):
        streams = load_streams(name)
        return [int(r["label"]) for r in streams.validation.select_columns(["label"])], streams.names
    splits = load_splits(name, None, dataset.get("max_validation"), dataset.get("validation_labels"))
    return [int(x) for x in splits["validation"]["label"]], class_names(splits)
