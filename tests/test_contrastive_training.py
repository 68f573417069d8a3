"""SimCLR backbones in the zoo: metrics per epoch, checkpoints a user can load, children that fine-tune."""

import json

import torch
from transformers import AutoModel, ViTModel

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand
from vitzoo_hf.checkpoints import verify_checkpoint
from vitzoo_hf.simclr import ProjectionHead


def test_contrastive_backbone_outputs(smoke_all):
    bp, out = smoke_all
    spec = next(m for m in expand(bp) if m.task == "contrastive" and m.stage == "pretraining")
    path = layout.model_dir(out, spec)
    rows = [json.loads(line) for line in (path / "result.json").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(spec.epochs + 1))
    for r in rows:  # InfoNCE loss and top-1 retrieval on training and validation data (the paper's Table 8)
        assert r["train_loss"] > 0 and r["validation_loss"] > 0
        assert 0 <= r["train_accuracy"] <= 1 and 0 <= r["validation_accuracy"] <= 1
        assert r["validation_examples"] == 2 * 64  # two views of each validation image are anchors
    config = json.loads((path / "config.json").read_text())
    assert config["recipe"]["contrastive"]["temperature"] == bp.pretraining.tasks.contrastive.temperature
    for ckpt in layout.checkpoints(path).values():
        verify_checkpoint(ckpt)
        backbone = ViTModel.from_pretrained(ckpt, add_pooling_layer=False).eval()
        ours = AutoModel.from_pretrained(ckpt).eval()
        x = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(backbone(x).last_hidden_state, ours(x).last_hidden_state)
        head = ProjectionHead.load(ckpt)
        assert head.config["out_dim"] == bp.pretraining.tasks.contrastive.projection_dim
        assert head(ours(x).last_hidden_state[:, 0]).shape == (2, head.config["out_dim"])
    first = ProjectionHead.load(layout.checkpoint_dir(path, 0)).state_dict()
    last = ProjectionHead.load(layout.checkpoint_dir(path, spec.epochs)).state_dict()
    assert any(not torch.equal(first[k], last[k]) for k in first)


def test_children_of_a_contrastive_backbone_fine_tune(smoke_all):
    bp, out = smoke_all
    models = expand(bp)
    parent = next(m for m in models if m.task == "contrastive" and m.stage == "pretraining")
    children = [m for m in models if m.parent == parent.name]
    assert len(children) == 4
    backbone = ViTModel.from_pretrained(layout.checkpoint_dir(layout.model_dir(out, parent), parent.epochs),
                                        add_pooling_layer=False)
    for child in children:
        path = layout.model_dir(out, child)
        assert path.parent.name == parent.name
        rows = [json.loads(line) for line in (path / "result.json").read_text().splitlines()]
        assert len(rows) == child.epochs + 1 and rows[-1]["validation_examples"] == 64
        start = ViTModel.from_pretrained(layout.checkpoint_dir(path, 0), add_pooling_layer=False)
        for (name, a), (_, b) in zip(backbone.state_dict().items(), start.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
