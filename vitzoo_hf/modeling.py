"""The zoo's model classes: a transformers ViT with stochastic depth and a linear or MLP head.

This file is self-contained on purpose (it imports only torch, torchvision and transformers): `save_pretrained`
copies it next to every checkpoint and `config.json` points at it through `auto_map`, so a checkpoint loads
with `trust_remote_code=True` in a process that has never heard of vitzoo_hf.

State-dict keys match transformers' own ViT (`vit.*` backbone, `classifier.*` head), so every zoo checkpoint's
backbone loads with `ViTModel.from_pretrained` and a linear-head checkpoint loads into
`ViTForImageClassification` unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import stochastic_depth
from transformers import ViTConfig
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.vit.modeling_vit import ViTLayer, ViTModel, ViTPreTrainedModel

HEAD_TYPES = ("linear", "mlp")
INIT_TYPES = ("hf", "kaiming_normal")
AUTO_MAP = {
    "AutoConfig": "modeling.ZooViTConfig",
    "AutoModel": "modeling.ZooViTModel",
    "AutoModelForImageClassification": "modeling.ZooViTForImageClassification",
}


class ZooViTConfig(ViTConfig):
    """ViT config plus the zoo's two architectural factors: stochastic depth and head type."""

    model_type = "zoo_vit"

    def __init__(
        self,
        drop_path_rate: float = 0.0,
        head_type: str = "linear",
        head_hidden_size: int = 256,
        init: str = "hf",
        init_bias: float = 0.0,
        **kwargs,
    ) -> None:
        if init not in INIT_TYPES:
            raise ValueError(f"init must be one of {INIT_TYPES}, got {init!r}")
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.drop_path_rate = drop_path_rate
        self.head_type = head_type
        self.head_hidden_size = head_hidden_size
        self.init, self.init_bias = init, init_bias
        # Every zoo checkpoint names its code for all three Auto classes, whichever class saved it.
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(**kwargs)


def reinit_linear(module: nn.Module, init: str, bias: float) -> nn.Module:
    """Re-initialise every Linear and Conv2d under `module`: `kaiming_normal` draws weights kaiming-normal (fan-in,
    gain sqrt(2)) and sets biases to `bias`, as the authors' `initialize_weights` did; `hf` keeps the weights and
    only sets a non-zero `bias`. Parameters already loaded from a checkpoint are left alone."""
    if init not in INIT_TYPES:
        raise ValueError(f"init must be one of {INIT_TYPES}, got {init!r}")
    for m in module.modules():
        if not isinstance(m, nn.Linear | nn.Conv2d) or getattr(m.weight, "_is_hf_initialized", False):
            continue
        if init == "kaiming_normal":
            nn.init.kaiming_normal_(m.weight)
        if m.bias is not None and (init == "kaiming_normal" or bias):
            nn.init.constant_(m.bias, bias)
    return module


class _ZooInit:
    """transformers' ViT initialisation, then `config.init` / `config.init_bias` (`reinit_linear`)."""

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.Linear | nn.Conv2d):
            reinit_linear(module, getattr(self.config, "init", "hf"), getattr(self.config, "init_bias", 0.0))


class ZooViTLayer(ViTLayer):
    """A ViT block whose two residual branches are dropped per sample (stochastic depth, "row" mode)."""

    def __init__(self, config: ViTConfig, drop_path: float) -> None:
        super().__init__(config)
        self.drop_path = drop_path

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        branch, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
        branch = stochastic_depth(self.dropout(branch), self.drop_path, "row", self.training)
        hidden_states = hidden_states + branch
        branch = self.dropout(self.mlp(self.layernorm_after(hidden_states)))
        return hidden_states + stochastic_depth(branch, self.drop_path, "row", self.training)


def _drop_path_rates(config: ZooViTConfig) -> list[float]:
    """Linearly increasing drop probability over depth (DeiT / timm rule)."""
    n = config.num_hidden_layers
    return [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]


class ZooViTModel(_ZooInit, ViTModel):
    """The backbone: transformers' ViTModel with stochastic-depth blocks and no pooler."""

    config_class = ZooViTConfig

    def __init__(self, config: ZooViTConfig, add_pooling_layer: bool = False, use_mask_token: bool = False):
        super().__init__(config, add_pooling_layer=add_pooling_layer, use_mask_token=use_mask_token)
        self.layers = nn.ModuleList([ZooViTLayer(config, p) for p in _drop_path_rates(config)])
        self.post_init()


def build_head(config: ZooViTConfig) -> nn.Module:
    """Linear head, or the paper's MLP head (hidden 256, ReLU)."""
    if config.head_type == "linear":
        return nn.Linear(config.hidden_size, config.num_labels)
    return nn.Sequential(
        nn.Linear(config.hidden_size, config.head_hidden_size),
        nn.ReLU(),
        nn.Linear(config.head_hidden_size, config.num_labels),
    )


class ZooViTForImageClassification(_ZooInit, ViTPreTrainedModel):
    """Backbone + classification head on the CLS token; same key layout as ViTForImageClassification."""

    config_class = ZooViTConfig

    def __init__(self, config: ZooViTConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ZooViTModel(config, add_pooling_layer=False)
        self.classifier = build_head(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        """Logits from the CLS token; `labels` must be class indices (soft targets belong outside the model)."""
        outputs = self.vit(pixel_values, **kwargs)
        logits = self.classifier(outputs.last_hidden_state[:, 0, :])
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels.to(logits.device))
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


