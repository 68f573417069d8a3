"""datasets and transformers against the local hub, imported *before* ``local_hub()`` was entered.

Both libraries capture ``HF_ENDPOINT`` at import time; these tests prove ``configure_clients`` repoints them.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import uuid

import datasets
import huggingface_hub
import torch
import transformers
from hub_fixtures import hf_cache, hub  # noqa: F401
from huggingface_hub import HfApi

from vitzoo_hf.hub import configure_clients, local_hub


def test_clients_were_imported_before_the_hub(hub):  # noqa: F811
    # The modules were imported at the top of this file, long before the fixture started the hub.
    assert huggingface_hub.constants.ENDPOINT == hub.endpoint
    assert datasets.config.HF_ENDPOINT == hub.endpoint
    assert huggingface_hub.constants.HF_HUB_DISABLE_XET is True
    assert huggingface_hub.hf_api.api.endpoint == hub.endpoint
    assert huggingface_hub.HfFileSystem().endpoint == hub.endpoint
    assert transformers.utils.hub.hf_api().endpoint == hub.endpoint


def test_configure_clients_restores_everything(tmp_path, hf_cache, monkeypatch):  # noqa: F811
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_XET", raising=False)
    monkeypatch.setenv("HF_TOKEN", "outer-token")
    before = (huggingface_hub.constants.ENDPOINT, datasets.config.HF_ENDPOINT,
              huggingface_hub.constants.HF_HUB_DISABLE_XET, huggingface_hub.utils._http._HUB_ORIGINS)
    with local_hub(tmp_path / "root") as h:
        assert os.environ["HF_ENDPOINT"] == h.endpoint and os.environ["HF_TOKEN"] == h.token
        assert os.environ["HF_HUB_DISABLE_XET"] == "1"
        assert h.endpoint in {o for o in huggingface_hub.utils._http._HUB_ORIGINS}
    after = (huggingface_hub.constants.ENDPOINT, datasets.config.HF_ENDPOINT,
             huggingface_hub.constants.HF_HUB_DISABLE_XET, huggingface_hub.utils._http._HUB_ORIGINS)
    assert after == before
    assert "HF_ENDPOINT" not in os.environ and "HF_HUB_DISABLE_XET" not in os.environ
    assert os.environ["HF_TOKEN"] == "outer-token"
    # Against the real Hub nothing is forced: Xet stays as it was.
    with configure_clients("https://huggingface.co"):
        assert huggingface_hub.constants.HF_HUB_DISABLE_XET is False
        assert "HF_HUB_DISABLE_XET" not in os.environ


def test_datasets_two_configs_load_and_stream(hub):  # noqa: F811
    repo = "zoo-org/zoo-metadata"
    datasets.Dataset.from_dict({"model": ["a", "b", "c"], "acc": [0.1, 0.2, 0.3]}).push_to_hub(
        repo, config_name="models")
    datasets.Dataset.from_dict({"epoch": [1, 2]}).push_to_hub(repo, config_name="checkpoints")
    assert sorted(datasets.get_dataset_config_names(repo)) == ["checkpoints", "models"]
    models = datasets.load_dataset(repo, "models", split="train")
    assert models["model"] == ["a", "b", "c"] and models["acc"] == [0.1, 0.2, 0.3]
    assert datasets.load_dataset(repo, "checkpoints", split="train")["epoch"] == [1, 2]
    streamed = list(datasets.load_dataset(repo, "models", split="train", streaming=True))
    assert [r["model"] for r in streamed] == ["a", "b", "c"]
    files = HfApi().list_repo_files(repo, repo_type="dataset")
    assert any(f.startswith("models/") and f.endswith(".parquet") for f in files)
    # pushing a config again replaces its shards (parentCommit-checked commit)
    datasets.Dataset.from_dict({"model": ["z"], "acc": [1.0]}).push_to_hub(repo, config_name="models")
    assert datasets.load_dataset(repo, "models", split="train")["model"] == ["z"]


def _tiny_vit() -> transformers.ViTForImageClassification:
    cfg = transformers.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                 image_size=8, patch_size=4, num_labels=3)
    return transformers.ViTForImageClassification(cfg)


def test_transformers_push_to_branch_and_load_by_revision(hub):  # noqa: F811
    repo = "zoo-org/vit-tiny"
    model = _tiny_vit()
    model.push_to_hub(repo, commit_message="final")
    first = HfApi().model_info(repo).sha
    with torch.no_grad():
        model.classifier.weight.fill_(0.5)
    model.push_to_hub(repo, revision="epoch-1", commit_message="epoch 1")
    branches = {b.name: b.target_commit for b in HfApi().list_repo_refs(repo).branches}
    assert set(branches) == {"main", "epoch-1"}
    loaded = transformers.ViTForImageClassification.from_pretrained(repo, revision="epoch-1")
    assert torch.all(loaded.classifier.weight == 0.5)
    by_sha = transformers.ViTForImageClassification.from_pretrained(repo, revision=first)
    assert not torch.all(by_sha.classifier.weight == 0.5)
    assert torch.equal(by_sha.vit.embeddings.cls_token, model.vit.embeddings.cls_token)
    assert "model.safetensors" in HfApi().list_repo_files(repo, revision="epoch-1")


def test_transformers_trust_remote_code(hub, tmp_path):  # noqa: F811
    module = f"zoo_custom_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""
        import torch
        from transformers import PretrainedConfig, PreTrainedModel

        class ZooConfig(PretrainedConfig):
            model_type = "zoo-custom"

            def __init__(self, width=4, **kwargs):
                self.width = width
                super().__init__(**kwargs)

        class ZooModel(PreTrainedModel):
            config_class = ZooConfig

            def __init__(self, config):
                super().__init__(config)
                self.lin = torch.nn.Linear(config.width, 2)
                self.post_init()

            def _init_weights(self, module):
                pass

            def forward(self, x):
                return self.lin(x)
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        mod = importlib.import_module(module)
        mod.ZooConfig.register_for_auto_class()
        mod.ZooModel.register_for_auto_class("AutoModel")
        model = mod.ZooModel(mod.ZooConfig(width=4))
        repo = "zoo-org/custom"
        model.push_to_hub(repo)
        assert f"{module}.py" in HfApi().list_repo_files(repo)
        loaded = transformers.AutoModel.from_pretrained(repo, trust_remote_code=True)
        assert type(loaded).__name__ == "ZooModel" and type(loaded) is not mod.ZooModel
        assert torch.equal(loaded.lin.weight, model.lin.weight)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)
