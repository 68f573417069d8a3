"""Representation similarity between checkpoints: linear CKA and debiased CKA (Kornblith et al. 2019; the unbiased
HSIC of Song et al. 2012), per block and for the final representation, on one fixed set of validation images.

    CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F)     X: n × p1, Y: n × p2, columns centred

`vitzoo analyze SOURCE --out DIR --cka` streams the checkpoints one at a time (weights into memory, one backbone
model object reused), keeps only each one's activations (n × hidden per layer; never the weights), and writes the
matrices (CSV per layer), `cka.json` (which images, which checkpoints) and heat maps. Activations are the CLS token
after each block (`tokens="cls"`) or the mean over all tokens (`"mean"`; always for `embeddings`, where the CLS
token is the same for every image); `final` is the CLS token after the final
LayerNorm, what the classification head reads.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vitzoo_hf.errors import ZooError

# ----------------------------------------------------------------------------------------------------------------
# The math (pure: tensors in, numbers out; float64 throughout)


def _centre(x: torch.Tensor) -> torch.Tensor:
    x = x.double().reshape(x.shape[0], -1)
    return x - x.mean(0, keepdim=True)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA from features (n × p1, n × p2): cost O(n·p1·p2), no n × n Gram matrix."""
    x, y = _centre(x), _centre(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same inputs: {x.shape[0]} vs {y.shape[0]} rows")
    xy = torch.linalg.matrix_norm(y.T @ x) ** 2
    xx, yy = torch.linalg.matrix_norm(x.T @ x), torch.linalg.matrix_norm(y.T @ y)
    return float(xy / (xx * yy)) if xx > 0 and yy > 0 else float("nan")


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741 (the paper's name)
    """The unbiased HSIC estimator (Song et al. 2012) of two n × n Gram matrices, n > 3."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"debiased CKA needs at least 4 examples, got {n}")
    k = k.double().clone()
    l = l.double().clone()  # noqa: E741
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    kl = k @ l
    return (kl.trace() + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 * kl.sum() / (n - 2)) / (n * (n - 3))


def debiased_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA with HSIC replaced by its unbiased estimator (less biased when n is small relative to the width)."""
    x, y = _centre(x), _centre(y)
    k, l = x @ x.T, y @ y.T  # noqa: E741
    kk, ll = hsic_unbiased(k, k), hsic_unbiased(l, l)
    return float(hsic_unbiased(k, l) / (kk * ll).sqrt()) if kk > 0 and ll > 0 else float("nan")


def cka_gram(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA by the HSIC formula on centred Gram matrices, tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)): the
    definition, for checking the fast form."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k = x.double().reshape(n, -1) @ x.double().reshape(n, -1).T
    l = y.double().reshape(n, -1) @ y.double().reshape(n, -1).T  # noqa: E741
    kc, lc = h @ k @ h, h @ l @ h
    return float((kc * lc).sum() / ((kc * kc).sum() * (lc * lc).sum()).sqrt())


def cka_matrix(features: Sequence[Mapping[str, torch.Tensor]], layer: str, debiased: bool = False) -> torch.Tensor:
    """The symmetric matrix of CKA between every pair of checkpoints at one layer."""
    f = debiased_cka if debiased else linear_cka
    n = len(features)
    m = torch.eye(n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            m[i, j] = m[j, i] = f(features[i][layer], features[j][layer])
    return m


# ----------------------------------------------------------------------------------------------------------------
# Activations


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "vit", model)


@torch.no_grad()
def activations(model: torch.nn.Module, images: torch.Tensor, tokens: str = "cls",
                batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Per layer (`embeddings`, `block.0`, ..., `final`): the n × hidden representation of `images`."""
    if tokens not in ("cls", "mean"):
        raise ZooError(f"tokens must be cls or mean, got {tokens!r}")
    vit = backbone_of(model).eval()
    got: dict[str, list[torch.Tensor]] = {}

    def keep(name):
        def hook(_module, _inputs, output):
            h = output[0] if isinstance(output, tuple) else output
            cls = tokens == "cls" and name != "embeddings"  # the CLS embedding is one vector for every image
            got.setdefault(name, []).append((h[:, 0] if cls else h.mean(1)).double())
        return hook

    handles = [vit.embeddings.register_forward_hook(keep("embeddings"))]
    handles += [layer.register_forward_hook(keep(f"block.{i}")) for i, layer in enumerate(vit.layers)]
    try:
        for s in range(0, images.shape[0], batch_size):
            out = vit(pixel_values=images[s:s + batch_size]).last_hidden_state
            got.setdefault("final", []).append(out[:, 0].double())
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v) for k, v in got.items()}


# ----------------------------------------------------------------------------------------------------------------
# A zoo


def fixed_images(zoo, name: str, n: int = 256, seed: int = 0) -> tuple[torch.Tensor, list[int], str]:
    """`n` validation images (seeded choice) with `name`'s evaluation transform: (images, indices, set key)."""
    from vitzoo_hf.averaging.methods import evaluation_dataset

    record = zoo.record(name)
    ds = evaluation_dataset(record, progress=False)
    g = torch.Generator().manual_seed(seed)
    idx = sorted(torch.randperm(len(ds), generator=g)[:n].tolist())
    return torch.stack([ds[i][0] for i in idx]), idx, zoo.validation_set(name)


def _template(zoo, name: str):
    from vitzoo_hf.modeling import ZooViTConfig, ZooViTModel

    a = dict(zoo.record(name)["architecture"])
    config = ZooViTConfig(**a, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ZooViTModel(config).eval(), tuple(sorted(a.items()))


def checkpoint_features(zoo, checkpoints: Sequence[tuple[str, int]], images: torch.Tensor, tokens: str = "cls",
                        augment=None, progress: bool = True) -> list[dict[str, torch.Tensor]]:
    """Activations of every checkpoint on `images`, one checkpoint in memory at a time (backbone weights only)."""
    from tqdm.auto import tqdm

    from vitzoo_hf.weightspace.dataset import load_state_dict, num_heads
    from vitzoo_hf.weightspace.representations import canonical, is_head

    models: dict[tuple, torch.nn.Module] = {}
    out = []
    for name, epoch in tqdm(checkpoints, desc="CKA activations", disable=not progress, leave=False):
        model, arch = _template(zoo, name)
        model = models.setdefault(arch, model)
        sd = load_state_dict(zoo, name, epoch, stream=True)
        if augment is not None:
            sd = augment(sd, num_heads(zoo, name))
        backbone = {k: v for k, v in canonical(sd).items() if not is_head(k)}
        model.load_state_dict(backbone, strict=True)
        out.append(activations(model, images, tokens))
        del sd, backbone
    return out


def _matrix_csv(labels: Sequence[str], m: torch.Tensor) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["checkpoint", *labels])
    for lab, row in zip(labels, m.tolist(), strict=True):
        w.writerow([lab, *(f"{v:.6f}" for v in row)])
    return buf.getvalue()


def heatmap(m: torch.Tensor, labels: Sequence[str], title: str, path: Path) -> Path:
    from vitzoo_hf.plots import pyplot, save_png

    plt = pyplot()
    n = len(labels)
    size = min(16.0, 4.0 + 0.18 * n)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(m.numpy(), vmin=0, vmax=1, cmap="viridis")
    if n <= 80:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=max(3, 8 - n // 12))
        ax.set_yticks(range(n), labels, fontsize=max(3, 8 - n // 12))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_png(fig, path, tight=True)


def short_labels(names: Sequence[str]) -> list[str]:
    """Names without the dash-separated prefix they all share (the zoo and architecture)."""
    parts = [n.split("-") for n in names]
    k = 0
    while all(len(p) > k + 1 and p[k] == parts[0][k] for p in parts):
        k += 1
    return ["-".join(p[k:]) for p in parts]


def run_cka(source, out: str | Path, checkpoints: str = "final", where: Mapping[str, Any] | None = None,
            images: int = 256, seed: int = 0, tokens: str = "cls", progress: bool = True) -> list[Path]:
    """Write CKA and debiased CKA matrices (per layer, CSV) and heat maps (final representation, and the mean over
    layers) for the selected checkpoints into `out`, plus `cka.json` recording images and checkpoints."""
    from vitzoo_hf.checkpoints import write_json_atomic
    from vitzoo_hf.weightspace.dataset import sample_rows
    from vitzoo_hf.zoo import Zoo

    zoo = source if hasattr(source, "checkpoints") else Zoo.open(source)
    rows = sample_rows(zoo, where, "final" if checkpoints == "final" else "all")
    rows.sort(key=lambda r: (r["backbone"], r["parent"] is not None, r["name"], r["epoch"]))  # trees together
    if len(rows) < 2:
        raise ZooError("CKA needs at least two checkpoints; select more")
    classifier = next((r["name"] for r in rows if r["parent"]), rows[0]["name"])
    x, idx, key = fixed_images(zoo, classifier, images, seed)
    if len(idx) < 4:
        raise ZooError(f"the validation set {key} has {len(idx)} images; debiased CKA needs at least 4")
    feats = checkpoint_features(zoo, [(r["name"], r["epoch"]) for r in rows], x, tokens, progress=progress)
    labels = [f"{n}@{r['epoch']}" for n, r in zip(short_labels([r["name"] for r in rows]), rows, strict=True)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    layers = list(feats[0])
    means: dict[str, torch.Tensor] = {}
    for debiased, tag in ((False, "cka"), (True, "cka_debiased")):
        mats = {layer: cka_matrix(feats, layer, debiased) for layer in layers}
        for layer, m in mats.items():
            write_json_atomic(out / f"{tag}_{layer}.csv", _matrix_csv(labels, m))
            files.append(out / f"{tag}_{layer}.csv")
        means[tag] = torch.stack([mats[layer] for layer in layers if layer != "final"]).mean(0)
        files.append(heatmap(mats["final"], labels, f"{'debiased ' if debiased else ''}linear CKA, final "
                             f"representation ({len(idx)} images of {key})", out / f"{tag}_final.png"))
    files.append(heatmap(means["cka"], labels, "linear CKA, mean over blocks", out / "cka_mean_blocks.png"))
    meta = {"source": zoo.source, "revision": getattr(zoo, "revision", None), "validation_set": key,
            "image_indices": idx, "seed": seed, "tokens": tokens, "layers": layers,
            "checkpoints": [{"name": r["name"], "epoch": r["epoch"], "label": lab} for r, lab in zip(rows, labels,
                                                                                                   strict=True)]}
    write_json_atomic(out / "cka.json", json.dumps(meta, indent=2) + "\n")
    files.append(out / "cka.json")
    return files
