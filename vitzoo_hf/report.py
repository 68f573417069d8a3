"""The demo's report: one Markdown page (and its HTML rendering) gathering what every stage wrote.

Each stage writes its own tables (Markdown, CSV) and figures (PNG) under `report/<stage>/`; the report embeds
those files as they are, in a fixed order, so the page always shows exactly what the commands produced.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitzoo_hf.demo import Demo



@dataclass(frozen=True)
class Section:
    """One part of the report: `folder` is the stage's folder under report/, `pages` globs of the Markdown it
    embeds (in order); `figures` / `tables`: whether its PNGs are shown and its CSVs linked. Add a section by
    appending to SECTIONS (e.g. a weight-space study writing under report/weightspace/)."""

    folder: str
    title: str
    intro: str
    pages: tuple[str, ...]
    figures: bool = True
    tables: bool = True


SECTIONS: list[Section] = [
    Section("analysis", "The paper's findings, checked on this zoo",
            "Each finding of the paper's Sections 3–4 and Appendix A as a computed check: the statistic, the "
            "paper's value, this zoo's value and the rule that decides (`vitzoo analyze --averaging --lineage`).",
            ("findings.md",), figures=False, tables=False),
    Section("analysis", "Population analysis (paper Tables 1, 2, 6, 7, 8)",
            "Accuracy, generalisation gap (recorded train accuracy on clean training images minus validation "
            "accuracy), prediction agreement and weight statistics, computed from the published metadata and "
            "weights on the Hub.", ("tables.md",)),
    Section("lineage", "Lineage recovery (paper Table 3)",
            "MoTHeR as the paper specifies it, beside our method, on sub-zoos drawn as in Table 3; mean ± std "
            "over random draws. Paper (MoTHeR on the full zoo): epochs acc 0.997 / F1 0.817; seed F1 0.09, "
            "lr 0.08, head 0.08, optimizer 0.00.", ("table3.md",)),
    Section("averaging", "Weight averaging (paper Figs. 2 and 3, Git Re-Basin)",
            "Epoch averages, model soups and Git Re-Basin merges. Greedy soups and their best-member baseline "
            "choose on one half of the validation split and are scored on the other half.",
            ("epochs/summary.md", "soup/summary.md", "greedy-soup/summary.md", "rebasin/summary.md")),
    Section("weightspace", "Learning from weights: property prediction (the paper's intended uses)",
            "Can a model's accuracy, generalisation gap and hyper-parameters be read off its weights? Ridge and "
            "gradient-boosted trees on per-tensor statistics and on the metadata's sketches, and a small "
            "transformer on weight tokens, each tested on lineages it never saw, beside a shuffled-target control "
            "and the trivial predictor. The demo runs the ridge and tree baselines; `vitzoo predict` adds the "
            "token transformer. A target counts as predictable only where its score beats the best control by "
            "the margin stated in the table.", ("results.md",)),
]
_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
code,pre{background:#f6f6f6}pre{padding:.6em;overflow-x:auto}h1,h2,h3{border-bottom:1px solid #eee}"""


def _section_files(folder: Path, section: Section) -> tuple[list[Path], list[Path]]:
    if not folder.is_dir():
        return [], []
    mds = [p for pattern in section.pages for p in sorted(folder.glob(pattern))]
    return mds, sorted(folder.rglob("*.png")) if section.figures else []


def _demote(markdown: str) -> str:
    """Embedded pages' headings sit under the section's: '# x' → '### x'."""
    return "\n".join("##" + line if line.startswith("#") else line for line in markdown.splitlines())


def render_markdown(demo: Demo, meta_repo: str) -> str:
    from vitzoo_hf.zoo import Zoo

    zoo = Zoo.from_hub(meta_repo)
    models = zoo.models.to_pandas()
    lines = [f"# vitzoo demo: the `{demo.blueprint}` zoo", "",
             f"{len(models)} models ({int((models.stage == 'pretraining').sum())} pre-trained, "
             f"{int((models.stage == 'finetuning').sum())} fine-tuned) of the `{demo.blueprint}` blueprint, generated "
             f"with `vitzoo generate`, published to the embedded local Hub (`{demo.hub_dir}`) and analysed from the "
             f"Hub alone: metadata dataset `{meta_repo}`, one model repo per model with a branch per epoch.", ""]
    for section in SECTIONS:
        stage = section.folder
        mds, pngs = _section_files(demo.report_dir / stage, section)
        lines += ["", f"## {section.title}", "", section.intro, ""]
        for md in mds:
            lines += [_demote(md.read_text()).strip(), ""]
        for png in pngs:
            rel = png.relative_to(demo.report_dir)
            lines += [f"![{rel.stem}]({rel.as_posix()})", ""]
        folder = demo.report_dir / stage
        csvs = sorted(folder.rglob("*.csv")) if section.tables and folder.is_dir() else []
        if csvs:  # every row of every table, for a spreadsheet or pandas
            links = ", ".join(f"[{c.relative_to(demo.report_dir / stage).as_posix()}]"
                              f"({c.relative_to(demo.report_dir).as_posix()})" for c in csvs)
            lines += [f"All tables as CSV: {links}.", ""]
        if not mds and not pngs:
            lines += ["(this stage wrote nothing)", ""]
    lines += ["## Every model on the Hub", "", "| repo | stage | parent | validation accuracy |", "|---|---|---|---|"]
    for row in models.itertuples():
        acc = "—" if row.validation_accuracy is None or row.validation_accuracy != row.validation_accuracy \
            else f"{row.validation_accuracy:.3f}"
        parent = row.parent_repo_id if isinstance(row.parent_repo_id, str) and row.parent_repo_id else "—"
        lines.append(f"| `{row.repo_id}` | {row.stage} | {parent} | {acc} |")
    return "\n".join(lines) + "\n"


def render_html(markdown: str, title: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}</body></html>\n")


def write_report(demo: Demo, meta_repo: str) -> Path:
    """Write report/index.md and report/index.html; return the HTML path. The page depends only on what is on
    the Hub and what the stages wrote (no timings, no port), so an interrupted and resumed demo gives the same."""
    from vitzoo_hf.checkpoints import write_json_atomic

    demo.report_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(demo, meta_repo)
    write_json_atomic(demo.report_dir / "index.md", markdown)
    index = demo.report_dir / "index.html"
    write_json_atomic(index, render_html(markdown, f"vitzoo demo: {demo.blueprint}"))
    return index
