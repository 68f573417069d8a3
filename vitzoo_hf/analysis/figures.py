"""The figures a researcher looks at first: accuracy over epochs per generating factor, weight statistics per
pre-training task, and the distance matrix of the final checkpoints as a heat map (PNG, matplotlib Agg)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from vitzoo_hf.analysis.population import Population
from vitzoo_hf.blueprint import format_lr
from vitzoo_hf.plots import pyplot, save_png

FACTORS = (("task", "pre-training task"), ("head", "head"), ("optimizer", "optimizer"), ("lr", "learning rate"))


def _save(fig, path: Path) -> Path:
    return save_png(fig, path, dpi=120)


_plt = pyplot


def accuracy_over_epochs(pop: Population, path: Path) -> Path:
    """Validation accuracy of the fine-tuned models over epochs: mean and min–max band per factor value."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    factors = {m["name"]: m for m in pop.finetuned}
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    for c in pop.checkpoints:
        if c["name"] in factors and c["validation_accuracy"] is not None:
            curves[c["name"]][c["epoch"]] = 100 * c["validation_accuracy"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey=True)
    for ax, (key, title) in zip(axes.flat, FACTORS, strict=True):
        values = sorted({m[key] for m in factors.values()}, key=str)
        for v in values:
            names = [n for n, m in factors.items() if m[key] == v and curves[n]]
            epochs = sorted({e for n in names for e in curves[n]})
            if not epochs:
                continue
            ys = np.array([[curves[n].get(e, np.nan) for e in epochs] for n in names])
            label = format_lr(v) if key == "lr" else str(v)
            line, = ax.plot(epochs, np.nanmean(ys, 0), label=f"{label} (n={len(names)})")
            ax.fill_between(epochs, np.nanmin(ys, 0), np.nanmax(ys, 0), color=line.get_color(), alpha=0.15)
        ax.set_title(f"by {title}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation accuracy (%)")
    fig.suptitle(f"zoo {pop.name}: fine-tuned models, mean and min–max")
    fig.tight_layout()
    return _save(fig, path)


def weight_statistics(pop: Population, path: Path) -> Path:
    """Skewness, kurtosis and L2 norm of the final backbones per pre-training task (fine-tunes as boxes,
    pre-trained models as diamonds)."""
    plt = _plt()
    tasks = sorted({m["task"] for m in pop.models})
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, (key, title) in zip(axes, (("skewness", "skewness"), ("kurtosis", "excess kurtosis"),
                                       ("l2_norm", "L2 norm")), strict=True):
        data = [[m[key] for m in pop.finetuned if m["task"] == t and m[key] is not None] for t in tasks]
        ax.boxplot([d if d else [np.nan] for d in data], tick_labels=tasks)
        for i, t in enumerate(tasks, start=1):
            pre = [m[key] for m in pop.pretrained if m["task"] == t and m[key] is not None]
            ax.scatter([i] * len(pre), pre, marker="D", color="tab:red", zorder=3,
                       label="pre-trained" if i == 1 else None)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"zoo {pop.name}: weight statistics of the final backbones per pre-training task")
    fig.tight_layout()
    return _save(fig, path)


def distance_matrix(pop: Population, path: Path) -> Path:
    """The L2 distance matrix of the final checkpoints (pre-trained first, then fine-tunes by parent)."""
    plt = _plt()
    n = len(pop.distance_names)
    fig, ax = plt.subplots(figsize=(min(5 + 0.12 * n, 22), min(4.4 + 0.12 * n, 21)))
    im = ax.imshow(pop.distances, cmap="viridis")
    fig.colorbar(im, ax=ax, label="L2 distance")
    labels = [_short(name) for name in pop.distance_names]  # every model by name, however many
    size = max(2.5, min(6.0, 400 / max(n, 1)))
    ax.set_xticks(range(n), labels, rotation=90, fontsize=size)
    ax.set_yticks(range(n), labels, fontsize=size)
    how = "estimated from sketches" if pop.distance_method == "sketch" else "exact"
    ax.set_title(f"zoo {pop.name}: L2 distances between\nfinal checkpoints ({how})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _short(name: str) -> str:
    """Drop the shared zoo/architecture prefix: `...-sup-s42-b32-ft-mlp-sgd-lr1e-3-h1` -> `sup-s42-b32 mlp-sgd..`."""
    parts = name.split("-")
    for i, p in enumerate(parts):
        if p in ("sup", "con"):
            return "-".join(parts[i:]).replace("-ft-", " ")
    return name


def all_figures(pop: Population, out: Path) -> list[Path]:
    return [accuracy_over_epochs(pop, out / "accuracy_over_epochs.png"),
            weight_statistics(pop, out / "weight_statistics.png"),
            distance_matrix(pop, out / "distance_matrix.png")]
