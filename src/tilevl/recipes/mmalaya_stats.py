"""The MMAlaya2 miniature's statistics: per-item circular outcomes from an evaluation folder,
paired bootstrap intervals on category averages, and the share of single-LoRA gains a merge keeps.

An *item* is one MiniBench question with all its circular copies (MMBench's rule: it counts
only when every copy is right); a category's score is the mean over its items, and the
targeted / untargeted figures are means over categories, as the table reports them.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from tilevl.errors import InputError

# Item outcomes: category → {item key (index mod the circular stride): all copies right}.
Outcomes = dict[str, dict[int, bool]]


def read_item_outcomes(predictions: str | Path, tsv: str | Path) -> Outcomes:
    """Score an evaluation's rows item by item, with the MMBench circular rule.

    Uses the same reading of a reply (`extract_choice`) and the same grouping (index modulo
    `CIRCULAR_STRIDE`, the lowest index supplies the category) as `score_mmbench`, so the
    per-category means equal the runner's `per_category` figures.

    Args:
        predictions: the runner's `predictions.jsonl` (`index`, `prediction` per row).
        tsv: the MCQ TSV that was evaluated (options and gold letters per row).

    Returns:
        category → {item key: every circular copy answered right}.

    Raises:
        InputError: a prediction row whose index is not in the TSV.
    """
    from tilevl.eval.benchmarks.common import read_tsv
    from tilevl.eval.benchmarks.mmbench import OPTION_LETTERS
    from tilevl.eval.metrics.choices import extract_choice
    from tilevl.eval.metrics.mcq import CIRCULAR_STRIDE

    gold = {}
    for row in read_tsv(tsv):
        options = {k: str(row[k]).strip() for k in OPTION_LETTERS
                   if k in row and row[k] not in (None, "") and str(row[k]).lower() != "nan"}
        gold[int(row["index"])] = (options, str(row["answer"]).strip(), row.get("category"))
    groups: dict[int, list[tuple[int, bool]]] = {}
    with open(predictions, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            index = int(row["index"])
            if index not in gold:
                raise InputError(f"{predictions}:{number}: index {index} is not in {tsv}")
            options, answer, _ = gold[index]
            right = extract_choice(row.get("prediction") or "", options) == answer
            groups.setdefault(index % CIRCULAR_STRIDE, []).append((index, right))
    outcomes: Outcomes = {}
    for key, copies in groups.items():
        category = gold[min(i for i, _ in copies)][2]
        outcomes.setdefault(category, {})[key] = all(right for _, right in copies)
    return outcomes


def category_means(outcomes: Outcomes) -> dict[str, float]:
    """Circular accuracy per category, as fractions."""
    return {c: sum(items.values()) / len(items) for c, items in outcomes.items() if items}


def _aligned(base: Outcomes, model: Outcomes, category: str) -> tuple[np.ndarray, np.ndarray]:
    """The two models' outcomes on one category's items, in one item order."""
    keys = sorted(base[category])
    if set(keys) != set(model.get(category, {})):
        theirs = set(model.get(category, {}))
        raise InputError(f"paired bootstrap: category {category!r} has {len(keys)} items for the "
                         f"base and {len(theirs)} for the model ({len(set(keys) ^ theirs)} differ); "
                         "both must answer the same questions")
    return (np.array([base[category][k] for k in keys], dtype=np.float64),
            np.array([model[category][k] for k in keys], dtype=np.float64))


def resample_indices(category: str, n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] item positions drawn with replacement, seeded by (seed, category).

    The category's own seed makes the draws the same for every model and every set of
    categories, so two methods' intervals are paired with each other too.
    """
    rng = np.random.default_rng([seed, zlib.crc32(category.encode("utf-8"))])
    return rng.integers(0, n, size=(resamples, n))


def paired_bootstrap(base: Outcomes, model: Outcomes, groups: Mapping[str, Sequence[str]],
                     resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, dict | None]:
    """Paired bootstrap of the change in category-averaged circular accuracy, model − base.

    Each resample draws, within every category, as many items as it has, with replacement;
    base and model are scored on the same draw (paired), each category's mean is taken and
    the group's categories averaged. The interval is the percentile interval of the change.

    Args:
        base, model: item outcomes (`read_item_outcomes`); the model must answer the base's
            items of every category it is compared on.
        groups: name → categories averaged (e.g. {"targeted": [...], "untargeted": [...]}).
        resamples: bootstrap resamples (≥ 2000 for a 95 % interval).
        seed: seeds the draws.
        level: the interval's coverage.

    Returns:
        name → `{"delta": d, "ci": [lo, hi], "categories": k}` as fractions (None for an
        empty group).
    """
    per_category: dict[str, tuple[float, np.ndarray]] = {}
    for category in sorted({c for names in groups.values() for c in names}):
        b, m = _aligned(base, model, category)
        idx = resample_indices(category, len(b), resamples, seed)  # [resamples, n]
        per_category[category] = (float(m.mean() - b.mean()), (m[idx] - b[idx]).mean(axis=1))
    tail = (1.0 - level) / 2 * 100
    out: dict[str, dict | None] = {}
    for name, names in groups.items():
        if not names:
            out[name] = None
            continue
        delta = float(np.mean([per_category[c][0] for c in names]))
        draws = np.mean([per_category[c][1] for c in names], axis=0)  # [resamples]
        lo, hi = np.percentile(draws, [tail, 100 - tail])
        out[name] = {"delta": delta, "ci": [float(lo), float(hi)], "categories": len(names)}
    return out


def kept_of_single(merge_deltas: Mapping[str, float], single_deltas: Mapping[str, float]) -> float | None:
    """The share of the single LoRAs' gains a merge keeps: a ratio of sums.

    Over the targeted categories where the category's own LoRA gained (delta_single > 0):
    Σ delta_merge / Σ delta_single. 1.0 keeps every point the LoRAs won alone; 0 keeps none;
    negative: the merge lost ground there. A ratio of sums, not a mean of ratios, so one
    category with a tiny single gain cannot dominate it.

    Returns:
        The share, or None when no single LoRA gained.
    """
    gained = [c for c, d in single_deltas.items() if d > 0 and c in merge_deltas]
    total = sum(single_deltas[c] for c in gained)
    if not gained or total <= 0:
        return None
    return sum(merge_deltas[c] for c in gained) / total


def average(values: Iterable[float | None]) -> float | None:
    """Mean of the values present (None when there are none)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def method_summary(base: Outcomes, model: Outcomes, targeted: Sequence[str], untargeted: Sequence[str],
                   single_deltas: Mapping[str, float] | None, resamples: int, seed: int,
                   overall: float | None = None) -> dict:
    """One method's entry of summary.json: scores, deltas vs the base, intervals, kept share.

    Args:
        base, model: item outcomes; `model` may lack untargeted categories (then its
            untargeted figures are None).
        targeted, untargeted: the category lists averaged.
        single_deltas: category → the single LoRA's delta there (None: this is the single).
        resamples, seed: the bootstrap's.
        overall: the benchmark's headline (all questions), as a fraction, when evaluated.

    Returns:
        The dict the README documents (fractions throughout).
    """
    base_means, means = category_means(base), category_means(model)
    untargeted = [c for c in untargeted if c in means]
    stats = paired_bootstrap(base, model, {"targeted": list(targeted), "untargeted": untargeted},
                             resamples, seed)
    per_category = {c: {"score": means[c], "base": base_means[c], "delta": means[c] - base_means[c],
                        "items": len(model[c])} for c in [*targeted, *untargeted]}
    deltas = {c: v["delta"] for c, v in per_category.items()}
    t, u = stats["targeted"], stats["untargeted"]
    return {
        "targeted": average(means[c] for c in targeted),
        "untargeted": average(means[c] for c in untargeted),
        "overall": overall,
        "delta_targeted": t["delta"] if t else None,
        "delta_targeted_ci95": t["ci"] if t else None,
        "delta_untargeted": u["delta"] if u else None,
        "delta_untargeted_ci95": u["ci"] if u else None,
        "kept_of_single": None if single_deltas is None else kept_of_single(deltas, single_deltas),
        "per_category": per_category,
    }


__all__ = ["Outcomes", "average", "category_means", "kept_of_single", "method_summary",
           "paired_bootstrap", "read_item_outcomes", "resample_indices"]
