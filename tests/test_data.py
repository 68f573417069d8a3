"""Data sources resolve to train/validation splits with image and label columns."""

import pytest
from datasets import ClassLabel, Image

from vitzoo_hf.data import FASHION_MNIST_DIR, check_dataset_name, class_names, load_splits
from vitzoo_hf.errors import ZooError


def test_digits_has_fixed_stratified_splits():
    dd = load_splits("digits")
    assert set(dd) == {"train", "validation"}
    assert (len(dd["train"]), len(dd["validation"])) == (1437, 360)
    assert isinstance(dd["train"].features["image"], Image)
    assert isinstance(dd["train"].features["label"], ClassLabel)
    assert class_names(dd) == [str(i) for i in range(10)]
    again = load_splits("digits")
    assert dd["validation"]["label"] == again["validation"]["label"]
    assert dd["train"][0]["image"].size == (8, 8)
    assert len(set(dd["validation"]["label"])) == 10


def test_caps_are_stratified_and_deterministic():
    dd = load_splits("digits", max_train=100, max_validation=50)
    assert (len(dd["train"]), len(dd["validation"])) == (100, 50)
    assert len(set(dd["train"]["label"])) == 10
    assert dd["train"]["label"] == load_splits("digits", max_train=100)["train"]["label"]


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    dd = load_splits("fashion_mnist", max_train=500, max_validation=200)
    assert (len(dd["train"]), len(dd["validation"])) == (500, 200)
    assert dd["train"][0]["image"].size == (28, 28)
    assert class_names(dd)[0] == "T-shirt/top"


def test_local_image_folder(tmp_path):
    from PIL import Image as PILImage

    for split in ("train", "validation"):
        for cls, shade in (("cat", 0), ("dog", 255)):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                PILImage.new("RGB", (10, 10), (shade, i, 0)).save(folder / f"{i}.png")
    dd = load_splits(f"folder:{tmp_path}")
    assert (len(dd["train"]), len(dd["validation"])) == (6, 6)
    assert class_names(dd) == ["cat", "dog"]


def test_bad_names_and_unavailable_data_give_actionable_errors(tmp_path):
    with pytest.raises(ZooError, match="allowed: digits, fashion_mnist, cifar100"):
        check_dataset_name("cifar")
    with pytest.raises(ZooError, match="does not exist"):
        load_splits(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(ZooError, match="hf auth login"):
        load_splits("hf:no-such-org/no-such-dataset-xyz")
