"""Start-up: the CLI and the local Hub never import torch, yet `import vitzoo_hf` still registers the zoo's models.

Each check runs in a fresh interpreter, since this test process has long imported torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "accelerate", "torchvision")


def _python(script: str, cwd: Path | str = "/") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_cli_plan_help_and_hub_server_never_import_torch(tmp_path):
    script = f"""
import contextlib, http.client, io, json, sys
from vitzoo_hf.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    assert main(["plan", "smoke", "--json"]) == 0
    assert main(["plan", "paper"]) == 0
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
assert len(out.getvalue().splitlines()) > 10
from vitzoo_hf.hub import HubServer
with HubServer({str(tmp_path / "hub")!r}, ["tok"], port=0) as server:
    def call(method, path, body=None, token="tok", kind="application/json"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request(method, path, body=body, headers={{"Authorization": f"Bearer {{token}}", "Content-Type": kind}})
        r = conn.getresponse()
        return r.status, r.read()
    assert call("POST", "/api/repos/create", json.dumps({{"name": "vit", "organization": "zoo"}}))[0] == 200
    lines = [{{"key": "header", "value": {{"summary": "add"}}}},
             {{"key": "file", "value": {{"path": "a.txt", "content": "aGk=", "encoding": "base64"}}}}]
    assert call("POST", "/api/models/zoo/vit/commit/main", "\\n".join(json.dumps(x) for x in lines),
                kind="application/x-ndjson")[0] == 200
    assert call("GET", "/zoo/vit/resolve/main/a.txt") == (200, b"hi")
    assert call("GET", "/api/models")[0] == 200
loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
assert not loaded, f"imported {{loaded}}"
print("OK")
"""
    _python(script)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from vitzoo_hf.modeling import ZooViTConfig, ZooViTForImageClassification

    path = tmp_path_factory.mktemp("tiny-zoo-vit")
    config = ZooViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=16, patch_size=8, num_labels=10, head_type="mlp", head_hidden_size=16)
    ZooViTForImageClassification(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("first", ["vitzoo_hf", "transformers"])
def test_import_vitzoo_hf_registers_auto_classes_without_importing_torch(tiny_checkpoint, first):
    """Whichever comes first, `import vitzoo_hf` makes the Auto classes return the zoo's classes."""
    other = "transformers" if first == "vitzoo_hf" else "vitzoo_hf"
    script = f"""
import sys
import {first}
if {first!r} == "vitzoo_hf":
    assert "torch" not in sys.modules and "transformers" not in sys.modules, "import vitzoo_hf imported torch"
import {other}
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
import vitzoo_hf
m = AutoModelForImageClassification.from_pretrained({str(tiny_checkpoint)!r})
assert type(m) is vitzoo_hf.ZooViTForImageClassification, type(m)
assert type(AutoModel.from_pretrained({str(tiny_checkpoint)!r})) is vitzoo_hf.ZooViTModel
assert type(AutoConfig.from_pretrained({str(tiny_checkpoint)!r})) is vitzoo_hf.ZooViTConfig
print("OK")
"""
    _python(script)


def test_checkpoint_saved_after_plain_modeling_import_carries_code_and_auto_map(tmp_path):
    """save_pretrained ships modeling.py and an auto_map even when only vitzoo_hf.modeling was imported."""
    script = f"""
from vitzoo_hf.modeling import ZooViTConfig, ZooViTModel
ZooViTModel(ZooViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         image_size=16, patch_size=8)).save_pretrained({str(tmp_path)!r})
print("OK")
"""
    _python(script)
    assert (tmp_path / "modeling.py").is_file()
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling.ZooViTForImageClassification"
