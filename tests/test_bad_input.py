"""Bad input on the command line: one clear line naming the problem and the fix, exit code 2, nothing written."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import yaml

from vitzoo_hf.checkpoints import verify_checkpoint
from vitzoo_hf.cli import main
from vitzoo_hf.errors import ZooError


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _smoke_yaml() -> dict:
    return yaml.safe_load(resources.files("vitzoo_hf").joinpath("blueprints/smoke.yaml").read_text())


def test_blueprint_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: café\nextends: smoke\n".encode("latin-1"))
    assert main(["plan", str(path)]) == 2
    err = _one_line(capsys)
    assert str(path) in err and "UTF-8" in err


def test_relative_extends_is_resolved_against_the_blueprint_folder(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "blueprints"
    (folder / "common").mkdir(parents=True)
    base = dict(_smoke_yaml(), name="based")
    base.pop("extends", None)
    (folder / "common" / "base.yaml").write_text(yaml.safe_dump(base))
    (folder / "mid.yaml").write_text("extends: common/base.yaml\nname: mid\n")
    (folder / "child.yaml").write_text("extends: ./mid.yaml\nname: child\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["plan", str(folder / "child.yaml"), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 10 and all(r["name"].startswith("child-") for r in records)
    # a relative path that exists neither next to the blueprint nor as a shipped name: named in the error
    (folder / "orphan.yaml").write_text("extends: missing.yaml\n")
    assert main(["plan", str(folder / "orphan.yaml")]) == 2
    assert str(folder / "missing.yaml") in _one_line(capsys)


def test_hub_serve_with_a_bad_user_name(tmp_path, capsys):
    root = tmp_path / "root"
    assert main(["hub", "serve", "--root", str(root), "--port", "0", "--user", "bad user"]) == 2
    err = _one_line(capsys)
    assert "--user" in err and "'bad user'" in err
    assert not root.exists()  # nothing created for a command that could not start


@pytest.mark.parametrize("tracker", ["no-such-tracker", "not-installed"])
def test_generate_with_an_unknown_or_missing_tracker_fails_before_training(tmp_path, capsys, tracker):
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    if tracker == "not-installed":
        missing = [t for t in LOGGER_TYPE_TO_CLASS if t not in {str(a) for a in get_available_trackers()}]
        if not missing:
            pytest.skip("every accelerate tracker is installed here")
        tracker = missing[0]
    out = tmp_path / "zoo"
    assert main(["generate", "smoke", "--out", str(out), "--log-with", tracker]) == 2
    err = _one_line(capsys)
    assert f"--log-with {tracker}" in err and ("tensorboard" in err or "pip install" in err)
    assert not out.exists() or not any(out.rglob("*.safetensors"))


@pytest.mark.parametrize("content", ["{}", "[]", '{"sha256": ["model.safetensors"]}', '{"sha256": {"a": 5}}'])
def test_checkpoint_manifest_without_its_keys(tmp_path, content):
    ckpt = tmp_path / "checkpoint_000001"
    ckpt.mkdir()
    (ckpt / "manifest.json").write_text(content)
    with pytest.raises(ZooError, match=r"manifest\.json") as e:
        verify_checkpoint(ckpt)
    assert str(ckpt / "manifest.json") in str(e.value) and "delete" in str(e.value)
