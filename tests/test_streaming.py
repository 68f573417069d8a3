"""Streamed data sets in their real layouts, served by the local Hub: an ImageNet-style WebDataset repo (timm's
`imagenet-1k-wds`: tar shards of .jpg + .cls) and a CIFAR-100-style Parquet repo (uoft-cs/cifar100: `img`,
`fine_label`, `coarse_label`), both generated here; split across processes and workers exactly once per epoch,
in a seeded order; trained through `vitzoo generate` with 2 processes. Plus the local ways in (wds:PATH, a flat
ILSVRC validation folder with the devkit's labels) and the error a script-based repo gives."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hub_fixtures import hf_cache, hub  # noqa: F401
from PIL import Image as PILImage
from transformers import AutoModelForImageClassification

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand, load_blueprint
from vitzoo_hf.data import load_splits, load_streams, validation_labels_and_names
from vitzoo_hf.decode import open_image
from vitzoo_hf.errors import ZooError
from vitzoo_hf.recipe import image_transforms
from vitzoo_hf.streaming import StreamImages, keyed_collate, stream_loader
from vitzoo_hf.training import train_model

WDS_TRAIN, WDS_VAL = (12, 12, 12, 2), (6, 6)  # images per shard; uneven, so processes end epochs unevenly


def _jpeg(ident: int, label: int) -> bytes:
    """A small JPEG whose width encodes its identity (16 + ident px) and whose colour its class."""
    rng = np.random.default_rng(ident)
    pixels = np.clip(rng.normal(60 * label + 30, 20, (20, 16 + ident, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png(ident: int, label: int) -> bytes:
    pixels = np.full((32, 32, 3), (label * 9) % 256, np.uint8)
    pixels[0, 0] = (ident % 256, ident // 256, 0)  # lossless: identity in a pixel
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, blob in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))


def imagenet_wds(folder: Path) -> Path:
    """timm/imagenet-1k-wds's layout: imagenet1k-{train-NNNN,validation-NN}.tar, members jpg/cls/json."""
    folder.mkdir(parents=True, exist_ok=True)
    ident = 0
    for split, sizes in (("train", WDS_TRAIN), ("validation", WDS_VAL)):
        for s, per in enumerate(sizes):
            samples = []
            for _ in range(per):
                label = ident % 4
                meta = {"label": label, "filename": f"{ident:08d}.JPEG"}
                samples.append((f"{split}_{ident:08d}", {"jpg": _jpeg(ident, label), "cls": str(label).encode(),
                                                         "json": json.dumps(meta).encode()}))
                ident += 1
            digits = 4 if split == "train" else 2
            write_tar(folder / f"imagenet1k-{split}-{s:0{digits}d}.tar", samples)
    return folder


def push_imagenet(tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("timm/imagenet-1k-wds", repo_type="dataset")
    api.upload_folder(folder_path=str(imagenet_wds(tmp_path / "wds")), repo_id="timm/imagenet-1k-wds",
                      repo_type="dataset")


def push_cifar(n_train: int = 48, n_test: int = 16) -> None:
    """uoft-cs/cifar100's schema: img {bytes, path}, fine_label (100 classes), coarse_label (20), one Parquet
    file per split under cifar100/."""
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"img": Image(), "fine_label": ClassLabel(names=[f"fine{i}" for i in range(100)]),
                         "coarse_label": ClassLabel(names=[f"coarse{i}" for i in range(20)])})
    for split, n, start in (("train", n_train, 0), ("test", n_test, n_train)):
        labels = [(start + i) % 5 for i in range(n)]
        ds = Dataset.from_dict({"img": [{"bytes": _png(start + i, y), "path": None} for i, y in enumerate(labels)],
                                "fine_label": labels, "coarse_label": [y // 5 for y in labels]}, features=features)
        ds.push_to_hub("uoft-cs/cifar100", config_name="cifar100", split=split)


def _identity(image) -> int:
    """An image's identity from its pixels (the generated JPEG's width, the PNG's first pixel)."""
    im = open_image(image)
    if im.format == "PNG":
        r, g, _ = im.convert("RGB").getpixel((0, 0))
        return r + 256 * g
    return im.width - 16


def _seen(split, world: int, workers: int, shuffle: bool, seed: int) -> list[tuple[int, int, int]]:
    """(rank, image identity, key) of every example one epoch's loaders yield, rank by rank."""
    out = []
    for rank in range(world):
        ds = StreamImages(split, _identity, shuffle, rank, world, buffer=8)
        ds.set_epoch(seed)
        loader = stream_loader(ds, 4, keyed_collate(lambda items: ([x for x, _ in items],)), workers, lambda: ())
        out += [(rank, i, k) for ids, keys in loader for i, k in zip(ids, keys.tolist(), strict=True)]
    return out


def test_every_image_once_per_epoch_across_ranks_and_workers(hub, tmp_path):  # noqa: F811
    """Shard mode (4 WebDataset shards for 2 or 4 streams) and example mode (3 streams over 4 shards is still shard
    mode; 1 Parquet file for any number of streams), with and without workers."""
    push_imagenet(tmp_path)
    push_cifar()
    for name, total in (("imagenet-1k", sum(WDS_TRAIN)), ("cifar100", 48)):
        streams = load_streams(name)
        for world, workers in ((1, 0), (2, 2), (3, 1)):
            for split, n in (("train", total), ("validation", None)):
                seen = _seen(streams[split], world, workers, shuffle=split == "train", seed=11)
                ids = [i for _, i, _ in seen]
                assert len(ids) == len(set(ids)) and (n is None or len(ids) == n), (name, world, workers, split)
                assert len({k for *_, k in seen}) == len(seen)
                if split == "validation":  # evaluation: keys sort into data-set order
                    assert [i for _, i, _ in sorted(seen, key=lambda t: t[2])] == sorted(ids)
                elif world > 1:
                    assert min(sum(r == rank for r, _, _ in seen) for rank in range(world)) > 0
        seen = _seen(streams.train, 2, 2, shuffle=True, seed=11)
        assert _seen(streams.train, 2, 2, shuffle=True, seed=11) == seen  # the same order run to run
        other = _seen(streams.train, 2, 2, shuffle=True, seed=12)  # another epoch: the same images, reshuffled
        assert sorted(i for _, i, _ in other) == sorted(i for _, i, _ in seen) and other != seen


def test_generate_streams_both_repos_with_two_processes(hub, tmp_path):  # noqa: F811
    push_imagenet(tmp_path)
    push_cifar()
    bp_path = tmp_path / "st.yaml"
    bp_path.write_text(yaml.safe_dump({
        "extends": "smoke", "name": "st", "input_pipeline": "fast",
        "pretraining": {"dataset": {"name": "imagenet-1k", "max_train": None, "max_validation": None}, "epochs": 1,
                        "tasks": {"supervised": {"runs": [{"seed": 1, "batch_size": 8}]}, "contrastive": {"runs": []}}},
        "finetuning": {"dataset": {"name": "cifar100", "streaming": True, "max_train": None, "max_validation": None},
                       "epochs": 1, "batch_size": 8,
                       "grid": {"head": ["linear"], "optimizer": ["adamw"], "lr": [1.0e-3], "head_seed": [1]}},
        "evaluation": {"train_max": 16, "batch_size": 16}}))
    out = tmp_path / "zoo"
    proc = subprocess.run([sys.executable, "-m", "vitzoo_hf.cli", "generate", str(bp_path), "--out", str(out),
                           "--num-processes", "2", "--num-workers", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    bp = load_blueprint(bp_path)
    backbone, child = expand(bp)
    for spec, n_val, classes in ((backbone, sum(WDS_VAL), 1000), (child, 16, 100)):
        path = layout.model_dir(out, spec)
        config = json.loads((path / layout.CONFIG_FILE).read_text())
        # 2 processes x 1 worker: the 4 uneven WebDataset shards give one process 24 images and the other 14, so
        # it steps with empty batches at the end of each epoch; CIFAR's one Parquet file is split by example.
        assert config["distribution"]["num_processes"] == 2 and config["distribution"]["num_workers"] == 1
        assert config["recipe"]["input_pipeline"] == "fast" and "streaming" in config["recipe"]
        rows = [json.loads(line) for line in (path / layout.RESULT_FILE).read_text().splitlines()]
        assert [r["validation_examples"] for r in rows] == [n_val] * (spec.epochs + 1)  # each image once
        assert all(r["train_objective"] > 0 for r in rows[1:])
        preds = layout.checkpoint_dir(path, spec.epochs) / layout.PREDICTIONS_FILE
        from safetensors.torch import load_file

        stored = load_file(str(preds))["predictions"]
        labels, _ = validation_labels_and_names(config["recipe"]["dataset"])  # what publishing pairs them with
        assert stored.shape == (n_val,) and len(labels) == n_val
        acc = float((stored.long() == torch.tensor(labels)).float().mean())
        assert acc == pytest.approx(rows[-1]["validation_accuracy"])
        # stored in data-set order: re-evaluate the checkpoint in one process over the unsplit stream
        model = AutoModelForImageClassification.from_pretrained(layout.checkpoint_dir(path, spec.epochs)).eval()
        stage = bp.pretraining if spec.stage == "pretraining" else bp.finetuning
        aug = bp.finetuning.augmentation if spec.stage == "finetuning" else bp.pretraining.tasks.supervised.augmentation
        _, eval_tf = image_transforms(bp, aug)
        images = [eval_tf(open_image(r["image"])) for r in load_streams(stage.dataset.name).validation]
        with torch.no_grad():
            assert torch.equal(model(pixel_values=torch.stack(images)).logits.argmax(-1), stored.long())
        ckpt = json.loads((layout.checkpoint_dir(path, spec.epochs) / "config.json").read_text())
        assert len(ckpt["id2label"]) == classes  # imagenet-1k: timm's 1000 class indices; CIFAR-100: fine labels


def _stream_bp(tmp_path: Path, task: str, **extra) -> Path:
    other = "contrastive" if task == "supervised" else "supervised"
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump({
        "extends": "smoke", "name": "s1", **extra,
        "pretraining": {"dataset": {"name": "imagenet-1k", "max_train": None, "max_validation": None}, "epochs": 2,
                        "tasks": {task: {"runs": [{"seed": 3, "batch_size": 8}]}, other: {"runs": []}}},
        "evaluation": {"train_max": 12, "batch_size": 8}}))
    return path


@pytest.mark.parametrize("task,pipeline", [("supervised", "device"), ("contrastive", "reference")])
def test_streamed_training_is_deterministic_and_resumes_bitwise(hub, tmp_path, task, pipeline):  # noqa: F811
    push_imagenet(tmp_path)
    bp = load_blueprint(_stream_bp(tmp_path, task, input_pipeline=pipeline))
    spec = expand(bp)[0]
    a = train_model(bp, spec, tmp_path / "a", progress=False, num_workers=2)
    b = train_model(bp, spec, tmp_path / "b", progress=False, num_workers=2)
    final = f"checkpoint_{spec.epochs:06d}/model.safetensors"
    assert (a / final).read_bytes() == (b / final).read_bytes()  # the same order and augmentation run to run
    import shutil

    shutil.rmtree(b / f"checkpoint_{spec.epochs:06d}")  # an epoch interrupted: rerun from its start
    train_model(bp, spec, tmp_path / "b", progress=False, num_workers=2)
    assert (a / final).read_bytes() == (b / final).read_bytes()
    with pytest.raises(ZooError, match="--num-workers 2"):  # a stream's order depends on the worker count
        shutil.rmtree(b / f"checkpoint_{spec.epochs:06d}")
        train_model(bp, spec, tmp_path / "b", progress=False, num_workers=1)


def test_local_webdataset_shards_and_capped_streams_are_refused(tmp_path):
    shards = imagenet_wds(tmp_path / "shards")
    with pytest.raises(ZooError, match="classes.txt"):
        load_streams(f"wds:{shards}")
    (shards / "classes.txt").write_text("tench\ngoldfish\nshark\nray\n")
    streams = load_streams(f"wds:{shards}")
    assert streams.train.n_shards == len(WDS_TRAIN) and streams.names == ["tench", "goldfish", "shark", "ray"]
    ids = sorted(i for _, i, _ in _seen(streams.train, 2, 0, False, 0))
    assert ids == list(range(sum(WDS_TRAIN)))
    capped = tmp_path / "capped.yaml"
    capped.write_text(yaml.safe_dump({"extends": "smoke", "name": "c", "pretraining": {"dataset": {
        "name": f"wds:{shards}", "max_train": 5}}}))
    with pytest.raises(ZooError, match="null with a streamed data set"):
        load_blueprint(capped)
    with pytest.raises(ZooError, match="holds no WebDataset shards"):
        load_streams(f"wds:{tmp_path / 'empty'}")


def _devkit(folder: Path, wnids: list[str], truth: list[int]) -> Path:
    """The ILSVRC2012 devkit's two files: data/meta.mat (synsets, IDs in devkit order, with one non-leaf entry)
    and data/ILSVRC2012_validation_ground_truth.txt."""
    from scipy.io import savemat

    data = folder / "data"
    data.mkdir(parents=True)
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O")]
    order = list(reversed(wnids))  # devkit IDs are not the sorted-WNID order of the class folders
    rows = [(i + 1, w, w, "", 0) for i, w in enumerate(order)] + [(len(order) + 1, "n00000000", "root", "", 3)]
    savemat(data / "meta.mat", {"synsets": np.array(rows, dtype=dtype)})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{t}\n" for t in truth))
    return folder


def test_flat_ilsvrc_validation_folder_with_devkit_labels(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    root = tmp_path / "imagenet"
    for c, w in enumerate(wnids):
        (root / "train" / w).mkdir(parents=True)
        for i in range(2):
            PILImage.new("RGB", (8, 8), (c * 80, i, 0)).save(root / "train" / w / f"{w}_{i}.JPEG")
    (root / "val").mkdir()
    truth_wnids = ["n01484850", "n01440764", "n01443537", "n01440764"]
    for i, w in enumerate(truth_wnids):
        PILImage.new("RGB", (8, 8), (wnids.index(w) * 80, 9, 0)).save(root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    with pytest.raises(ZooError, match="dataset.validation_labels"):
        load_splits(f"folder:{root}")
    devkit_ids = {w: len(wnids) - wnids.index(w) for w in wnids}  # reversed order in meta.mat
    devkit = _devkit(tmp_path / "ILSVRC2012_devkit_t12", wnids, [devkit_ids[w] for w in truth_wnids])
    dd = load_splits(f"folder:{root}", validation_labels=str(devkit))
    assert dd["train"].features["label"].names == wnids
    assert [wnids[y] for y in dd["validation"]["label"]] == truth_wnids
    with tarfile.open(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(devkit, arcname="ILSVRC2012_devkit_t12")
    assert load_splits(f"folder:{root}", validation_labels=str(tmp_path / "ILSVRC2012_devkit_t12.tar.gz")
                       )["validation"]["label"] == dd["validation"]["label"]
    text = tmp_path / "val.txt"
    text.write_text("".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG {w}\n" for i, w in enumerate(truth_wnids)))
    assert load_splits(f"folder:{root}", validation_labels=str(text))["validation"]["label"] == dd["validation"][
        "label"]
    text.write_text("ILSVRC2012_val_00000001.JPEG n01484850\n")
    with pytest.raises(ZooError, match="no label for 3 validation image"):
        load_splits(f"folder:{root}", validation_labels=str(text))


def test_script_repo_gets_the_script_hint_not_log_in(hub, tmp_path):  # noqa: F811
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("ILSVRC/imagenet-1k", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"import datasets\n", path_in_repo="imagenet-1k.py", repo_id="ILSVRC/imagenet-1k",
                    repo_type="dataset")
    with pytest.raises(ZooError, match="script-based") as err:
        load_streams("hf:ILSVRC/imagenet-1k")
    assert "accept its terms" not in str(err.value) and "hf:timm/imagenet-1k-wds" in str(err.value)
    with pytest.raises(ZooError, match="check the name"):
        load_streams("hf:nobody/missing")


def test_step_weights_make_ddps_average_the_global_batch_mean():
    from vitzoo_hf.streaming import step_weight

    losses = [torch.rand(n) for n in (8, 3, 0)]  # per-example losses of three processes in one uneven step
    total = sum(len(x) for x in losses)
    ddp = sum(float(x.mean()) * step_weight(len(x), total, 3) if len(x) else 0.0 for x in losses) / 3
    assert ddp == pytest.approx(float(torch.cat(losses).mean()))
    assert step_weight(4, 8, 2) == 1.0  # even batches: the loss is untouched
