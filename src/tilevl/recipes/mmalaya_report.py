"""The MMAlaya2 miniature's outputs: the seeds' table and the statistics table (markdown), the
delta chart with its intervals (PNG), and the copy of the small outputs to a results folder.

Scores arrive as fractions (summary.json's unit) and are shown in points (percent).
"""

from __future__ import annotations

import shutil
from pathlib import Path

PUBLISHED = ("summary.json", "table.md", "chart.png")  # small files only: never weights


def _pts(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _cell(value: float | None, base: float | None) -> str:
    if value is None:
        return "–"
    if base is None:
        return _pts(value)
    return f"{_pts(value)} ({100 * (value - base):+.1f})"


def _ci(ci: list[float] | None) -> str:
    return "–" if ci is None else f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def format_table(base: dict, methods: dict[str, dict], targeted: list[str]) -> str:
    """The seeds' MMAlaya2 table: base, then each method with its change from the base.

    Args:
        base: `{"per_category": {cat: fraction}, "targeted", "untargeted", "overall"}`.
        methods: name → an entry of summary.json's `methods` (`per_category[cat]["score"]`).
        targeted: the categories that got a LoRA, one column each (marked `*`).

    Returns:
        Markdown: columns are the targeted categories, their average, the untargeted
        average and the overall score (circular accuracy, %).
    """
    head = ["Model", *[f"{c}*" for c in targeted], "Trained avg", "Untargeted avg", "Overall"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines.append("| " + " | ".join(["base", *[_pts(base["per_category"].get(c)) for c in targeted],
                                     _pts(base["targeted"]), _pts(base["untargeted"]),
                                     _pts(base["overall"])]) + " |")
    for name, entry in methods.items():
        scores = {c: v["score"] for c, v in entry["per_category"].items()}
        cells = [_cell(scores.get(c), base["per_category"].get(c)) for c in targeted]
        cells += [_cell(entry["targeted"], base["targeted"]),
                  _cell(entry["untargeted"], base["untargeted"] if entry["untargeted"] is not None else None),
                  _cell(entry["overall"], base["overall"] if entry["overall"] is not None else None)]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def format_stats_table(methods: dict[str, dict], resamples: int) -> str:
    """Each method's change from the base with its paired-bootstrap 95 % interval (points)."""
    lines = ["| Method | Δ targeted | 95 % CI | Δ untargeted | 95 % CI | kept of single |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, e in methods.items():
        delta_t = "–" if e["delta_targeted"] is None else f"{100 * e['delta_targeted']:+.1f}"
        delta_u = "–" if e["delta_untargeted"] is None else f"{100 * e['delta_untargeted']:+.1f}"
        kept = "–" if e["kept_of_single"] is None else f"{100 * e['kept_of_single']:.0f} %"
        lines.append(f"| {name} | {delta_t} | {_ci(e['delta_targeted_ci95'])} | {delta_u} | "
                     f"{_ci(e['delta_untargeted_ci95'])} | {kept} |")
    lines.append(f"\nIntervals: paired bootstrap over circular items within each category "
                 f"({resamples} resamples), percentile 95 %.")
    return "\n".join(lines)


def format_data_table(data: dict[str, dict]) -> str:
    """Per targeted category: which data trained its LoRA, and CoT consistency's kept/dropped."""
    lines = ["| Category | data | records | CoT asked | kept | dropped |", "| --- | --- | --- | --- | --- | --- |"]
    for category, choice in data.items():
        cot = choice.get("cot") or {}
        lines.append(f"| {category} | {choice['mode']} | {choice['records']} | "
                     f"{cot.get('questions', '–')} | {cot.get('kept', '–')} | {cot.get('dropped', '–')} |")
    return "\n".join(lines)


def check_goals(methods: dict[str, dict], lead: str = "ties", against: str = "linear") -> dict:
    """Issue 18's goals for the recipe's merge: each True / False (None when not measured).

    `lead` lifts the targeted categories by >= 10 points with the interval above 0, costs the
    untargeted ones <= 2 points, and keeps more of the single-LoRA gains than `against`.
    """
    e, other = methods.get(lead), methods.get(against)
    if e is None:
        return {}
    kept = None if other is None or None in (e["kept_of_single"], other["kept_of_single"]) \
        else e["kept_of_single"] > other["kept_of_single"]
    return {
        "targeted_gain_ge_10_points": e["delta_targeted"] >= 0.10,
        "targeted_ci_above_0": e["delta_targeted_ci95"][0] > 0,
        "untargeted_cost_le_2_points": None if e["delta_untargeted"] is None else e["delta_untargeted"] >= -0.02,
        f"keeps_more_of_single_than_{against}": kept,
    }


def format_goals(goals: dict, lead: str = "ties") -> str:
    """One line: each goal met / missed / not measured."""
    word = {True: "met", False: "missed", None: "not measured"}
    return f"Goals for {lead}: " + "; ".join(f"{k.replace('_', ' ')}: {word[v]}" for k, v in goals.items())


def plot_deltas(methods: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """Bars of Δ targeted and Δ untargeted per method (points) with their 95 % intervals.

    Raises:
        MissingDependencyError: without matplotlib (`pip install 'tilevl[eval]'`).
    """
    from tilevl.optional import require

    matplotlib = require("matplotlib", extra="eval", purpose="to draw the MMAlaya2 chart")
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    names = list(methods)
    figure, axis = plt.subplots(figsize=(1.3 * len(names) + 2.5, 4))
    width = 0.38
    for shift, key, label, color in ((-width / 2, "targeted", "targeted categories", "#4c72b0"),
                                     (width / 2, "untargeted", "untargeted categories", "#dd8452")):
        xs, ys, err = [], [], [[], []]
        for i, name in enumerate(names):
            delta, ci = methods[name][f"delta_{key}"], methods[name][f"delta_{key}_ci95"]
            if delta is None:
                continue
            xs.append(i + shift)
            ys.append(100 * delta)
            err[0].append(100 * (delta - ci[0]))
            err[1].append(100 * (ci[1] - delta))
        axis.bar(xs, ys, width, yerr=err, capsize=3, label=label, color=color)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(range(len(names)), names, rotation=20, ha="right")
    axis.set_ylabel("change from the base (points, 95 % CI)")
    axis.set_title(title or "MMAlaya2 in miniature")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def publish(run: Path, target: str | Path) -> list[Path]:
    """Copy the run's small outputs (`PUBLISHED`, those present) into `target`."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in PUBLISHED:
        if (run / name).exists():
            shutil.copy2(run / name, target / name)
            copied.append(target / name)
    return copied


__all__ = ["PUBLISHED", "check_goals", "format_data_table", "format_goals", "format_stats_table", "format_table", "plot_deltas",
           "publish"]
