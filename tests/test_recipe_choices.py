"""The choices the paper leaves open, as blueprint keys: defaults keep today's zoos, `paper` follows the authors'
code, and every choice reaches the model, its transforms and its records."""

from __future__ import annotations

import json

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from vitzoo_hf import layout
from vitzoo_hf.blueprint import expand, load_blueprint
from vitzoo_hf.checkpoints import read_json
from vitzoo_hf.modeling import ZooViTConfig, ZooViTForImageClassification, ZooViTModel
from vitzoo_hf.recipe import image_transforms, model_config
from vitzoo_hf.simclr import ProjectionHead
from vitzoo_hf.training import check_settings, model_record, train_model

AUTHORS = """extends: smoke
name: authors
architecture: {layer_norm_eps: 1.0e-6, init: kaiming_normal, init_bias: 0.01}
pretraining:
  tasks:
    supervised: {augmentation: {crop: random_resized_crop, horizontal_flip: true, crop_scale: [0.5, 1.0]}}
    contrastive: {runs: []}
finetuning: {head_init: kaiming_normal, grid: {head: [mlp], optimizer: [adamw]}}
"""


def test_paper_follows_the_authors_code_and_the_small_zoos_keep_the_defaults():
    paper = load_blueprint("paper")
    a, sup, con = paper.architecture, paper.pretraining.tasks.supervised, paper.pretraining.tasks.contrastive
    assert (a.layer_norm_eps, a.init, a.init_bias, a.drop_path_rate) == (1e-6, "kaiming_normal", 0.01, 0.1)
    assert (sup.augmentation.crop, sup.augmentation.horizontal_flip, sup.augmentation.crop_scale) == (
        "random_resized_crop", True, (0.08, 1.0))
    assert (con.projection, con.projection_dim, con.views.p_blur, con.views.blur_kernel) == ("linear", 1000, 1.0, 9)
    assert paper.finetuning.head_init == "kaiming_normal" and paper.finetuning.augmentation.crop == "resize_crop"
    for name in ("smoke", "mini"):
        bp = load_blueprint(name)
        assert bp.pretraining.tasks.supervised.augmentation.crop == "resize_crop"
        assert bp.pretraining.tasks.contrastive.projection == "mlp" and bp.finetuning.head_init == "torch_default"
    smoke, mini = load_blueprint("smoke").architecture, load_blueprint("mini").architecture
    assert (smoke.layer_norm_eps, smoke.init, smoke.init_bias) == (1e-12, "hf", 0.0)
    # mini: the authors' init (its backbones must start far apart for the paper's clusters), a default head
    assert (mini.layer_norm_eps, mini.init, mini.init_bias) == (1e-6, "kaiming_normal", 0.01)


def test_kaiming_init_with_bias_and_layer_norm_eps_reach_the_model():
    paper = load_blueprint("paper")
    torch.manual_seed(0)
    model = ZooViTForImageClassification(model_config(paper, [str(i) for i in range(100)]))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert len(linears) == 12 * 6 + 2  # q, k, v, out, fc1, fc2 per block; patch embedding; classifier
    assert all(torch.all(m.bias == 0.01) for m in linears)
    fc1 = model.vit.layers[0].mlp.fc1  # 384 -> 1536: kaiming normal, std sqrt(2 / fan_in)
    assert abs(fc1.weight.std().item() - (2 / 384) ** 0.5) < 0.002
    patch = model.vit.embeddings.patch_embeddings.projection
    assert abs(patch.weight.std().item() - (2 / (3 * 16 * 16)) ** 0.5) < 0.002
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)

    torch.manual_seed(0)  # the default: transformers' init, untouched (normal 0.02, zero bias, eps 1e-12)
    hf = ZooViTModel(ZooViTConfig(hidden_size=384, num_hidden_layers=2, num_attention_heads=6,
                                  intermediate_size=1536))
    torch.manual_seed(0)
    explicit = ZooViTModel(ZooViTConfig(hidden_size=384, num_hidden_layers=2, num_attention_heads=6,
                                        intermediate_size=1536, init="hf", init_bias=0.0))
    assert all(torch.equal(p, q) for p, q in zip(hf.parameters(), explicit.parameters(), strict=True))
    dense = hf.layers[0].mlp.fc1
    assert torch.all(dense.bias == 0) and abs(dense.weight.std().item() - 0.02) < 0.001
    assert hf.layernorm.eps == 1e-12


def test_random_resized_crop_for_pretraining_resize_crop_for_finetuning():
    paper = load_blueprint("paper")
    train, _ = image_transforms(paper, paper.pretraining.tasks.supervised.augmentation)
    kinds = [type(t) for t in train.transforms]
    assert v2.RandomResizedCrop in kinds and v2.RandomHorizontalFlip in kinds and v2.RandomCrop not in kinds
    rrc = train.transforms[kinds.index(v2.RandomResizedCrop)]
    assert rrc.scale == (0.08, 1.0) and tuple(rrc.size) == (224, 224)
    image = Image.new("RGB", (500, 375), (120, 30, 200))
    assert train(image).shape == (3, 224, 224)
    train, _ = image_transforms(paper, paper.finetuning.augmentation)
    kinds = [type(t) for t in train.transforms]
    assert v2.RandomCrop in kinds and v2.RandomResizedCrop not in kinds and v2.RandomRotation in kinds


def test_linear_projection_head_round_trips(tmp_path):
    head = ProjectionHead(384, out_dim=1000, layers=1)
    assert [n for n, _ in head.named_parameters()] == ["fc2.weight", "fc2.bias"]
    loaded = ProjectionHead.load(head.save(tmp_path))
    x = torch.randn(2, 384)
    assert torch.equal(head(x), loaded(x)) and loaded.config["layers"] == 1
    assert "layers" not in ProjectionHead(8).config  # the MLP's file stays as before


def test_choices_are_trained_and_recorded(tmp_path):
    path = tmp_path / "authors.yaml"
    path.write_text(AUTHORS)
    bp = load_blueprint(path)
    backbone, child = expand(bp)[:2]
    zoo = tmp_path / "zoo"
    train_model(bp, backbone, zoo, progress=False)
    train_model(bp, child, zoo, progress=False)
    record = read_json(layout.model_dir(zoo, backbone) / layout.CONFIG_FILE)
    assert record["architecture"]["init"] == "kaiming_normal" and record["architecture"]["layer_norm_eps"] == 1e-6
    assert record["recipe"]["augmentation"]["crop"] == "random_resized_crop"
    assert record["recipe"]["augmentation"]["crop_scale"] == [0.5, 1.0]
    child_record = read_json(layout.model_dir(zoo, child) / layout.CONFIG_FILE)
    assert child_record["recipe"]["head_init"] == "kaiming_normal, bias 0.01, seeded by head_seed"
    hf_config = json.loads((layout.checkpoint_dir(layout.model_dir(zoo, child), 0) / "config.json").read_text())
    assert (hf_config["layer_norm_eps"], hf_config["init"], hf_config["init_bias"]) == (1e-6, "kaiming_normal", 0.01)
    first = ZooViTForImageClassification.from_pretrained(layout.checkpoint_dir(layout.model_dir(zoo, child), 0))
    assert all(torch.all(m.bias == 0.01) for m in first.classifier.modules() if isinstance(m, nn.Linear))
    assert [type(m) for m in first.classifier] == [nn.Linear, nn.ReLU, nn.Linear]  # the MLP head got it too
    start = ZooViTModel.from_pretrained(layout.checkpoint_dir(layout.model_dir(zoo, backbone), 0))
    assert all(torch.all(m.bias == 0.01) for m in start.modules() if isinstance(m, nn.Linear | nn.Conv2d))


def test_folders_written_before_the_keys_existed_still_match(tmp_path):
    smoke = load_blueprint("smoke")
    spec = expand(smoke)[0]
    record = model_record(smoke, spec, None, spec.batch_size)
    old = json.loads(json.dumps(record))
    for key in ("layer_norm_eps", "init", "init_bias"):
        del old["architecture"][key]
    for key in ("crop", "crop_scale"):
        del old["recipe"]["augmentation"][key]
    for key in ("streaming", "validation_labels"):
        del old["recipe"]["dataset"][key]
    (tmp_path / layout.CONFIG_FILE).write_text(json.dumps(old))
    check_settings(tmp_path, record, resuming=False)  # same model: no error
    authors = load_blueprint("paper")
    changed = model_record(smoke.__class__(**{**smoke.__dict__, "architecture": authors.architecture}), spec, None,
                           spec.batch_size)
    try:
        check_settings(tmp_path, changed, resuming=False)
    except Exception as err:
        assert "architecture" in str(err)
    else:
        raise AssertionError("a changed init was not noticed")


def test_each_task_records_only_its_own_recipe():
    """A supervised record holds its augmentation and no SimCLR section; a contrastive one the reverse (a zoo made
    before the streaming keys must still match both)."""
    smoke = load_blueprint("smoke")
    for spec in expand(smoke):
        recipe = model_record(smoke, spec, None, spec.batch_size)["recipe"]
        contrastive = spec.stage == "pretraining" and spec.task == "contrastive"
        assert ("contrastive" in recipe) == contrastive, spec.name
        assert ("augmentation" in recipe) != contrastive, spec.name


def test_evaluation_inputs_are_made_once_and_equal_those_made_afresh(monkeypatch):
    """The eval loaders keep a small split's inputs after the first epoch; what they return is exactly what the
    transform makes, and a split over the budget is made afresh every time (the cache is then dropped)."""
    from vitzoo_hf import recipe
    from vitzoo_hf.data import load_splits

    bp = load_blueprint("smoke")
    splits = load_splits("digits", max_train=64, max_validation=40)
    calls = []
    _, eval_tf = recipe.image_transforms(bp, bp.finetuning.augmentation)

    def counting(image):
        calls.append(1)
        return eval_tf(image)

    keys = [(i, recipe.sample_seed(0, i)) for i in range(40)]
    plain = recipe.SeededImages(splits["validation"], eval_tf).__getitems__(keys)
    kept = recipe.SeededImages(splits["validation"], counting, cache=(40, recipe.EVAL_CACHE_BYTES))
    first, second = kept.__getitems__(keys), kept.__getitems__(keys)
    assert len(calls) == 40  # made once
    for a, b, c in zip(plain, first, second, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0]) and a[1] == b[1] == c[1]
    calls.clear()
    tight = recipe.SeededImages(splits["validation"], counting, cache=(40, 40 * 3 * 16 * 16 * 4 - 1))
    tight.__getitems__(keys), tight.__getitems__(keys)
    assert len(calls) == 80  # one byte short of the whole split: nothing kept

    loaders = recipe.supervised_loaders(bp, bp.finetuning.augmentation, splits, 16, torch.Generator().manual_seed(0))
    epochs = [[x.clone() for x, _ in loaders["eval_validation"]] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*epochs, strict=True))
    assert loaders["eval_validation"].dataset._cache and loaders["train"].dataset._cache is None  # train: never
