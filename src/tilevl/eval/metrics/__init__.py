"""The benchmarks' own scoring rules as pure functions: answer records in, figures out.

Every scorer has the signature `(records: list[dict]) -> dict` and is listed in `SCORERS`.

A record is one model answer: `prediction` (the decoded text) plus the benchmark's gold
fields. What each scorer reads (see its docstring for details):

=================  ==========================================================================
kind               record fields
=================  ==========================================================================
mmbench            index (int; rotations at index + k·1_000_000), prediction, answer (letter),
                   options (letter → text), category, l2_category (optional)
mcq                prediction, answer (letter), options, category (optional)
mmmu               prediction, answer, question_type ("multiple-choice"/"open"), options
                   (multiple-choice), id and category (optional)
mmvp               index, prediction, answer (letter), options; pairs are consecutive indices
vqa                prediction, answers (the 10 human answers), answer_type (optional)
gqa, ocrvqa        prediction, answer (str or list)
docvqa, infovqa    prediction, answers (list)
chartqa            prediction, answer (str or list), split (optional)
ocrbench           prediction, answer (str or list), category (question type), dataset_name
mme                prediction, answer (yes/no), category (subtask), image
pope               prediction, answer (yes/no), category (random/popular/adversarial)
hallusionbench     prediction, answer (yes/no or 1/0), category, subcategory, set_id,
                   figure_id, question_id
refcoco            prediction, bbox (pixels, xyxy), width, height, pred_in_pixels and split
                   (optional)
=================  ==========================================================================

Every result holds `rule`, `rule_version` and `n` (records scored). Rates are fractions in
[0, 1]; the exceptions follow the benchmark's own scale: MME scores (0–200 per subtask,
summed) and OCRBench's `final_score` (number correct, out of 1000).
"""

from __future__ import annotations

from collections.abc import Callable

from tilevl.eval.metrics.choices import (
    eval_open,
    extract_choice,
    parse_mmmu_choice,
    parse_multi_choice_response,
    parse_open_response,
)
from tilevl.eval.metrics.grounding import box_iou, parse_boxes, score_grounding, to_pixels
from tilevl.eval.metrics.mcq import score_mcq, score_mmbench, score_mmmu, score_mmvp
from tilevl.eval.metrics.normalize import (
    anls,
    exact_match,
    gqa_match,
    levenshtein,
    normalize_vqa_answer,
    ocrbench_match,
    relaxed_correctness,
    vqa_accuracy,
)
from tilevl.eval.metrics.vqa import (
    score_anls,
    score_chartqa,
    score_gqa,
    score_ocrbench,
    score_ocrvqa,
    score_vqa,
)
from tilevl.eval.metrics.yesno import parse_yes_no, score_hallusionbench, score_mme, score_pope

SCORERS: dict[str, Callable[[list[dict]], dict]] = {
    "mmbench": score_mmbench,
    "mcq": score_mcq,
    "mmmu": score_mmmu,
    "mmvp": score_mmvp,
    "vqa": score_vqa,
    "gqa": score_gqa,
    "ocrvqa": score_ocrvqa,
    "docvqa": score_anls,
    "infovqa": score_anls,
    "chartqa": score_chartqa,
    "ocrbench": score_ocrbench,
    "mme": score_mme,
    "pope": score_pope,
    "hallusionbench": score_hallusionbench,
    "refcoco": score_grounding,
}


def score(kind: str, records: list[dict]) -> dict:
    """Score records with the rule registered for a benchmark kind.

    Args:
        kind: a key of `SCORERS` (e.g. "mmbench", "pope").
        records: the answer records (fields as listed in this module's docstring).

    Returns:
        The scorer's result dict.

    Raises:
        KeyError: naming the unknown kind and the known ones.
    """
    if kind not in SCORERS:
        known = ", ".join(sorted(SCORERS))
        raise KeyError(f"no scorer for benchmark kind {kind!r}; known: {known}")
    return SCORERS[kind](records)


__all__ = [
    "SCORERS", "anls", "box_iou", "eval_open", "exact_match", "extract_choice", "gqa_match",
    "levenshtein", "normalize_vqa_answer", "ocrbench_match", "parse_boxes", "parse_mmmu_choice",
    "parse_multi_choice_response", "parse_open_response", "parse_yes_no", "relaxed_correctness",
    "score", "score_anls", "score_chartqa", "score_gqa", "score_grounding",
    "score_hallusionbench", "score_mcq", "score_mme", "score_mmbench", "score_mmmu",
    "score_mmvp", "score_ocrbench", "score_ocrvqa", "score_pope", "score_vqa", "to_pixels",
    "vqa_accuracy",
]
