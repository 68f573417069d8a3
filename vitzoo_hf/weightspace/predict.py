"""`vitzoo predict SOURCE --target ... --out DIR`: how much of a model's accuracy, generalisation gap and
hyper-parameters can be read off its weights (Unterthiner et al. 2020; Eilertsen et al. 2020)?

Every target is predicted on held-out lineages (cross-validation by lineage: a backbone's whole tree is tested by a
predictor that never saw any of it) by

* `ridge` (ridge regression / ridge classifier, its penalty chosen by an inner grouped CV) and `gbt`
  (histogram gradient-boosted trees) on the per-tensor `stats` (weights read once, streamed) and on the metadata's
  `sketch` column (a fixed random projection of the backbone: no weight download at all);
* `transformer`: a small meta-model on SANE-style `tokens` (`TokenTransformer`), trained for all targets at once.

Each beside two controls: the same method fitted to **shuffled** training targets, and the **trivial** predictor
(training mean / majority class). Numeric targets are scored by R² and Kendall's τ, factors by accuracy, all on
the pooled out-of-fold predictions. **Margin rule:** a target is *predictable* by a method only when its score
(R², or accuracy) exceeds the best of its shuffled control, the trivial baseline (and, for R², zero: a predictor
that knew the held-out mean) by at least `MARGIN` = 0.10.
A factor whose every value lies in one lineage only (a fine-tune's `backbone`; `task` with one backbone per task)
cannot be tested across lineages and is skipped with a note.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitzoo_hf.errors import ZooError
from vitzoo_hf.weightspace.dataset import FACTORS, NUMERIC_TARGETS, load_state_dict, sample_rows, target_kind
from vitzoo_hf.weightspace.representations import head_stats, stats, tokenize
from vitzoo_hf.weightspace.splits import Split, folds, group_of

MARGIN = 0.10
METHODS = ("ridge", "gbt", "transformer")
FEATURES = ("stats", "sketch")
DEFAULT_TARGETS = ("accuracy", "final_accuracy", "ggap", "final_ggap", "epoch", "head", "optimizer", "lr",
                   "head_seed")
SECTION_TITLE = "Learning from weights: property prediction"


# ----------------------------------------------------------------------------------------------------------------
# Metrics (pure)


def r2(y: np.ndarray, p: np.ndarray) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return float("nan") if ss == 0 else 1.0 - float(((y - p) ** 2).sum()) / ss


def kendall_tau(y: np.ndarray, p: np.ndarray) -> float:
    from scipy.stats import kendalltau

    if np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0  # a constant prediction ranks nothing
    return float(kendalltau(y, p).statistic)


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float((np.asarray(y) == np.asarray(p)).mean())


def score(kind: str, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    if kind == "numeric":
        return {"r2": r2(y, p), "tau": kendall_tau(y, p)}
    return {"accuracy": accuracy(y, p)}


def headline(kind: str) -> str:
    return "r2" if kind == "numeric" else "accuracy"


# ----------------------------------------------------------------------------------------------------------------
# Features: one pass over the checkpoints


@dataclass
class Features:
    rows: list[dict[str, Any]]
    stats: np.ndarray | None = None
    sketch: np.ndarray | None = None
    tokens: list[dict[str, torch.Tensor]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def collect_features(zoo, rows: list[dict[str, Any]], need_weights: bool, need_tokens: bool, token_width: int = 64,
                     progress: bool = True) -> Features:
    """Sketches from the metadata; stats (and tokens) from the weights, each checkpoint streamed once."""
    from tqdm.auto import tqdm

    feats = Features(rows)
    sketches = [r.get("sketch") for r in rows]
    if all(s for s in sketches) and len({len(s) for s in sketches}) == 1:
        feats.sketch = np.asarray(sketches, dtype=np.float64)
    else:
        feats.notes.append("sketch: the metadata has no sketch for some checkpoints (a folder zoo, or published "
                           "without analysis: run `vitzoo analyze --update-metadata` on the published zoo)")
    if need_weights:
        out = []
        for r in tqdm(rows, desc="reading checkpoints", disable=not progress, leave=False):
            sd = load_state_dict(zoo, r["name"], r["epoch"], stream=True)
            x, _ = stats(sd)
            hx, _ = head_stats(sd)
            out.append(torch.cat([x, hx]).numpy())
            if need_tokens:
                t = tokenize(sd, token_width)
                feats.tokens.append({"x": t.tokens.half(), "layer": t.layer, "position": t.position})
            del sd
        feats.stats = np.stack(out).astype(np.float64)
    return feats


# ----------------------------------------------------------------------------------------------------------------
# Classical predictors


def _inner_cv(groups: Sequence[str]):
    from sklearn.model_selection import GroupKFold

    return GroupKFold(n_splits=min(3, len(set(groups))))


def _fit_predict(method: str, kind: str, X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
                 inner_groups: Sequence[str], seed: int) -> np.ndarray:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge, RidgeClassifier
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Xtr, ytr = X[train], y[train]
    if len(set(ytr.tolist())) < 2 and kind == "categorical":
        return np.full(len(test), ytr[0])
    keep = np.nanstd(Xtr, axis=0) > 0
    keep &= ~np.all(np.isnan(Xtr), axis=0)
    Xtr, Xte = Xtr[:, keep], X[test][:, keep]
    if method == "ridge":
        est = make_pipeline(SimpleImputer(), StandardScaler(),
                            Ridge() if kind == "numeric" else RidgeClassifier(class_weight=None))
        grid = {f"{est.steps[-1][0]}__alpha": np.logspace(-2, 4, 13).tolist()}
        g = np.asarray(inner_groups)[train]
        if len(set(g.tolist())) >= 2:
            est = GridSearchCV(est, grid, cv=_inner_cv(g), scoring="r2" if kind == "numeric" else "accuracy")
            est.fit(Xtr, ytr, groups=g)
        else:
            est.fit(Xtr, ytr)
        return est.predict(Xte)
    if method == "gbt":
        cls = HistGradientBoostingRegressor if kind == "numeric" else HistGradientBoostingClassifier
        leaf = max(2, min(20, len(train) // 10))  # sklearn's 20 leaves a small zoo's trees without a split
        est = cls(max_iter=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=leaf, early_stopping=False,
                  random_state=seed)
        est.fit(Xtr, ytr)
        return est.predict(Xte)
    raise ValueError(method)


def trivial(kind: str, y_train: np.ndarray, n: int) -> np.ndarray:
    if kind == "numeric":
        return np.full(n, float(np.mean(y_train)))
    values, counts = np.unique(y_train, return_counts=True)
    return np.full(n, values[np.argmax(counts)])


# ----------------------------------------------------------------------------------------------------------------
# The token meta-model


class TokenTransformer(nn.Module):
    """A small meta-model over SANE-style tokens: each token is embedded by an MLP (plus its position within the
    layer), averaged within its layer, and a transformer encoder attends across the layers (plus layer-id
    embeddings and a CLS token) to one output head per target. Averaging within a layer makes it insensitive to
    the order of a layer's rows (one of the symmetries); attention across layers keeps the cost linear in the
    number of tokens, so whole ViTs fit on a CPU."""

    def __init__(self, width: int, num_layers: int, outputs: Sequence[int], d: int = 32, depth: int = 2,
                 heads: int = 4, max_position: int = 512) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(width, d), nn.GELU(), nn.Linear(d, d))
        self.position = nn.Embedding(max_position, d)
        self.layer = nn.Embedding(num_layers, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        block = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(block, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleList([nn.Linear(d, k) for k in outputs])
        self.num_layers, self.max_position = num_layers, max_position

    def forward(self, tokens: torch.Tensor, layer: torch.Tensor, position: torch.Tensor) -> list[torch.Tensor]:
        b, _, _ = tokens.shape
        h = self.embed(tokens) + self.position(position.clamp(max=self.max_position - 1))
        d = h.shape[-1]
        sums = torch.zeros(b, self.num_layers, d).index_add_(1, layer[0], h) if bool((layer == layer[:1]).all()) \
            else torch.zeros(b, self.num_layers, d).scatter_add_(1, layer[..., None].expand_as(h), h)
        counts = torch.zeros(b, self.num_layers).scatter_add_(1, layer, torch.ones_like(layer, dtype=h.dtype))
        seq = sums / counts.clamp(min=1)[..., None] + self.layer.weight[None]
        z = self.encoder(torch.cat([self.cls.expand(b, -1, -1), seq], dim=1))
        return [head(self.norm(z[:, 0])) for head in self.heads]


def fit_transformer(tokens: list[dict[str, torch.Tensor]], targets: list[tuple[str, np.ndarray]], train: np.ndarray,
                    test: np.ndarray, seed: int, epochs: int = 30, sample_tokens: int = 1024, batch_size: int = 16,
                    progress: bool = False) -> list[np.ndarray]:
    """Train one TokenTransformer on `train` for every (kind, y) target at once; predictions for `test` (numeric:
    values; categorical: class index). Each step sees a random subset of `sample_tokens` tokens per model (SANE
    trains on windows too); evaluation uses every token."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    width = tokens[0]["x"].shape[1]
    num_layers = int(max(int(t["layer"].max()) for t in tokens)) + 1
    scale = float(torch.cat([tokens[i]["x"].float().reshape(-1)[::97] for i in train]).std()) or 1.0
    outputs, ys = [], []
    for kind, y in targets:
        if kind == "numeric":
            mu, sd = float(y[train].mean()), float(y[train].std()) or 1.0
            ys.append((kind, torch.tensor((y - mu) / sd, dtype=torch.float32), mu, sd))
            outputs.append(1)
        else:
            ys.append((kind, torch.tensor(y, dtype=torch.int64), 0.0, 1.0))
            outputs.append(int(y.max()) + 1)
    model = TokenTransformer(width, num_layers, outputs)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)

    def batch(idx: Sequence[int], sample: int | None):
        xs, ls, ps = [], [], []
        for i in idx:
            t = tokens[i]
            n = t["x"].shape[0]
            pick = torch.randperm(n, generator=g)[:sample] if sample and sample < n else slice(None)
            xs.append(t["x"][pick].float() / scale)
            ls.append(t["layer"][pick])
            ps.append(t["position"][pick])
        return torch.stack(xs), torch.stack(ls), torch.stack(ps)

    from tqdm.auto import trange

    model.train()
    for _ in trange(epochs, desc="transformer", disable=not progress, leave=False):
        order = train[torch.randperm(len(train), generator=g).numpy()]
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            out = model(*batch(idx, sample_tokens))
            loss = sum(nn.functional.mse_loss(o[:, 0], y[idx]) if kind == "numeric"
                       else nn.functional.cross_entropy(o, y[idx]) for o, (kind, y, _, _) in zip(out, ys, strict=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    preds: list[list[np.ndarray]] = [[] for _ in targets]
    with torch.no_grad():
        for s in range(0, len(test), batch_size):
            out = model(*batch(test[s:s + batch_size], None))
            for j, (o, (kind, _, mu, sd)) in enumerate(zip(out, ys, strict=True)):
                preds[j].append((o[:, 0] * sd + mu).numpy() if kind == "numeric" else o.argmax(1).numpy())
    return [np.concatenate(p) for p in preds]


# ----------------------------------------------------------------------------------------------------------------
# The experiment


def _confined(rows: list[dict[str, Any]], target: str, groups: Sequence[str]) -> bool:
    """Whether every value of the target occurs in one split group only: then a held-out group's value never
    occurs in training, and no predictor can be tested on it (a fine-tune's backbone, across lineages)."""
    where: dict[Any, set] = {}
    for r, g in zip(rows, groups, strict=True):
        if r.get(target) is not None:
            where.setdefault(r[target], set()).add(g)
    return all(len(gs) == 1 for gs in where.values())


def _targets(rows, requested: Sequence[str], groups: Sequence[str], notes: list[str]) -> list[tuple[str, str]]:
    out = []
    for t in requested:
        kind = target_kind(t)
        values = [r.get(t) for r in rows if r.get(t) is not None]
        if len(set(values)) < 2:
            notes.append(f"{t}: one value ({values[0] if values else 'none'}) in the selection; nothing to predict")
            continue
        if kind == "categorical" and _confined(rows, t, groups):
            notes.append(f"{t}: each value occurs in one held-out group only (it is the group's identity), so a "
                         "split by group cannot test it")
            continue
        out.append((t, kind))
    if not out:
        raise ZooError(f"none of the targets {', '.join(requested)} can be predicted on this selection "
                       f"({'; '.join(notes)})")
    return out


def _encode(rows, target: str, kind: str) -> tuple[np.ndarray, np.ndarray, list | None]:
    raw = [r.get(target) for r in rows]
    have = np.array([v is not None and not (isinstance(v, float) and math.isnan(v)) for v in raw])
    if kind == "numeric":
        return np.array([float(v) if h else np.nan for v, h in zip(raw, have, strict=True)]), have, None
    classes = sorted({v for v in raw if v is not None}, key=lambda v: (str(type(v)), v))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] if v is not None else -1 for v in raw]), have, classes


def run_predict(source, out: str | Path, targets: Sequence[str] = ("all",), methods: Sequence[str] = METHODS,
                where: dict[str, Any] | None = None, epochs: str = "all", level: str = "lineage",
                k: int | None = None, seed: int = 0, transformer_epochs: int = 30, token_width: int = 64,
                progress: bool = True, features: Sequence[str] = FEATURES) -> dict[str, Any]:
    """Run every (target × method × features) with both controls; write results.{md,csv}, predictions.csv,
    folds.json and predicted-vs-true PNGs to `out`; return {"results", "markdown", "files", "notes"}."""
    from vitzoo_hf.zoo import Zoo

    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ZooError(f"unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    bad = [f for f in features if f not in FEATURES]
    if bad:
        raise ZooError(f"unknown feature set {bad[0]!r}; choose from {', '.join(FEATURES)}")
    if not features:
        raise ZooError(f"no feature set given; choose from {', '.join(FEATURES)}")
    zoo = source if hasattr(source, "checkpoints") else Zoo.open(source)
    rows = sample_rows(zoo, where if where is not None else {"stage": "finetuning"}, epochs)
    parents = {r["name"]: r["parent"] for r in zoo.models}
    groups = group_of(rows, parents, level)
    run_groups = group_of(rows, parents, "run")
    notes: list[str] = []
    requested = list(DEFAULT_TARGETS if "all" in targets else targets)
    chosen = _targets(rows, requested, groups, notes)
    fold_list = folds(groups, k, seed, level)
    # the weights are read for the stats features and for the transformer's tokens; sketches come from the metadata
    need_weights = ("stats" in features and any(m in methods for m in ("ridge", "gbt"))) or "transformer" in methods
    feats = collect_features(zoo, rows, need_weights, "transformer" in methods, token_width, progress)
    notes += feats.notes
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    encoded = {t: _encode(rows, t, kind) for t, kind in chosen}
    rng = np.random.default_rng(seed)
    shuffled = {}
    for t, _ in chosen:  # one shuffled copy of every target, within each training fold
        y, have, _ = encoded[t]
        shuffled[t] = []
        for f in fold_list:
            train = np.array([i for i in f.indices(groups)[0] if have[i]])
            ys = y.copy()
            ys[train] = y[rng.permutation(train)]
            shuffled[t].append(ys)

    results: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    configs = [(m, fs) for m in ("ridge", "gbt") if m in methods for fs in FEATURES
               if fs in features and getattr(feats, fs) is not None]
    for t, kind in chosen:
        y, have, classes = encoded[t]
        for method, fs in [("trivial", "-"), *configs]:
            for control in ((False,) if method == "trivial" else (False, True)):
                oof = np.full(len(rows), np.nan)
                for j, f in enumerate(fold_list):
                    train, test = (np.array([i for i in part if have[i]]) for part in f.indices(groups))
                    if len(test) == 0:
                        continue
                    ytrain = (shuffled[t][j] if control else y)
                    if method == "trivial":
                        oof[test] = trivial(kind, ytrain[train], len(test))
                    else:
                        X = getattr(feats, fs)
                        yfit = ytrain.copy()
                        oof[test] = _fit_predict(method, kind, X, yfit, train, test, run_groups, seed)
                results.append(_result(t, kind, method, fs, control, y, oof, have))
                if not control:
                    predictions += [{"target": t, "method": method, "features": fs, "name": rows[i]["name"],
                                     "epoch": rows[i]["epoch"], "lineage": groups[i], "true": _decode(y[i], classes),
                                     "predicted": _decode(oof[i], classes)} for i in np.flatnonzero(have)]
    if "transformer" in methods:
        targ = [(kind, encoded[t][0]) for t, kind in chosen]
        haves = np.all([encoded[t][1] for t, _ in chosen], axis=0)
        for control in (False, True):
            oofs = [np.full(len(rows), np.nan) for _ in chosen]
            for j, f in enumerate(fold_list):
                train, test = (np.array([i for i in part if haves[i]]) for part in f.indices(groups))
                ys = [(kind, shuffled[t][j] if control else encoded[t][0]) for t, kind in chosen]
                ys = [(kind, np.nan_to_num(v, nan=float(np.nanmean(v))) if kind == "numeric" else v)
                      for kind, v in ys]
                preds = fit_transformer(feats.tokens, ys, train, test, seed + j, transformer_epochs,
                                        progress=progress)
                for o, p in zip(oofs, preds, strict=True):
                    o[test] = p
            for (t, kind), o in zip(chosen, oofs, strict=True):
                y, have, classes = encoded[t]
                results.append(_result(t, kind, "transformer", "tokens", control, y, o, have & haves))
                if not control:
                    predictions += [{"target": t, "method": "transformer", "features": "tokens",
                                     "name": rows[i]["name"], "epoch": rows[i]["epoch"], "lineage": groups[i],
                                     "true": _decode(y[i], classes), "predicted": _decode(o[i], classes)}
                                    for i in np.flatnonzero(have & haves)]
        del targ
    table = summary_rows(results)
    files = _write(out, table, predictions, fold_list, chosen, notes, zoo, rows, level)
    return {"results": table, "markdown": (out / "results.md").read_text(), "files": files, "notes": notes,
            "folds": fold_list}


def _decode(v, classes):
    if classes is None:
        return float(v)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or int(v) < 0 else classes[int(v)]


def _result(target, kind, method, features, control, y, oof, have) -> dict[str, Any]:
    m = have & ~np.isnan(oof)
    s = score(kind, y[m], oof[m]) if m.any() else {headline(kind): float("nan")}
    return {"target": target, "kind": kind, "method": method, "features": features,
            "control": "shuffled" if control else "", "n": int(m.sum()), **s}


def summary_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target × method × features: score, shuffled control, trivial baseline, margin, verdict."""
    by = {(r["target"], r["method"], r["features"], r["control"]): r for r in results}
    out = []
    for r in results:
        if r["control"] or r["method"] == "trivial":
            continue
        h = headline(r["kind"])
        ctrl = by[(r["target"], r["method"], r["features"], "shuffled")]
        base = by[(r["target"], "trivial", "-", "")]
        best_control = max(ctrl[h], base[h], 0.0 if h == "r2" else -math.inf)  # R² must also beat 0
        margin = r[h] - best_control
        row = {"target": r["target"], "method": r["method"], "features": r["features"], "n": r["n"], "metric": h,
               "score": r[h], "shuffled": ctrl[h], "trivial": base[h], "margin": margin,
               "predictable": bool(margin >= MARGIN)}
        if r["kind"] == "numeric":
            row.update(tau=r["tau"], tau_shuffled=ctrl["tau"])
        out.append(row)
    order = {t: i for i, t in enumerate(dict.fromkeys(r["target"] for r in results))}
    return sorted(out, key=lambda r: (order[r["target"]], METHODS.index(r["method"]), r["features"]))


def best_per_target(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The strongest method of every target (highest score), with its controls: the headline."""
    best: dict[str, dict[str, Any]] = {}
    for r in table:
        if r["target"] not in best or _key(r) > _key(best[r["target"]]):
            best[r["target"]] = r
    return list(best.values())


def _key(r: dict[str, Any]) -> float:
    return -math.inf if math.isnan(r["score"]) else r["score"]


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "**yes**" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return "" if v is None else str(v)


COLUMNS = ("target", "method", "features", "n", "metric", "score", "shuffled", "trivial", "margin", "tau",
           "tau_shuffled", "predictable")


def markdown(table: list[dict[str, Any]], notes: Sequence[str], zoo_name: str, n_rows: int, n_folds: int,
             level: str) -> str:
    lines = [f"# Property prediction from weights: zoo {zoo_name}", "",
             f"{n_rows} checkpoints, cross-validated by {level} ({n_folds} folds: each {level} is predicted by a model "
             f"that never saw it). Score: R² for numeric targets (τ: Kendall's tau), accuracy for factors; "
             f"`shuffled`: the same method fitted to shuffled training targets; `trivial`: training mean / majority. "
             f"**Predictable** = score beats max(shuffled, trivial; and 0 for R²) by at least {MARGIN:.2f}.", "",
             "## Best method per target", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in best_per_target(table)]
    lines += ["", "## Every target × method", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in table]
    verdict = sorted({r["target"] for r in table if r["predictable"]})
    lines += ["", f"Predictable (margin ≥ {MARGIN:.2f}): {', '.join(verdict) if verdict else 'none'}."]
    if notes:
        lines += ["", "Not tested:", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _write(out: Path, table, predictions, fold_list: list[Split], chosen, notes, zoo, rows, level) -> list[Path]:
    import json

    from vitzoo_hf.checkpoints import write_json_atomic

    files = []
    for name, text in (("results.md", markdown(table, notes, zoo.name, len(rows), len(fold_list), level)),
                       ("results.csv", _csv(table, COLUMNS)),
                       ("predictions.csv", _csv(predictions, ("target", "method", "features", "name", "epoch",
                                                               "lineage", "true", "predicted"))),
                       ("folds.json", json.dumps({"source": zoo.source, "revision": getattr(zoo, "revision", None),
                                                  "folds": [f.to_dict() for f in fold_list]}, indent=2) + "\n")):
        write_json_atomic(out / name, text)
        files.append(out / name)
    files += figures(out, table, predictions, chosen)
    return files


def figures(out: Path, table, predictions, chosen) -> list[Path]:
    """predicted_vs_true.png (numeric targets: one panel per target, the best method) and factors.png (accuracy
    of every method beside its controls)."""
    from vitzoo_hf.plots import pyplot, save_png
    from vitzoo_hf.weightspace.cka import short_labels

    plt = pyplot()
    files = []
    numeric = [t for t, kind in chosen if kind == "numeric"]
    if numeric:
        fig, axes = plt.subplots(1, len(numeric), figsize=(3.2 * len(numeric), 3.2), squeeze=False)
        for ax, t in zip(axes[0], numeric, strict=True):
            rows = [r for r in table if r["target"] == t]
            best = max(rows, key=lambda r: -1e9 if math.isnan(r["score"]) else r["score"])
            pts = [(p["true"], p["predicted"]) for p in predictions
                   if p["target"] == t and p["method"] == best["method"] and p["features"] == best["features"]]
            lineages = sorted({p["lineage"] for p in predictions if p["target"] == t})
            names = dict(zip(lineages, short_labels(lineages), strict=True)) if len(lineages) > 1 else \
                {lin: lin for lin in lineages}
            for li, lin in enumerate(lineages):
                sel = [(p["true"], p["predicted"]) for p in predictions if p["target"] == t and p["lineage"] == lin
                       and p["method"] == best["method"] and p["features"] == best["features"]]
                if sel:
                    a = np.array(sel)
                    ax.scatter(a[:, 0], a[:, 1], s=8, alpha=0.6, label=names[lin], color=f"C{li % 10}")
            if pts:
                a = np.array(pts)
                lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
                ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(f"{t}: {best['method']}/{best['features']}\nR²={best['score']:.2f} "
                         f"(shuffled {best['shuffled']:.2f})", fontsize=8)
            ax.set_xlabel("true", fontsize=8)
            ax.set_ylabel("predicted (held-out lineage)", fontsize=8)
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        files.append(save_png(fig, out / "predicted_vs_true.png"))
    factors = [t for t, kind in chosen if kind == "categorical"]
    if factors:
        fig, axes = plt.subplots(1, len(factors), figsize=(3.2 * len(factors), 3.2), squeeze=False)
        for ax, t in zip(axes[0], factors, strict=True):
            rows = [r for r in table if r["target"] == t]
            labels = [f"{r['method']}\n{r['features']}" for r in rows]
            x = np.arange(len(rows))
            ax.bar(x - 0.2, [r["score"] for r in rows], 0.4, label="weights")
            ax.bar(x + 0.2, [r["shuffled"] for r in rows], 0.4, label="shuffled targets", color="0.7")
            if rows:
                ax.axhline(rows[0]["trivial"], color="k", ls="--", lw=0.8, label="majority")
            ax.set_xticks(x, labels, fontsize=6)
            ax.set_ylim(0, 1)
            ax.set_title(f"{t}: held-out accuracy", fontsize=8)
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        files.append(save_png(fig, out / "factors.png"))
    return files


# ----------------------------------------------------------------------------------------------------------------
# The demo report's section


SECTION_INTRO = ("Can a model's accuracy, generalisation gap and hyper-parameters be read off its weights? Ridge and "
                 "gradient-boosted trees on per-tensor statistics and on the metadata's sketches, and a small "
                 "transformer on weight tokens, each tested on lineages it never saw, beside a shuffled-target "
                 f"control and the trivial predictor (`vitzoo predict`; margin rule: {MARGIN:.2f}).")


def report_section(meta_repo: str, out: str | Path, progress: bool = True, transformer_epochs: int = 30,
                   methods: Sequence[str] = METHODS, epochs: str | Sequence[int] = "all",
                   features: Sequence[str] = FEATURES) -> dict:
    """For the demo report: run `vitzoo predict` on the published zoo into `out` (results.md + PNGs) and return
    {"predictable": [...], "files": n}. Wire it like the other stages: a `weightspace` stage writing to
    report_dir / "weightspace", and `SECTIONS["weightspace"] = (SECTION_TITLE, SECTION_INTRO, ("results.md",))`."""
    result = run_predict(meta_repo, out, methods=methods, epochs=epochs, transformer_epochs=transformer_epochs,
                         progress=progress, features=features)
    return {"predictable": sorted({r["target"] for r in result["results"] if r["predictable"]}),
            "files": len(result["files"])}


def cli(args) -> None:
    where = {}
    for item in args.where or []:
        col, _, value = item.partition("=")
        if not _:
            raise ZooError(f"--where {item!r} is not COLUMN=VALUE (e.g. --where optimizer=sgd)")
        where[col] = _parse(value)
    result = run_predict(args.source, args.out, targets=args.target, methods=args.methods,
                         where=where or None, epochs=args.epochs, level=args.level, k=args.folds, seed=args.seed,
                         transformer_epochs=args.transformer_epochs, progress=not args.no_progress)
    print(result["markdown"], end="")
    print(f"wrote {len(result['files'])} files to {args.out}")


def _parse(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return None if value in ("none", "null") else value


assert set(DEFAULT_TARGETS) <= set(NUMERIC_TARGETS) | set(FACTORS)
