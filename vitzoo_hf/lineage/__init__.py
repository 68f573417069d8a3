"""Model lineage: recover which model was fine-tuned from which, from the weights alone.

    from vitzoo_hf import lineage
    edges = lineage.predict({"base": "base/model.safetensors", "ft": state_dict, ...}, method="mother")
    lineage.score(edges, true_edges)   # accuracy over the directed adjacency matrix, precision, recall, F1

Methods: "mother" (MoTHeR as the paper's Appendix B; variants "mother-official", "mother-modeltree") and
"ours" (`vitzoo_hf.lineage.ours`). Any Hugging Face ViT checkpoints of one architecture work, not only the zoo's.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from vitzoo_hf.errors import ZooError
from vitzoo_hf.lineage.metrics import adjacency, score, score_adjacency
from vitzoo_hf.lineage.weights import Weights, WeightsSource, backbone, load_all

__all__ = ["METHODS", "adjacency", "backbone", "method", "predict", "score", "score_adjacency"]

METHODS = ("mother", "mother-official", "mother-modeltree", "ours")


def method(name: str, n_clusters: int | None = None, **options):
    """A function list[Weights] -> list[(parent index, child index)]."""
    if name.startswith("mother"):
        from vitzoo_hf.lineage.mother import MotherOptions, mother

        variant = {"mother": "paper", "mother-official": "official", "mother-modeltree": "modeltree"}.get(name)
        if variant is None:
            raise ZooError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
        o = MotherOptions.variant(variant, n_clusters=n_clusters, **options)
        return lambda models: mother(models, o)
    if name == "ours":
        from vitzoo_hf.lineage.ours import OursOptions, ours

        o = OursOptions(n_clusters=n_clusters, **options)
        return lambda models: ours(models, o)
    raise ZooError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")


def predict(models: Mapping[Hashable, WeightsSource | Weights] | Sequence[WeightsSource | Weights],
            method_name: str = "mother", n_clusters: int | None = None, **options) -> list[tuple]:
    """Predicted (parent, child) edges: by key when `models` is a mapping, by position when it is a sequence.
    Values are state dicts, safetensors paths or `backbone()` outputs."""
    keys = list(models) if isinstance(models, Mapping) else list(range(len(models)))
    values = [models[k] for k in keys] if isinstance(models, Mapping) else list(models)
    weights = load_all(values)
    return [(keys[p], keys[c]) for p, c in method(method_name, n_clusters, **options)(weights)]
