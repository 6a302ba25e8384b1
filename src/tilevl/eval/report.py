"""Evaluation outputs: results.json, per-sample predictions, a Markdown table, a per-category
bar chart (matplotlib, the optional `eval` extra), and the side-by-side comparison of runs.

Fractions print as percentages with one decimal, as leaderboards (and MMAlaya2's table) do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tilevl.errors import InputError


def fmt(value, fraction: bool) -> str:
    """A figure as leaderboards print it: 82.1 for a fraction 0.821, else as it is.

    Args:
        value: the number (or None).
        fraction: whether it is a fraction in [0, 1].

    Returns:
        The text ("–" for None).
    """
    if value is None:
        return "–"
    if fraction:
        return f"{100 * value:.1f}"
    return f"{value:.1f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"


def _atomic_write(path: Path, text: str) -> None:
    # Write then rename, so a reader never sees half a results file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_outputs(out: str | Path, results: dict, rows: list[dict]) -> dict:
    """Write results.json, predictions.jsonl, results.md and (with matplotlib) categories.png.

    Args:
        out: the output folder (created).
        results: the results dict (`tilevl.eval.runner.evaluate` builds it).
        rows: one dict per question (index, prompt, prediction, outputs, gold …).

    Returns:
        `{"results", "predictions", "markdown", "chart"}` paths (chart None when skipped);
        also stored under `results["files"]`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": str(out / "results.json"), "predictions": str(out / "predictions.jsonl"),
             "markdown": str(out / "results.md"), "chart": None}
    if results.get("per_category") and results["per_category"]["values"]:
        from tilevl.optional import is_available

        if is_available("matplotlib"):
            files["chart"] = str(plot_categories(results, out / "categories.png"))
        else:
            results.setdefault("notes", []).append(
                "no per-category chart: pip install 'tilevl[eval]' for matplotlib")
    results["files"] = files
    _atomic_write(out / "predictions.jsonl",
                  "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
    _atomic_write(out / "results.md", results_markdown(results))
    _atomic_write(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n")
    return files


def results_markdown(results: dict) -> str:
    """One run as Markdown: the headline, the scalar figures, the per-category table.

    Args:
        results: a results dict.

    Returns:
        Markdown text.
    """
    head = results["headline"]
    lines = [f"# {results['benchmark']} — {results.get('model') or 'model'}", "",
             f"**{head['name']}: {fmt(head['value'], head['fraction'])}** "
             f"({results['n']} questions; rule `{results['rule']}` v{results['rule_version']}; "
             f"variant {results.get('variant', 'direct')}; "
             f"judge {'used' if results.get('judge', {}).get('used') else 'not used'}"
             f"{_tiles_note(results.get('tile_budget'))})", "",
             "| figure | value |", "|---|---:|"]
    for name, value in results["scores"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            fraction = isinstance(value, float) and 0.0 <= value <= 1.0 and name not in ("n",)
            lines.append(f"| {name} | {fmt(value, fraction)} |")
    scaling = results.get("test_time_scaling")
    if scaling and scaling.get("direct_score") is not None:
        frac = head["fraction"]
        lines += ["", f"Test-time scaling: {scaling['variant']} {fmt(scaling['variant_score'], frac)} "
                      f"vs direct {fmt(scaling['direct_score'], frac)} "
                      f"(gain {fmt(scaling['gain'], frac)})"]
    cats = results.get("per_category")
    if cats and cats["values"]:
        lines += ["", f"| {cats['name'].replace('per_', '')} | score |", "|---|---:|"]
        lines += [f"| {c} | {fmt(v, cats['fraction'])} |" for c, v in cats["values"].items()]
    return "\n".join(lines) + "\n"


def _tiles_note(budget: dict | None) -> str:
    if not budget:
        return ""
    return f"; {budget['max_tiles']} tile(s) per image, from {budget['detail']}"


def plot_categories(results: dict, path: str | Path) -> Path:
    """A horizontal bar chart of the per-category scores.

    Args:
        results: a results dict with `per_category`.
        path: the PNG to write.

    Returns:
        The path written.

    Raises:
        MissingDependencyError: without matplotlib (`pip install 'tilevl[eval]'`).
    """
    from tilevl.optional import require

    matplotlib = require("matplotlib", extra="eval", purpose="to draw the per-category chart")
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    cats = results["per_category"]
    names = list(cats["values"])
    values = [(100 * v if cats["fraction"] else v) if v is not None else 0 for v in cats["values"].values()]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    axis.barh(names, values, color="#4c72b0")
    axis.invert_yaxis()  # first category on top, as in the table
    axis.set_xlabel(f"{results['headline']['name']} ({'%' if cats['fraction'] else 'score'})")
    axis.set_title(f"{results['benchmark']} — {results.get('model') or 'model'}")
    for y, v in enumerate(values):
        axis.text(v, y, f" {v:.1f}", va="center", fontsize=7)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def load_results(path: str | Path) -> list[dict]:
    """Results from a results.json, or from every `*/results.json` under a folder.

    Args:
        path: a file or a folder.

    Returns:
        The results dicts, sorted by benchmark name.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("results.json")) + sorted(path.glob("*/results.json"))
    if not files:
        raise InputError(f"{path}: no results.json found")
    runs = []
    for file in files:
        try:
            runs.append(json.loads(file.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise InputError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    return sorted(runs, key=lambda r: r["benchmark"])


def compare(a: list[dict], b: list[dict], names: tuple[str, str] | None = None) -> str:
    """Two runs side by side: every benchmark's headline and categories, with B − A.

    Args:
        a: results of run A (one or several benchmarks).
        b: results of run B.
        names: column titles (default: the runs' model names, else "A"/"B").

    Returns:
        A Markdown table; rows present in only one run show "–".
    """
    title_a = (names or (None, None))[0] or (a[0].get("model") if a else None) or "A"
    title_b = (names or (None, None))[1] or (b[0].get("model") if b else None) or "B"
    if title_a == title_b:
        title_a, title_b = f"{title_a} (A)", f"{title_b} (B)"
    rows_a, rows_b = _rows(a), _rows(b)
    keys = list(rows_a) + [k for k in rows_b if k not in rows_a]
    lines = [f"| benchmark | figure | {title_a} | {title_b} | Δ |", "|---|---|---:|---:|---:|"]
    for key in keys:
        va, fa = rows_a.get(key, (None, True))
        vb, fb = rows_b.get(key, (None, fa))
        delta = None if va is None or vb is None else vb - va
        sign = "+" if delta is not None and delta > 0 else ""
        lines.append(f"| {key[0]} | {key[1]} | {fmt(va, fa)} | {fmt(vb, fb)} | "
                     f"{sign}{fmt(delta, fa) if delta is not None else '–'} |")
    for label, runs in (("A", a), ("B", b)):
        mismatched = [r["benchmark"] for r in runs if r.get("judge", {}).get("used")]
        if mismatched:
            lines.append(f"\n{label}: an LLM judge decided answers on {', '.join(mismatched)}")
    return "\n".join(lines) + "\n"


def _rows(runs: list[dict]) -> dict:
    rows = {}
    for run in runs:
        head = run["headline"]
        rows[(run["benchmark"], head["name"])] = (head["value"], head["fraction"])
        cats = run.get("per_category") or {"values": {}}
        for name, value in cats["values"].items():
            rows[(run["benchmark"], f"  {name}")] = (value, cats["fraction"])
    return rows
