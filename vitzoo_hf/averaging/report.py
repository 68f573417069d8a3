"""`vitzoo average`: run one averaging study on a zoo and write its tables (Markdown, CSV), figures (PNG) and,
optionally, the best averaged model as a normal checkpoint folder with its provenance.

    OUT/epochs.{csv,md} epochs_longitudinal.{csv,md} fig2a_epochs.png fig3_longitudinal.png     --method epochs
        epochs_w{K}.{csv,md} per window K, fig_gain_vs_ggap.png
    OUT/soups.{csv,md} fig2b_soups.png                                                        --method soup
    OUT/greedy_soups.{csv,md} fig_greedy_soups.png                                            --method greedy-soup
    OUT/rebasin_pairs.{csv,md} rebasin_interpolation.{csv,md} rebasin_many.{csv,md}
        fig_rebasin_interpolation.png                                                         --method rebasin
    OUT/summary.md                                                                            always
    OUT/NAME/  (--save-model NAME): save_pretrained folder + averaging.json + README.md model card
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from vitzoo_hf.errors import ZooError
from vitzoo_hf.plots import pyplot, save_png

METHODS = ("epochs", "soup", "greedy-soup", "rebasin")
AVERAGING_FILE = "averaging.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")

# ----------------------------------------------------------------------------------------------------------------
# Tables


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _atomic_write(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)).replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict[str, Any]], out: Path, stem: str) -> list[Path]:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _atomic_write(out / f"{stem}.csv", buf.getvalue())
    _atomic_write(out / f"{stem}.md", markdown_table(rows))
    return [out / f"{stem}.csv", out / f"{stem}.md"]


# ----------------------------------------------------------------------------------------------------------------
# Figures


_pyplot = pyplot


def _save(fig, path: Path) -> Path:
    return save_png(fig, path, dpi=130, tight=True)


def _diagonal(ax, xs: Sequence[float], ys: Sequence[float]) -> None:
    lo, hi = min([*xs, *ys]), max([*xs, *ys])
    pad = (hi - lo) * 0.05 or 0.01
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)


def fig_epochs(rows: Sequence[dict], path: Path, window: int) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    xs, ys = [r["best_single_accuracy"] for r in rows], [r["averaged_accuracy"] for r in rows]
    gaps = [r["generalization_gap"] if r["generalization_gap"] is not None else 0.0 for r in rows]
    sc = ax.scatter(xs, ys, c=gaps, cmap="viridis", s=22)
    fig.colorbar(sc, ax=ax, label="generalization gap (train − val acc), final epoch")
    _diagonal(ax, xs, ys)
    ax.set_xlabel(f"best of the last {window} checkpoints: validation accuracy")
    ax.set_ylabel(f"average of the last {window} checkpoints: validation accuracy")
    ax.set_title("Epoch averaging (Fig. 2a)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def fig_longitudinal(rows: Sequence[dict], path: Path, window: int) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = sorted({r["epoch"] for r in rows})
    for key, label, color in (("single_accuracy", "single checkpoint", "tab:gray"),
                              ("averaged_accuracy", f"average of previous {window}", "tab:blue")):
        per = [[r[key] for r in rows if r["epoch"] == e] for e in epochs]
        ax.plot(epochs, [mean(p) for p in per], "o-", color=color, label=f"{label} (mean)")
        ax.fill_between(epochs, [min(p) for p in per], [max(p) for p in per], color=color, alpha=0.15,
                        label=f"{label} (min–max)")
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_xticks(epochs)
    ax.set_title(f"Longitudinal averaging over {len({r['model'] for r in rows})} models (Fig. 3)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig_soups(rows: Sequence[dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    markers = {"head_seed": "o", "lr": "s", "optimizer": "^", "head": "D"}
    for factor in dict.fromkeys(r["factor"] for r in rows):
        sel = [r for r in rows if r["factor"] == factor]
        ax.scatter([r["best_accuracy"] for r in sel], [r["soup_accuracy"] for r in sel], s=24,
                   marker=markers.get(factor, "o"), label=f"over {factor} ({len(sel)})")
    _diagonal(ax, [r["best_accuracy"] for r in rows], [r["soup_accuracy"] for r in rows])
    ax.set_xlabel("best member: validation accuracy")
    ax.set_ylabel("uniform soup: validation accuracy")
    ax.set_title("Model soups varying one factor (Fig. 2b)")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def fig_greedy(rows: Sequence[dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows)), 4))
    keys = (("best_by_select_accuracy", "best member (picked on select)"),
            ("best_by_report_oracle_accuracy", "best member (oracle)"),
            ("uniform_accuracy", "uniform soup"), ("greedy_accuracy", "greedy soup"))
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        ax.bar([j + i * width for j in range(len(rows))], [r[key] for r in rows], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels([f"{_short(r['parent'])}\n{r['head']}" for r in rows], fontsize=7)
    ax.set_ylabel("accuracy on the report half of validation")
    ax.set_title("Greedy soups per backbone and head type (chosen on the select half)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig_rebasin(curve: Sequence[dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    alphas = sorted({r["alpha"] for r in curve})
    pairs = sorted({(r["model_a"], r["model_b"]) for r in curve})
    for kind, color in (("naive", "tab:red"), ("aligned", "tab:blue")):
        for a, b in pairs:
            ys = [next(r["accuracy"] for r in curve if (r["model_a"], r["model_b"], r["kind"], r["alpha"]) ==
                       (a, b, kind, al)) for al in alphas]
            ax.plot(alphas, ys, color=color, alpha=0.15, lw=0.8)
        means = [mean(r["accuracy"] for r in curve if r["kind"] == kind and r["alpha"] == al) for al in alphas]
        ax.plot(alphas, means, "o-", color=color, lw=2, label=f"{kind} interpolation (mean of {len(pairs)})")
    ax.set_xlabel("α  (model = (1 − α)·A + α·B)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Interpolating fine-tunes of different backbones")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _short(name: str | None) -> str:
    return "-" if name is None else (name if len(name) <= 24 else "…" + name[-23:])


# ----------------------------------------------------------------------------------------------------------------
# Summaries


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def summarize_epochs(final: Sequence[dict], longitudinal: Sequence[dict], window: int) -> str:
    gains = [r["gain"] for r in final]
    wins = sum(g > 0 for g in gains)
    ties = sum(g == 0 for g in gains)
    diffs = [abs(r["single_accuracy"] - r["recorded_accuracy"]) for r in longitudinal
             if r["recorded_accuracy"] is not None]
    best = _pct(mean(r["best_single_accuracy"] for r in final))
    lines = [f"## Epoch averaging (last {window} epochs), {len(final)} models",
             f"- mean validation accuracy: best single of the last {window} {best}"
             f" %, final epoch {_pct(mean(r['final_accuracy'] for r in final))} %, average "
             f"{_pct(mean(r['averaged_accuracy'] for r in final))} %",
             f"- gain of the average over the best single: mean {_pct(mean(gains))} pp, median "
             f"{_pct(sorted(gains)[len(gains) // 2])} pp; better in {wins}, equal in {ties}, worse in "
             f"{len(gains) - wins - ties} of {len(gains)}",
             "- longitudinal (mean over models, single → averaged):"]
    for e in sorted({r["epoch"] for r in longitudinal}):
        sel = [r for r in longitudinal if r["epoch"] == e]
        lines.append(f"  - epoch {e}: {_pct(mean(r['single_accuracy'] for r in sel))} % → "
                     f"{_pct(mean(r['averaged_accuracy'] for r in sel))} % ({len(sel)} models)")
    if diffs:
        lines.append(f"- re-evaluated single checkpoints vs accuracies recorded in training: max |difference| "
                     f"{max(diffs):.2e} over {len(diffs)} checkpoints")
    return "\n".join(lines) + "\n"


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return float("nan")
    return float(spearmanr(xs, ys).statistic)


def summarize_windows(by_window: dict[int, Sequence[dict]]) -> str:
    """Fig. 2a at several windows, and how the gain relates to the generalisation gap (Spearman ρ)."""
    lines = ["## Epoch averaging at several windows (Fig. 2a)",
             "| window | models | average > best of window | mean gain pp | median gain pp | ρ(gain, GGap) |",
             "|---|---|---|---|---|---|"]
    for w, rows in sorted(by_window.items()):
        gains = [r["gain"] for r in rows]
        pairs = [(r["gain"], r["generalization_gap"]) for r in rows if r["generalization_gap"] is not None]
        rho = _spearman([g for g, _ in pairs], [x for _, x in pairs])
        lines.append(f"| {w} | {len(rows)} | {sum(g > 0 for g in gains)}/{len(gains)} | {_pct(mean(gains))} | "
                     f"{_pct(sorted(gains)[len(gains) // 2])} | {rho:.2f} |")
    return "\n".join(lines) + "\n"


def fig_gain_vs_ggap(by_window: dict[int, Sequence[dict]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for w, rows in sorted(by_window.items()):
        sel = [r for r in rows if r["generalization_gap"] is not None]
        ax.scatter([100 * r["generalization_gap"] for r in sel], [100 * r["gain"] for r in sel], s=16,
                   label=f"last {w}")
    ax.axhline(0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("generalisation gap at the final epoch (points)")
    ax.set_ylabel("average − best of the window (points)")
    ax.set_title("Epoch-averaging gain vs generalisation gap")
    ax.legend(fontsize=8)
    return _save(fig, path)


def summarize_soups(rows: Sequence[dict]) -> str:
    lines = [f"## Model soups (one factor varied), {len(rows)} groups",
             "| factor | groups | mean best member % | mean soup % | mean gain pp | soup > best | backbone soup + "
             "best head % |", "|---|---|---|---|---|---|---|"]
    for factor in dict.fromkeys(r["factor"] for r in rows):
        sel = [r for r in rows if r["factor"] == factor]
        lines.append(f"| {factor} | {len(sel)} | {_pct(mean(r['best_accuracy'] for r in sel))} | "
                     f"{_pct(mean(r['soup_accuracy'] for r in sel))} | {_pct(mean(r['gain'] for r in sel))} | "
                     f"{sum(r['gain'] > 0 for r in sel)}/{len(sel)} | "
                     f"{_pct(mean(r['backbone_soup_best_head_accuracy'] for r in sel))} |")
    return "\n".join(lines) + "\n"


def summarize_greedy(rows: Sequence[dict]) -> str:
    wins = sum(r["greedy_accuracy"] > r["best_by_select_accuracy"] for r in rows)
    lines = [f"## Greedy soups, {len(rows)} groups (backbone × head type)",
             "Ingredients and the best member are chosen on one half of the validation split (select, stratified, "
             "seed 0); every accuracy below is on the other half (report), which no choice has seen. The oracle "
             "column picks the best member on report itself (an upper bound, not a baseline).", "",
             f"Greedy soup beats the best member (picked on select) in {wins} of {len(rows)} groups; mean gain "
             f"{_pct(mean(r['gain'] for r in rows))} pp.", "",
             "| backbone | head | members | ingredients | best member (select pick) % | best (oracle) % | "
             "uniform % | greedy % |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['parent']} | {r['head']} | {r['members']} | {r['ingredients']} | "
                     f"{_pct(r['best_by_select_accuracy'])} | {_pct(r['best_by_report_oracle_accuracy'])} | "
                     f"{_pct(r['uniform_accuracy'])} | {_pct(r['greedy_accuracy'])} |")
    return "\n".join(lines) + "\n"


def summarize_rebasin(pairs: Sequence[dict], many: Sequence[dict]) -> str:
    wins = sum(r["aligned_average_accuracy"] > r["naive_average_accuracy"] for r in pairs)
    lines = [f"## Git Re-Basin, {len(pairs)} pairs (same fine-tuning factors, different backbones)",
             f"- mean validation accuracy: endpoints A {_pct(mean(r['accuracy_a'] for r in pairs))} %, B "
             f"{_pct(mean(r['accuracy_b'] for r in pairs))} %; naive average "
             f"{_pct(mean(r['naive_average_accuracy'] for r in pairs))} %; aligned average "
             f"{_pct(mean(r['aligned_average_accuracy'] for r in pairs))} %",
             f"- aligned beats naive in {wins}"
             f"/{len(pairs)} pairs; aligned average ≥ worse endpoint in "
             f"{sum(r['aligned_average_accuracy'] >= min(r['accuracy_a'], r['accuracy_b']) for r in pairs)}"
             f"/{len(pairs)}",
             f"- weight distance ‖A − B‖: naive {mean(r['l2_naive'] for r in pairs):.3f}, after alignment "
             f"{mean(r['l2_aligned'] for r in pairs):.3f} (mean)"]
    types = sorted({r.get("pair_type") for r in pairs if r.get("pair_type")})
    if types:
        lines += ["", "| pair type | pairs | endpoints % | naive average % | aligned average % |",
                  "|---|---|---|---|---|"]
        for t in types:
            sel = [r for r in pairs if r.get("pair_type") == t]
            ends = mean((r["accuracy_a"] + r["accuracy_b"]) / 2 for r in sel)
            lines.append(f"| {t} | {len(sel)} | {_pct(ends)} | {_pct(mean(r['naive_average_accuracy'] for r in sel))}"
                         f" | {_pct(mean(r['aligned_average_accuracy'] for r in sel))} |")
        lines.append("")
    if many:
        lines.append(f"- all backbones at once ({len(many)} groups of {many[0]['models']}): best member "
                     f"{_pct(mean(r['best_member_accuracy'] for r in many))} %, naive average "
                     f"{_pct(mean(r['naive_average_accuracy'] for r in many))} %, aligned to the first "
                     f"{_pct(mean(r['reference_aligned_average_accuracy'] for r in many))} %, MergeMany average "
                     f"{_pct(mean(r['mergemany_average_accuracy'] for r in many))} %")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Saving an averaged model


def check_model_name(name: str, out: Path) -> Path:
    if not _NAME_RE.match(name):
        raise ZooError(f"--save-model {name!r} is not a valid model name; use letters, digits, '-', '_' and '.' "
                       "(at most 96 characters, a valid Hub repo name)")
    target = out / name
    if target.exists():
        raise ZooError(f"{target} already exists; choose another --save-model name or remove that folder")
    return target


def save_averaged(ev, averaged, target: Path) -> Path:
    """A `save_pretrained` folder (safetensors) whose config, `averaging.json` and model card name the models it
    came from. Written to a temporary folder and renamed into place."""
    from huggingface_hub import ModelCard, ModelCardData

    first = averaged.ingredients[0]["name"]
    model = ev.template(first, averaged.state_dict)
    model.load_state_dict(averaged.state_dict, strict=True)
    ingredients = []
    for part in averaged.ingredients:
        row, ckpt = ev.rows[part["name"]], ev.epochs.get(part["name"], {}).get(part["epoch"], {})
        ingredients.append({**part, "repo_id": row.get("repo_id"), "branch": _ckpt_field(ev, part, "branch"),
                            "commit": _ckpt_field(ev, part, "commit"),
                            "weights_sha256": _ckpt_field(ev, part, "weights_sha256"),
                            "recorded_accuracy": ckpt.get("validation_accuracy")})
    record = {"method": averaged.method, "description": averaged.description, "zoo": ev.zoo.name,
              "ingredients": ingredients, "validation": averaged.metrics, "details": averaged.details,
              "accumulation": "float64 running sum of the floating-point weights, cast back to their dtype; "
                              "integer tensors are never averaged (equal in every ingredient, kept)"}
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.config.averaged_from = [{"name": i["name"], "epoch": i["epoch"], "weight": i["weight"]}
                                  for i in ingredients]
    model.config.averaging_method = averaged.method
    model.save_pretrained(tmp, safe_serialization=True)
    _processor(ev.zoo.record(first)).save_pretrained(tmp)  # like every zoo checkpoint: pipeline() just works
    (tmp / AVERAGING_FILE).write_text(json.dumps(record, indent=1))
    repo_ids = [i["repo_id"] for i in ingredients if i["repo_id"]]
    data = ModelCardData(library_name="transformers", pipeline_tag="image-classification",
                         tags=["vit-zoo", "weight-averaging", averaged.method],
                         base_model=sorted(set(repo_ids)) or None,
                         base_model_relation="merge" if repo_ids else None)
    listing = "\n".join(f"| {i['name']} | {i['epoch']} | {i['weight']:.4g} | {'yes' if i.get('aligned') else 'no'} "
                        f"| {i['repo_id'] or '-'} |" for i in ingredients)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {target.name}\n\n{averaged.description} "
                     f"(zoo `{ev.zoo.name}`, `vitzoo average --method {averaged.method}`).\n\n"
                     f"Validation accuracy: {averaged.metrics['accuracy']:.4f}.\n\n"
                     "## Averaged from\n\n| model | epoch | weight | permuted (Re-Basin) | repo |\n"
                     "|---|---|---|---|---|\n"
                     f"{listing}\n\nFull provenance in `{AVERAGING_FILE}`.\n")
    card.save(tmp / "README.md")
    os.replace(tmp, target)
    return target


def _processor(record: dict[str, Any]):
    """The image processor training saved with the ingredients' checkpoints, rebuilt from their record."""
    from types import SimpleNamespace

    from vitzoo_hf.blueprint import Architecture, Augmentation
    from vitzoo_hf.recipe import image_processor

    aug = Augmentation(**record["recipe"].get("augmentation", {}))
    return image_processor(SimpleNamespace(architecture=Architecture(**record["architecture"])), aug)


def _ckpt_field(ev, part: dict, key: str) -> Any:
    rows = ev.zoo.checkpoints
    if key not in rows.column_names:
        return None
    for r in rows.select_columns(["name", "epoch", key]):
        if r["name"] == part["name"] and r["epoch"] == part["epoch"]:
            return r[key]
    return None


# ----------------------------------------------------------------------------------------------------------------
# The command


def run(source: str, method: str, out: str | Path, models: Sequence[str] | None = None,
        window: int | Sequence[int] = 5,
        factors: Sequence[str] | None = None, save_model: str | None = None, batch_size: int = 256,
        seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """One averaging study; returns {"files": [...], "summary": str, "saved": path | None}."""
    from vitzoo_hf.training import quiet_transformers

    with quiet_transformers():
        return _run(source, method, Path(out), models, window, factors, save_model, batch_size, seed, progress)


def _run(source, method, out: Path, models, window, factors, save_model, batch_size, seed, progress) -> dict:
    from vitzoo_hf.averaging import methods as avg

    if method not in METHODS:
        raise ZooError(f"--method {method!r} is unknown; choose from {', '.join(METHODS)}")
    if batch_size < 1:
        raise ZooError(f"--batch-size must be >= 1, got {batch_size}")
    if out.exists() and not out.is_dir():
        raise ZooError(f"--out {out} is a file; give a folder")
    target = check_model_name(save_model, out) if save_model else None
    from vitzoo_hf.zoo import Zoo

    zoo = Zoo.open(source)
    ev = avg.ZooEvaluation(zoo, batch_size=batch_size, keep_best=bool(save_model), progress=progress)
    # Compute everything first (on every process, if launched with several), then write once.
    if method == "epochs":
        windows = sorted({window} if isinstance(window, int) else set(window))
        if not windows or windows[0] < 1:
            raise ZooError(f"--window must be >= 1, got {window}")
        window = windows[-1]  # the longitudinal study and Fig. 2a's main panel
        final, longitudinal = avg.epoch_averaging(ev, models, window)
        by_window = {window: final}
        for w in windows[:-1]:
            by_window[w] = avg.epoch_averaging(ev, models, w, longitudinal=False)[0]
        tables = {"epochs": final, "epochs_longitudinal": longitudinal,
                  **{f"epochs_w{w}": by_window[w] for w in windows}}
        figures = [lambda: fig_epochs(final, out / "fig2a_epochs.png", window),
                   lambda: fig_longitudinal(longitudinal, out / "fig3_longitudinal.png", window),
                   lambda: fig_gain_vs_ggap(by_window, out / "fig_gain_vs_ggap.png")]
        summary = summarize_epochs(final, longitudinal, window) + "\n" + summarize_windows(by_window)
    elif method == "soup":
        rows = avg.soups(ev, models, factors or avg.SOUP_FACTORS)
        tables, figures = {"soups": rows}, [lambda: fig_soups(rows, out / "fig2b_soups.png")]
        summary = summarize_soups(rows)
    elif method == "greedy-soup":
        rows = avg.greedy_soups(ev, models)
        tables, figures = {"greedy_soups": rows}, [lambda: fig_greedy(rows, out / "fig_greedy_soups.png")]
        summary = summarize_greedy(rows)
    else:
        pairs, curve, many = avg.rebasin(ev, models, seed=seed)
        tables = {"rebasin_pairs": pairs, "rebasin_interpolation": curve, **({"rebasin_many": many} if many else {})}
        figures = [lambda: fig_rebasin(curve, out / "fig_rebasin_interpolation.png")]
        summary = summarize_rebasin(pairs, many)
    summary = f"# vitzoo average {source} --method {method}\n\n{summary}"
    if ev.incomplete:
        summary += (f"\nLeft out {len(ev.incomplete)} model(s) not yet trained to their last epoch: "
                    f"{', '.join(ev.incomplete[:5])}{' …' if len(ev.incomplete) > 5 else ''}\n")
    files: list[Path] = []
    saved = None
    if not ev.accelerator.is_main_process:
        return {"files": files, "summary": summary, "saved": saved}
    out.mkdir(parents=True, exist_ok=True)
    for stem, rows_ in tables.items():
        files += write_table(rows_, out, stem)
    files += [draw() for draw in figures]
    if target is not None and ev.best is not None:
        saved = save_averaged(ev, ev.best, target)
        summary += (f"\nSaved the best averaged model ({ev.best.description}, validation accuracy "
                    f"{_pct(ev.best.metrics['accuracy'])} %) to {saved}\n")
    _atomic_write(out / "summary.md", summary)
    files.append(out / "summary.md")
    return {"files": files, "summary": summary, "saved": saved}
