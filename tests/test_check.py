"""`vitzoo check` and the same checks at the start of `vitzoo generate`: data sets, precision, disk, launcher."""

from __future__ import annotations

import socket
from collections import namedtuple

import numpy as np
from hub_fixtures import hf_cache, hub  # noqa: F401

from vitzoo_hf import checks
from vitzoo_hf.blueprint import expand, load_blueprint
from vitzoo_hf.checks import (
    Machine,
    bytes_to_write,
    dataset_report,
    launcher_problems,
    parameter_count,
    precision_problems,
    resolve_auto,
)
from vitzoo_hf.cli import main as cli_main

CPU = Machine((), (), cpu_bf16=True)
V100, A100, H100 = (7, 0), (8, 0), (9, 0)
Usage = namedtuple("Usage", "total used free")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_check_reports_unreachable_data_full_disk_and_unsupported_precision(tmp_path, monkeypatch, capsys):
    bp = tmp_path / "bad.yaml"
    bp.write_text("extends: smoke\nname: bad\nmixed_precision: fp16\n"
                  "finetuning: {dataset: {name: 'hf:some-org/some-images'}}\n")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")  # a Hub that does not answer
    monkeypatch.setattr(checks.Machine, "here", classmethod(lambda cls: CPU))  # no GPU, whatever runs the test
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 10**5, 10**5))  # 100 kB
    out = tmp_path / "zoo"
    assert cli_main(["check", str(bp), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3, err  # one line per problem
    data, precision, disk = err
    assert "'hf:some-org/some-images'" in data and "unreachable" in data and "HF_ENDPOINT" in data
    assert "'fp16' needs a CUDA GPU" in precision and "mixed_precision: no" in precision
    assert "not enough free disk" in disk and "100.00 kB is free" in disk and "--only" in disk

    # the same checks stop `generate` before it writes anything
    assert cli_main(["generate", str(bp), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and err[:3] == [line.replace("vitzoo check: problem:", "vitzoo: error:") for line in
                                         (data, precision, disk)], err
    assert not out.exists()


def test_check_passes_on_a_good_blueprint_and_on_a_real_small_disk(tmp_path, capsys):
    assert cli_main(["check", "smoke", "--out", str(tmp_path / "zoo")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"vitzoo check smoke: 10 of 10 model(s) to train into {tmp_path / 'zoo'}"
    assert any(line.startswith("ok       data set digits") for line in lines)
    assert any(line.startswith("ok       disk: 10 model(s) to train write about") for line in lines)


def test_bf16_by_compute_capability_not_emulation():
    assert precision_problems("bf16", Machine((A100, H100), ("0", "1"))) == []
    (line,) = precision_problems("bf16", Machine((H100, V100), ("0", "1")))
    assert "GPU 1 (compute capability 7.0)" in line and "GPU 0" not in line and "fp16 or no" in line
    assert precision_problems("fp16", Machine((V100,), ("0",))) == []
    assert precision_problems("bf16", Machine((), (), cpu_bf16=False))[0].startswith("mixed precision 'bf16' on this")
    assert precision_problems("bf16", CPU) == [] and precision_problems("no", CPU) == []
    assert [resolve_auto(Machine(c)) for c in ((A100,), (H100, A100), (A100, V100), ())] == ["bf16", "bf16", "no", "no"]


def test_disk_estimate_counts_the_architecture_epochs_and_optimizer_states(tmp_path):
    paper = load_blueprint("paper")
    # the authors' parameter counts (timm ViT-S/16): 1000-way, 100-way linear, 100-way 384-256-100 MLP head
    assert parameter_count(paper, "pretraining", "supervised", "linear", 1000) == 22_050_664
    assert parameter_count(paper, "finetuning", "supervised", "linear", 100) == 21_704_164
    assert parameter_count(paper, "finetuning", "supervised", "mlp", 100) == 21_789_924
    models = expand(paper)
    ft = next(m for m in models if m.head == "linear" and m.optimizer == "adamw")
    p = 21_704_164
    assert bytes_to_write(paper, ft, tmp_path, 100) == 51 * (4 * p + checks.CHECKPOINT_OVERHEAD) + 2 * 2 * 4 * p
    classes = {"imagenet-1k": 1000, "cifar100": 100}
    total = sum(bytes_to_write(paper, m, tmp_path, classes[m.dataset]) for m in models)
    assert 1.20e12 < total < 1.25e12  # the paper zoo: about 1.2 TB

    # a model half trained needs only its remaining checkpoints
    smoke = load_blueprint("smoke")
    m = expand(smoke)[0]
    full = bytes_to_write(smoke, m, tmp_path, 10)
    from vitzoo_hf import layout

    for epoch in range(m.epochs):
        layout.checkpoint_dir(layout.model_dir(tmp_path, m), epoch).mkdir(parents=True)
    params = parameter_count(smoke, m.stage, m.task, None, 10)
    assert full - bytes_to_write(smoke, m, tmp_path, 10) == m.epochs * (4 * params + checks.CHECKPOINT_OVERHEAD)


def test_launcher_processes_devices_and_batch_sizes():
    models = expand(load_blueprint("paper"))
    assert launcher_problems(models, Machine((A100,) * 8, tuple("01234567")), num_processes=8) == []
    lines = launcher_problems(models, Machine((A100,) * 8, tuple("01234567")), num_processes=3)
    assert [line.split(" (")[0] for line in lines] == ["batch size 128", "batch size 256", "batch size 512"]
    assert "(paper-vits16-224-sup-s6312-b512 and 4 more) is not divisible by 3 processes" in lines[2]
    (line,) = launcher_problems(models, Machine((A100,) * 4, tuple("0123")), num_processes=8)
    assert "--num-processes 8 but 4 GPU(s) are visible; use --num-processes 4" in line
    lines = launcher_problems(models, Machine((A100,) * 64, tuple(map(str, range(64)))), num_processes=64)
    assert [line.split(" (")[0] for line in lines] == ["batch size 96"]  # 128, 256 and 512 divide
    (line,) = launcher_problems(models[:1], Machine((A100,) * 2, ("2", "5")), devices=["2", "7"])
    assert "GPU(s) 7 that are not visible here (visible: 2, 5)" in line
    assert "no CUDA GPU is visible" in launcher_problems(models[:1], CPU, devices=["0"])[0]
    assert launcher_problems(models, CPU, num_processes=2) == []  # CPU processes (gloo) are fine; 96, 128... even


def _images(n: int, classes: int):
    from datasets import ClassLabel, Dataset, Features, Image

    rng = np.random.default_rng(0)
    features = Features({"img": Image(), "fine_label": ClassLabel(names=[f"c{i}" for i in range(classes)])})
    return Dataset.from_dict({"img": [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(n)],
                              "fine_label": [i % classes for i in range(n)]}, features=features)


def test_hub_data_sets_are_probed_without_downloading(hub, tmp_path):  # noqa: F811
    from datasets import Dataset

    _images(20, 10).push_to_hub("uoft-cs/cifar100")  # a "CIFAR-100" with 10 classes
    _images(20, 4).push_to_hub("my-org/good")
    Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).push_to_hub("my-org/text")
    good = dataset_report("hf:my-org/good")
    assert good.problems == [] and good.classes == 4 and "columns img, fine_label; 4 classes" in good.note
    (line,) = dataset_report("cifar100").problems
    assert "has 10 classes where 100 are expected" in line
    (line,) = dataset_report("hf:my-org/text").problems
    assert "needs an Image column and a ClassLabel column" in line and "text: Value" in line
    (line,) = dataset_report("hf:my-org/missing").problems
    assert "no repo my-org/missing" in line and "hf auth login" in line


def test_folder_data_sets(tmp_path):
    (tmp_path / "one" / "a").mkdir(parents=True)
    assert "1 class sub-folder" in dataset_report(f"folder:{tmp_path / 'one'}").problems[0]
    (tmp_path / "one" / "b").mkdir()
    (tmp_path / "one" / "a" / "x.png").write_bytes(b"not a png")
    assert "not a readable image" in dataset_report(f"folder:{tmp_path / 'one'}").problems[0]
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "one" / "a" / "x.png")
    assert dataset_report(f"folder:{tmp_path / 'one'}").classes == 2
    assert "does not exist" in dataset_report(f"folder:{tmp_path / 'nope'}").problems[0]


def test_webdataset_shards_pass_with_their_cls_labels(hub, tmp_path):  # noqa: F811
    import io
    import tarfile

    from huggingface_hub import HfApi
    from PIL import Image

    shard = tmp_path / "train-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            jpg = io.BytesIO()
            Image.new("RGB", (20, 15), (i * 60, 0, 0)).save(jpg, format="JPEG")
            for name, data in ((f"{i:04d}.jpg", jpg.getvalue()), (f"{i:04d}.cls", str(i % 2).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    api = HfApi()
    api.create_repo("my-org/wds", repo_type="dataset")
    api.upload_file(path_or_fileobj=str(shard), path_in_repo="train/train-000.tar", repo_id="my-org/wds",
                    repo_type="dataset")
    report = dataset_report("hf:my-org/wds")
    assert report.problems == [] and "WebDataset columns jpg, cls" in report.note


def test_local_webdataset_shards_are_checked(tmp_path):
    from vitzoo_hf.checks import dataset_report

    missing = dataset_report(f"wds:{tmp_path / 'none'}")
    assert len(missing.problems) == 1 and "no WebDataset .tar shards" in missing.problems[0]
    (tmp_path / "train-000000.tar").write_bytes(b"")
    assert dataset_report(f"wds:{tmp_path}").problems == []
