"""The MMAlaya2 miniature's statistics: item outcomes under MMBench's circular rule (checked
against the runner's scorer), the paired bootstrap on hand-made cases (no change, a known shift
whose interval the normal approximation predicts), and the kept-of-single ratio."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tilevl.errors import InputError
from tilevl.eval.metrics.mcq import CIRCULAR_STRIDE, score_mmbench
from tilevl.recipes.mmalaya_stats import (
    kept_of_single,
    method_summary,
    paired_bootstrap,
    read_item_outcomes,
    resample_indices,
)


def _outcomes(pattern: dict[str, list[bool]]) -> dict[str, dict[int, bool]]:
    return {c: {i: bool(v) for i, v in enumerate(values)} for c, values in pattern.items()}


def test_identical_predictions_give_a_zero_interval():
    rng = np.random.default_rng(1)
    base = _outcomes({c: list(rng.random(50) < 0.5) for c in ("ocr", "color", "shape")})
    stats = paired_bootstrap(base, base, {"targeted": ["ocr"], "untargeted": ["color", "shape"]},
                             resamples=2000, seed=0)
    assert stats["targeted"] == {"delta": 0.0, "ci": [0.0, 0.0], "categories": 1}
    assert stats["untargeted"]["ci"] == [0.0, 0.0]


def test_a_known_shift_has_the_interval_the_normal_approximation_predicts():
    """100 items, 20 turned from wrong to right: delta 0.2, paired differences d ∈ {0, 1} with
    sd 0.4, so the 95 % interval is about 0.2 ± 1.96 · 0.4 / √100 = [0.12, 0.28]."""
    base = [False] * 60 + [True] * 40
    model = [True] * 20 + [False] * 40 + [True] * 40
    stats = paired_bootstrap(_outcomes({"ocr": base}), _outcomes({"ocr": model}),
                             {"targeted": ["ocr"]}, resamples=4000, seed=3)
    lo, hi = stats["targeted"]["ci"]
    assert stats["targeted"]["delta"] == pytest.approx(0.2)
    assert lo == pytest.approx(0.2 - 1.96 * 0.04, abs=0.02) and hi == pytest.approx(0.2 + 1.96 * 0.04, abs=0.02)
    # Unpaired, the same two scores would give a wider interval: pairing is what buys power.
    assert hi - lo < 2 * 1.96 * np.sqrt(0.4 * 0.6 / 100 + 0.6 * 0.4 / 100)


def test_group_figures_average_categories_and_draws_are_seeded():
    base = _outcomes({"a": [False] * 10, "b": [True] * 10})
    model = _outcomes({"a": [True] * 5 + [False] * 5, "b": [True] * 10})
    groups = {"targeted": ["a", "b"]}
    first = paired_bootstrap(base, model, groups, resamples=500, seed=7)
    assert first["targeted"]["delta"] == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert paired_bootstrap(base, model, groups, resamples=500, seed=7) == first
    # A category's draws depend on the seed and its name only, so methods evaluated on other
    # sets of categories (the single LoRAs) are paired with the same resamples.
    assert np.array_equal(resample_indices("a", 10, 50, 7), resample_indices("a", 10, 50, 7))
    assert not np.array_equal(resample_indices("a", 10, 50, 7), resample_indices("a", 10, 50, 8))
    assert not np.array_equal(resample_indices("a", 10, 50, 7), resample_indices("b", 10, 50, 7))
    with pytest.raises(InputError, match="category 'a' has 10 items for the base and 9"):
        paired_bootstrap(base, {**model, "a": {i: True for i in range(9)}}, groups, resamples=100)


def test_kept_of_single_is_a_ratio_of_sums_over_the_categories_single_lifted():
    single = {"a": 0.2, "b": 0.1, "c": -0.05}
    assert kept_of_single({"a": 0.1, "b": 0.05, "c": 0.3}, single) == pytest.approx(0.15 / 0.3)
    assert kept_of_single({"a": -0.1, "b": 0.0}, {"a": 0.0, "b": -0.1}) is None


def test_method_summary_schema():
    base = _outcomes({"a": [False] * 10, "u": [True] * 10})
    model = _outcomes({"a": [True] * 4 + [False] * 6, "u": [True] * 9 + [False]})
    entry = method_summary(base, model, ["a"], ["u"], {"a": 0.8}, resamples=200, seed=0, overall=0.5)
    assert entry["delta_targeted"] == pytest.approx(0.4) and entry["delta_untargeted"] == pytest.approx(-0.1)
    assert entry["kept_of_single"] == pytest.approx(0.5) and entry["overall"] == 0.5
    assert entry["targeted"] == pytest.approx(0.4) and entry["untargeted"] == pytest.approx(0.9)
    assert entry["per_category"]["u"] == {"score": 0.9, "base": 1.0, "delta": pytest.approx(-0.1), "items": 10}
    assert entry["delta_untargeted_ci95"][0] <= -0.1 <= entry["delta_untargeted_ci95"][1] <= 0.0


def test_item_outcomes_follow_the_circular_rule_of_the_scorer(tmp_path):
    """Two categories, questions with 2-3 circular copies; an item is right only when every copy
    is. The per-category means equal score_mmbench's on the same records."""
    rows, preds = [], []
    layout = [("ocr", 0, ["A", "B"], [True, True]), ("ocr", 1, ["A", "B", "C"], [True, False, True]),
              ("color", 2, ["A", "B"], [True, True]), ("color", 3, ["A", "B"], [False, False])]
    for category, q, letters, right in layout:
        for k, ok in enumerate(right):
            index = q + k * CIRCULAR_STRIDE
            gold = letters[(k + 1) % len(letters)]
            options = {letter: f"opt{q}{letter}" for letter in letters}
            rows.append({"index": index, "question": "Which?", **options, "answer": gold, "category": category})
            wrong = next(letter for letter in letters if letter != gold)
            preds.append({"index": index, "prediction": options[gold] if ok else wrong})
    header = ["index", "question", "A", "B", "C", "answer", "category"]
    tsv = tmp_path / "mcq.tsv"
    tsv.write_text("\n".join(["\t".join(header)] + ["\t".join(str(r.get(h, "")) for h in header) for r in rows]) + "\n")
    jsonl = tmp_path / "predictions.jsonl"
    jsonl.write_text("".join(json.dumps(p) + "\n" for p in preds))

    outcomes = read_item_outcomes(jsonl, tsv)
    assert outcomes == {"ocr": {0: True, 1: False}, "color": {2: True, 3: False}}
    records = [{**{k: v for k, v in r.items() if k not in "ABC"},
                "options": {k: r[k] for k in "ABC" if k in r}, "prediction": p["prediction"]}
               for r, p in zip(rows, preds)]
    reference = score_mmbench(records)["per_category"]
    assert {c: sum(v.values()) / len(v) for c, v in outcomes.items()} == \
        {c: v["score"] for c, v in reference.items()}

    jsonl.write_text(json.dumps({"index": 99, "prediction": "A"}) + "\n")
    with pytest.raises(InputError, match=r"predictions.jsonl:1: index 99 is not in"):
        read_item_outcomes(jsonl, tsv)
