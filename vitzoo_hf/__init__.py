"""vitzoo_hf: a Hugging Face-native model zoo of Vision Transformers.

Importing the package registers the zoo's model classes with transformers' Auto classes, so
`AutoModelForImageClassification.from_pretrained(zoo_checkpoint)` returns a `ZooViTForImageClassification`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from vitzoo_hf.errors import ZooError
from vitzoo_hf.modeling import ZooViTConfig, ZooViTForImageClassification, ZooViTModel

__version__ = "0.1.0"

AutoConfig.register(ZooViTConfig.model_type, ZooViTConfig, exist_ok=True)
AutoModel.register(ZooViTConfig, ZooViTModel, exist_ok=True)
AutoModelForImageClassification.register(ZooViTConfig, ZooViTForImageClassification, exist_ok=True)
# Ship modeling.py with every checkpoint and point config.json's auto_map at it.
ZooViTConfig.register_for_auto_class()
ZooViTModel.register_for_auto_class("AutoModel")
ZooViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = ["Zoo", "ZooError", "ZooViTConfig", "ZooViTForImageClassification", "ZooViTModel", "__version__"]


def __getattr__(name: str):
    """`vitzoo_hf.Zoo` is imported on first use (it pulls in datasets)."""
    if name == "Zoo":
        from vitzoo_hf.zoo import Zoo

        return Zoo
    raise AttributeError(f"module 'vitzoo_hf' has no attribute {name!r}")
