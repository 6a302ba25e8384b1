"""Open-answer VQA scorers: VQA accuracy, exact match, ANLS, ChartQA relaxed accuracy, OCRBench.

Per-answer rules live in `normalize`; this module applies them to record lists and aggregates.
"""

from __future__ import annotations

from collections.abc import Callable

from tilevl.errors import InputError
from tilevl.eval.metrics.normalize import (
    anls,
    exact_match,
    gqa_match,
    ocrbench_match,
    relaxed_correctness,
    vqa_accuracy,
)
from tilevl.eval.metrics.records import as_list, group_mean, ratio, result

# Yuliang-Liu/MultimodalOCR OCRBench: the six recognition types are summed into "Text
# Recognition"; with the four others they make the final score out of 1000.
OCRBENCH_RECOGNITION = (
    "Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
    "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition",
)


def _gold(record: dict, position: int, rule: str) -> list[str]:
    # Benchmarks name the gold field either way; both mean "one or more gold answers".
    for field in ("answers", "answer"):
        if record.get(field) is not None:
            return [str(a) for a in as_list(record[field])]
    raise InputError(f"{rule}: record #{position} has neither 'answers' nor 'answer'")


def _score_each(
    records: list[dict], rule: str, score: Callable[[str, list[str]], float]
) -> list[float]:
    if not isinstance(records, list):
        raise InputError(f"{rule}: records must be a list of dicts, got {type(records).__name__}")
    return [
        float(score(str(r.get("prediction", "")), _gold(r, i, rule))) for i, r in enumerate(records)
    ]


def score_vqa(records: list[dict]) -> dict:
    """VQAv2 / OK-VQA / TextVQA / VizWiz accuracy (official normalisation, leave-one-out).

    Source: GT-Vision-Lab/VQA vqaEval.py, via `normalize.vqa_accuracy` (which documents the
    behaviour for fewer than 10 human answers).

    Args:
        records: dicts with `prediction`, `answers` (the human answers, normally 10), and
            optionally `answer_type` ("yes/no", "number", "other").

    Returns:
        `accuracy`, `per_answer_type`, `n`.
    """
    rule = "vqa_accuracy"
    scores = _score_each(records, rule, vqa_accuracy)
    return result(
        rule, "1", len(records),
        accuracy=ratio(sum(scores), len(scores)),
        per_answer_type=group_mean([r.get("answer_type") for r in records], scores),
    )


def score_gqa(records: list[dict]) -> dict:
    """GQA accuracy: exact match after dropping trailing periods and lower-casing.

    Args:
        records: dicts with `prediction` and `answer` (str or list).

    Returns:
        `accuracy`, `n`.
    """
    rule = "gqa_exact_match"
    scores = _score_each(records, rule, gqa_match)
    return result(rule, "1", len(records), accuracy=ratio(sum(scores), len(scores)))


def score_ocrvqa(records: list[dict]) -> dict:
    """OCR-VQA accuracy: stripped, case-insensitive exact match, best over gold answers.

    Args:
        records: dicts with `prediction` and `answer` (str or list).

    Returns:
        `accuracy`, `n`.
    """
    rule = "exact_match"
    scores = _score_each(records, rule, exact_match)
    return result(rule, "1", len(records), accuracy=ratio(sum(scores), len(scores)))


def score_anls(records: list[dict]) -> dict:
    """ANLS (threshold 0.5) for DocVQA and InfographicVQA.

    Source: the official DocVQA/InfographicVQA evaluation script, via `normalize.anls`.

    Args:
        records: dicts with `prediction` and `answers` (list of gold strings).

    Returns:
        `anls` (mean over questions), `n`.
    """
    rule = "anls"
    scores = _score_each(records, rule, anls)
    return result(rule, "1", len(records), anls=ratio(sum(scores), len(scores)))


def score_chartqa(records: list[dict]) -> dict:
    """ChartQA relaxed accuracy (5 % relative to the gold value), split human/augmented.

    Source: pix2struct `relaxed_correctness` via `normalize.relaxed_correctness`, applied as
    InternVL's `evaluate_relaxed_accuracy` does (prediction stripped, best over gold
    answers) but with the gold value as the reference.

    Args:
        records: dicts with `prediction`, `answer` (str or list) and optionally `split`
            ("human" / "augmented").

    Returns:
        `relaxed_accuracy`, `per_split`, `n`.
    """
    rule = "relaxed_accuracy"

    def correct(prediction: str, golds: list[str]) -> float:
        return float(any(relaxed_correctness(g, prediction.strip()) for g in golds))

    scores = _score_each(records, rule, correct)
    return result(
        rule, "1", len(records),
        relaxed_accuracy=ratio(sum(scores), len(scores)),
        per_split=group_mean([r.get("split") for r in records], scores),
    )


def score_ocrbench(records: list[dict]) -> dict:
    """OCRBench: containment per question, summed per category and overall (out of 1000).

    Source: Yuliang-Liu/MultimodalOCR OCRBench scoring script, via `normalize.ocrbench_match`.

    Args:
        records: dicts with `prediction`, `answer` (str or list), `category` (the question
            type, e.g. "Doc-oriented VQA") and `dataset_name` (e.g. "HME100k").

    Returns:
        `final_score` (number correct; 1000 is perfect on the full set), `text_recognition`
        (correct in the six recognition types), `accuracy`, `per_category`, `n`.
    """
    rule = "ocrbench_containment"
    scores = [
        ocrbench_match(
            str(r.get("prediction", "")), _gold(r, i, rule), str(r.get("dataset_name", ""))
        )
        for i, r in enumerate(records)
    ]
    categories = [r.get("category") for r in records]
    recognition = sum(s for s, c in zip(scores, categories) if c in OCRBENCH_RECOGNITION)
    return result(
        rule, "1", len(records),
        final_score=int(sum(scores)),
        text_recognition=int(recognition),
        accuracy=ratio(sum(scores), len(scores)),
        per_category=group_mean(categories, scores),
    )
