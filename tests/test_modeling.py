"""The zoo's model classes load through all three paths the issue names."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoModelForImageClassification, ViTForImageClassification, ViTModel

import vitzoo_hf  # noqa: F401  (registers the Auto classes)
from vitzoo_hf.modeling import ZooViTConfig, ZooViTForImageClassification, ZooViTModel


def tiny_config(head: str = "linear", drop_path_rate: float = 0.1) -> ZooViTConfig:
    return ZooViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                        image_size=16, patch_size=8, num_labels=10, drop_path_rate=drop_path_rate,
                        head_type=head, head_hidden_size=16)


@pytest.fixture(params=["linear", "mlp"])
def checkpoint(request, tmp_path):
    torch.manual_seed(0)
    model = ZooViTForImageClassification(tiny_config(request.param)).eval()
    model.save_pretrained(tmp_path)
    return request.param, model, tmp_path


def test_saved_as_safetensors_with_code_and_auto_map(checkpoint):
    _, _, path = checkpoint
    files = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "config.json", "modeling.py"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)


def test_auto_class_after_import(checkpoint):
    _, model, path = checkpoint
    loaded = AutoModelForImageClassification.from_pretrained(path).eval()
    assert type(loaded) is ZooViTForImageClassification
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


def test_trust_remote_code_in_a_process_without_vitzoo_hf(checkpoint):
    _, model, path = checkpoint
    x = torch.randn(2, 3, 16, 16)
    expected = model(x).logits
    from safetensors.torch import save_file

    save_file({"x": x, "logits": expected.detach()}, str(path.parent / f"io-{path.name}.safetensors"))
    script = f"""
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification
m = AutoModelForImageClassification.from_pretrained({str(path)!r}, trust_remote_code=True).eval()
io = load_file({str(path.parent / f"io-{path.name}.safetensors")!r})
assert "vitzoo_hf" not in sys.modules, "vitzoo_hf was imported"
assert type(m).__name__ == "ZooViTForImageClassification"
assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
torch.testing.assert_close(m(io["x"]).logits, io["logits"], rtol=0, atol=1e-6)
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_backbone_loads_into_plain_vit_model(checkpoint):
    _, model, path = checkpoint
    backbone = ViTModel.from_pretrained(path, add_pooling_layer=False).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(backbone(x).last_hidden_state, model.vit(x).last_hidden_state)


def test_linear_head_loads_into_plain_vit_for_image_classification(tmp_path):
    torch.manual_seed(0)
    model = ZooViTForImageClassification(tiny_config("linear")).eval()
    model.save_pretrained(tmp_path)
    plain = ViTForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(plain(x).logits, model(x).logits)


def test_contrastive_backbone_checkpoint_loads_as_vit_model(tmp_path):
    torch.manual_seed(0)
    backbone = ZooViTModel(tiny_config()).eval()
    backbone.save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is ZooViTModel
    x = torch.randn(2, 3, 16, 16)
    plain = ViTModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    torch.testing.assert_close(plain(x).last_hidden_state, backbone(x).last_hidden_state)


def test_stochastic_depth_is_active_only_in_training():
    torch.manual_seed(0)
    model = ZooViTForImageClassification(tiny_config(drop_path_rate=0.5))
    assert [layer.drop_path for layer in model.vit.layers] == [0.0, 0.25, 0.5]
    x = torch.randn(8, 3, 16, 16)
    model.train()
    a, b = model(x).logits, model(x).logits
    assert not torch.allclose(a, b)  # different samples dropped each call
    model.eval()
    torch.testing.assert_close(model(x).logits, model(x).logits)
    no_drop = ZooViTForImageClassification(tiny_config(drop_path_rate=0.0))
    no_drop.load_state_dict(model.state_dict())
    torch.testing.assert_close(no_drop.eval()(x).logits, model(x).logits)


def test_bad_head_type_is_rejected():
    with pytest.raises(ValueError, match="head_type"):
        tiny_config(head="conv")
