"""A run's report/: learning curves from history, metrics.json, and report.md rendered from what the run holds.

    write_summary()     what a recipe's report calls: metrics.json, report.json (title, tables, figures), report.md
    render_report()     report.md (and report.html) from report/ and the run: the headline against its baseline,
                        the metrics, the recipe's tables and figures, the resolved config.yaml and run.json
    write_run_report()  `kiln report RUN`: the headline and learning curves refreshed, then render_report; no model runs

The training-time report and `kiln report` are one renderer, so a report rewritten later reads as it did.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import matplotlib

from kiln.engine.files import write_json, write_text

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402

CONTENT = "report.json"    # the recipe's title, tables and figures, from which report.md is rendered
HEADLINE = "headline.json"  # the recipe's headline against its baseline, written before the recipe's report
IMAGE_TYPES = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def save_figure(fig, out: Path) -> None:
    """Every report figure: tight layout, 110 dpi PNG, and the figure freed (reports draw many)."""
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_learning_curves(run_dir: Path, out: Path) -> list[str]:
    """One panel per metric that has train_ and/or val_ columns in history.json. Returns metric names."""
    history = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").is_file() else {}
    names = sorted({k.split("_", 1)[1] for k in history if k.startswith(("train_", "val_"))})
    if not names:
        return []
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for split in ("train", "val"):
            if f"{split}_{name}" in history:
                ax.plot(history["epoch"], history[f"{split}_{name}"], marker=".", label=split)
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, out)
    return names


def write_summary(report_dir: Path, title: str, metrics: dict, figures: dict[str, str],
                  tables: dict[str, list[str]] | None = None) -> None:
    """metrics.json, report.json (title, further tables as heading -> markdown lines, figures as caption -> file)
    and report.md rendered from them and the run."""
    write_json(report_dir / "metrics.json", metrics)
    write_json(report_dir / CONTENT, {"title": title, "tables": tables or {}, "figures": figures})
    render_report(report_dir)


def write_headline(report_dir: Path, headline: dict[str, Any] | None) -> None:
    if headline is None:
        (report_dir / HEADLINE).unlink(missing_ok=True)  # a recipe that no longer has one leaves no stale line
    else:
        write_json(report_dir / HEADLINE, headline)


def write_run_report(run_dir: Path, headline: dict[str, Any] | None, html_too: bool = False) -> Path:
    """`kiln report RUN`: report.md (and report.html) again from what the run holds; returns report.md's path."""
    from kiln.engine.files import make_dirs

    report_dir = make_dirs(run_dir / "report", "report dir")
    write_headline(report_dir, headline)
    plot_learning_curves(run_dir, report_dir / "learning_curves.png")
    render_report(report_dir, html_too)
    return report_dir / "report.md"


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def render_report(report_dir: Path, html_too: bool = False) -> None:
    """report.md from report/ (report.json, metrics.json, headline.json, the images) and its run (config.yaml,
    run.json, test_results.json where the recipe wrote no metrics.json); every image in report/ that the recipe
    did not place is shown too. `html_too` also writes report.html with the images inlined."""
    run_dir = report_dir.parent
    content = read_json(report_dir / CONTENT) or {"title": fallback_title(run_dir), "tables": {}, "figures": {}}
    metrics = read_json(report_dir / "metrics.json")
    if metrics is None:
        metrics = {k: v for k, v in (read_json(run_dir / "test_results.json") or {}).items() if not isinstance(v, (dict, list))}
    figures = dict(content["figures"])
    placed = set(figures.values())
    for path in sorted(report_dir.iterdir()):
        if path.suffix.lower() in IMAGE_TYPES and path.name not in placed:
            figures[path.stem.replace("_", " ").capitalize()] = path.name
    lines = [f"# {content['title']}", ""]
    lines += headline_table(read_json(report_dir / HEADLINE))
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    for heading, table in content["tables"].items():
        lines += ["", f"## {heading}", "", *table]
    for caption, file in figures.items():
        shown = f"![{caption}]({file})" if Path(file).suffix.lower() in IMAGE_TYPES else f"[{caption}]({file})"
        lines += ["", f"## {caption}", "", shown]
    if (run_dir / "config.yaml").is_file():
        lines += ["", "## Configuration (config.yaml, as resolved)", "", "```yaml", (run_dir / "config.yaml").read_text().rstrip(), "```"]
    if (run_dir / "run.json").is_file():
        lines += ["", "## How it was run (run.json)", "", "```json", (run_dir / "run.json").read_text().rstrip(), "```"]
    text = "\n".join(lines) + "\n"
    write_text(report_dir / "report.md", text)
    if html_too:
        write_text(report_dir / "report.html", to_html(text, report_dir, content["title"]))


def fallback_title(run_dir: Path) -> str:
    """The title of a run whose recipe wrote no report of its own."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else None
    config = config if isinstance(config, dict) else {}
    return f"{config.get('recipe', 'kiln')} run {config.get('name', run_dir.name)}"


def headline_table(headline: dict[str, Any] | None) -> list[str]:
    """The headline metric of the model beside the baseline measured in the same run."""
    if headline is None:
        return []
    better = "higher" if headline["higher_is_better"] else "lower"
    return [f"| headline ({better} is better) | this model | {headline['baseline']} |", "|---|---|---|",
            f"| {headline['metric']} | {headline['value']:.4f} | {headline['baseline_value']:.4f} |", ""]


def to_html(markdown: str, report_dir: Path, title: str) -> str:
    """A self-contained page: the markdown rendered (markdown-it, with tables), every image in report/ inlined."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(markdown)
    for token in tokens:
        for child in token.children or []:
            path = report_dir / str(child.attrGet("src") or "")
            if child.type == "image" and path.is_file() and path.suffix.lower() in IMAGE_TYPES:
                child.attrSet("src", f"data:{IMAGE_TYPES[path.suffix.lower()]};base64,{base64.b64encode(path.read_bytes()).decode()}")
    body = md.renderer.render(tokens, md.options, {})
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em}img{max-width:100%}"
             "pre{background:#f6f8fa;padding:1em;overflow:auto}")
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head>\n<body>\n{body}</body></html>\n")
