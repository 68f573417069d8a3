"""Data sources: every data set a blueprint can name, as a `datasets.DatasetDict` with fixed splits.

Whatever the source, the result has exactly two splits, `train` and `validation`, and two columns: `image`
(a `datasets.Image`, decoded to PIL) and `label` (a `ClassLabel`). Splits that a source lacks are made
deterministically (stratified, seed 0), so every run of every user sees the same validation set.

Names: `digits` (UCI digits bundled with scikit-learn), `fashion_mnist` (Debian package
`dataset-fashion-mnist`, else the Hub), `cifar100`, `imagenet-1k`, `hf:ORG/NAME` (any Hub image-classification
data set) and `folder:PATH` (a local image folder, one sub-folder per class, optionally under train/ and
validation/).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitzoo_hf.errors import ZooError

if TYPE_CHECKING:  # `datasets` costs ~1 s and ~150 MB: imported where data is loaded, not by `vitzoo plan`
    from datasets import Dataset, DatasetDict

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


def _hub(repo_id: str, hint: str = "") -> DatasetDict:
    from datasets import load_dataset

    try:
        dd = load_dataset(repo_id)
    except Exception as err:  # any failure to fetch: network, gating, missing repo
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ZooError(f"data set '{repo_id}' is not available ({type(err).__name__}: {first}); to get it: "
                       f"{hint}make https://huggingface.co reachable (or set HF_ENDPOINT to a mirror), accept the "
                       f"data set's terms on its Hub page if it is gated, and log in with `hf auth login`") from None
    return _normalise(dd, repo_id)


def _folder(path: str) -> DatasetDict:
    from datasets import load_dataset

    root = Path(path).expanduser()
    if not root.is_dir():
        raise ZooError(f"image folder '{path}' does not exist; give a folder with one sub-folder per class "
                       "(optionally under train/ and validation/)")
    try:
        dd = load_dataset("imagefolder", data_dir=str(root))
    except Exception as err:
        raise ZooError(f"image folder '{path}' could not be read ({type(err).__name__}: {err}); it needs one "
                       "sub-folder of images per class") from None
    return _normalise(dd, f"folder:{path}")


SOURCES: dict[str, Callable[[], DatasetDict]] = {
    "digits": _digits,
    "fashion_mnist": _fashion_mnist,
    "cifar100": lambda: _hub("uoft-cs/cifar100"),
    "imagenet-1k": lambda: _hub("ILSVRC/imagenet-1k"),
}


def check_dataset_name(name: str) -> None:
    """Syntax check used by blueprint validation (availability is checked when the data is loaded)."""
    if name in SOURCES:
        return
    if name.startswith("hf:") and name[3:].count("/") == 1 and all(name[3:].split("/")):
        return
    if name.startswith("folder:") and len(name) > len("folder:"):
        return
    raise ZooError(f"unknown data set {name!r}; allowed: {', '.join(SOURCES)}, hf:ORG/NAME, folder:PATH")


def load_splits(name: str, max_train: int | None = None, max_validation: int | None = None) -> DatasetDict:
    """The named data set with `train`/`validation` splits, optionally capped to a stratified subset."""
    from datasets import DatasetDict

    check_dataset_name(name)
    if name in SOURCES:
        dd = SOURCES[name]()
    elif name.startswith("hf:"):
        dd = _hub(name[3:])
    else:
        dd = _folder(name[len("folder:"):])
    caps = {"train": max_train, "validation": max_validation}
    return DatasetDict({split: _cap(ds, caps[split], f"max_{split}") for split, ds in dd.items()})


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
