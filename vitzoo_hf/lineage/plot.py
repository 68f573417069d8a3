"""One recovered model tree beside the truth (PNG): nodes laid out by the true tree, predicted edges green where
they are true, red where not."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path


def tree_layout(nodes: Sequence[Hashable], edges: Sequence[tuple[Hashable, Hashable]]) -> dict:
    """Tidy layered layout of a forest: depth down the y axis, leaves spread along x in depth-first order."""
    children: dict = {n: [] for n in nodes}
    has_parent = set()
    for p, c in edges:
        children[p].append(c)
        has_parent.add(c)
    pos: dict = {}
    next_x = [0.0]

    def place(node, depth: int) -> float:
        kids = children[node]
        if not kids:
            x = next_x[0]
            next_x[0] += 1.0
        else:
            xs = [place(k, depth + 1) for k in kids]
            x = sum(xs) / len(xs)
        pos[node] = (x, -depth)
        return x

    for root in [n for n in nodes if n not in has_parent]:
        place(root, 0)
        next_x[0] += 0.5
    return pos


def draw_trees(nodes: Sequence[Hashable], truth: Sequence, predictions: Mapping[str, Sequence], path: str | Path,
               labels: Mapping | None = None, title: str = "") -> Path:
    import networkx as nx

    from vitzoo_hf.plots import pyplot, save_png

    plt = pyplot()

    pos = tree_layout(nodes, truth)
    true_set = set(truth)
    panels = [("truth", list(truth)), *predictions.items()]
    width = max(6.0, 0.35 * len(nodes))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.2 * len(panels)), squeeze=False)
    for ax, (name, edges) in zip(axes[:, 0], panels, strict=True):
        g = nx.DiGraph()
        g.add_nodes_from(nodes)
        g.add_edges_from(edges)
        colors = ["black" if name == "truth" else ("tab:green" if e in true_set else "tab:red") for e in g.edges()]
        nx.draw_networkx_nodes(g, pos, ax=ax, node_size=60, node_color="tab:blue")
        nx.draw_networkx_edges(g, pos, ax=ax, edge_color=colors, arrows=True, arrowsize=8, width=1.0,
                               connectionstyle="arc3,rad=0.15")
        if labels:
            nx.draw_networkx_labels(g, {k: (x, y - 0.28) for k, (x, y) in pos.items()}, labels=dict(labels),
                                    ax=ax, font_size=5)
        if name == "truth":
            ax.set_title(f"{title}: truth ({len(truth)} edges)", fontsize=9)
        else:
            hits = sum(e in true_set for e in edges)
            ax.set_title(f"{name}: {hits}/{len(truth)} true edges recovered (green), wrong in red", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return save_png(fig, path, dpi=130)
