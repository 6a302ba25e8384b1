"""Multiple-choice scorers: MMBench circular evaluation, plain MCQ accuracy, MMMU, MMVP pairs.

Each takes a list of answer records and returns the figures plus the rule name, version and counts.
"""

from __future__ import annotations

from tilevl.errors import InputError
from tilevl.eval.metrics.choices import (
    eval_open,
    extract_choice,
    parse_mmmu_choice,
    parse_open_response,
)
from tilevl.eval.metrics.records import all_correct_rate, group_mean, ratio, require, result

# MMBench stores the k-th rotation of question q at index q + k * 1_000_000
# (open-compass/VLMEvalKit vlmeval/dataset/image_mcq.py, circular evaluation).
CIRCULAR_STRIDE = 1_000_000


def _gold_letter(record: dict, position: int, rule: str) -> str:
    options = require(record, "options", position, rule)
    answer = str(require(record, "answer", position, rule)).strip()
    if answer not in options:
        raise InputError(
            f"{rule}: record #{position} answer {answer!r} is not one of its options "
            f"{sorted(options)}"
        )
    return answer


def _judge(record: dict, position: int, rule: str) -> tuple[bool, bool]:
    """`(correct, unparsed)` for one MCQ record."""
    gold = _gold_letter(record, position, rule)
    choice = extract_choice(record.get("prediction", ""), record["options"])
    return choice == gold, choice is None


def score_mmbench(records: list[dict]) -> dict:
    """MMBench with circular evaluation (a question counts only if every rotation is right).

    Source: open-compass/VLMEvalKit `mcq_circular_eval` / `mcq_vanilla_eval`
    (vlmeval/dataset/utils/multiple_choice.py) with the rule-based `can_infer` extraction
    (`extract_choice`). Rotations share `index % 1_000_000`; the copy with index < 1_000_000
    is the original and supplies the category. A question counts only when every rotation
    reads as its gold letter: a reply read as "Z" (none of the options) is wrong; an
    unreadable one is wrong too, unless the runner's judge replaced it beforehand (upstream
    asks its judge for exactly these).

    Args:
        records: dicts with `index` (int), `prediction`, `answer` (a letter), `options`
            (letter → text), `category`, and optionally `l2_category`.

    Returns:
        `accuracy` (circular), `vanilla_accuracy` (originals only), `per_category` and
        `per_l2_category` (circular, `{name: {"score", "n"}}`), `n_questions`, `unparsed`
        (records no rule could read; "Z" is read), `incomplete` (questions with fewer copies than options), `n`.
    """
    rule = "mmbench_circular"
    groups: dict[int, list[tuple[int, dict, bool]]] = {}
    unparsed = 0
    for i, record in enumerate(records):
        index = int(require(record, "index", i, rule))
        correct, missed = _judge(record, i, rule)
        unparsed += missed
        groups.setdefault(index % CIRCULAR_STRIDE, []).append((index, record, correct))

    keys, circular, vanilla, categories, l2 = [], [], [], [], []
    incomplete = 0
    for key in sorted(groups):
        copies = sorted(groups[key], key=lambda item: item[0])
        original = copies[0][1]  # the lowest index: the unrotated question when present
        keys.append(key)
        circular.append(all(c for _, _, c in copies))
        if copies[0][0] < CIRCULAR_STRIDE:
            vanilla.append(copies[0][2])
        categories.append(original.get("category"))
        l2.append(original.get("l2_category"))
        incomplete += len(copies) < len(original["options"])

    return result(
        rule, "1", len(records),
        accuracy=ratio(sum(circular), len(circular)),
        vanilla_accuracy=ratio(sum(vanilla), len(vanilla)),
        per_category=group_mean(categories, circular),
        per_l2_category=group_mean(l2, circular),
        n_questions=len(keys),
        unparsed=unparsed,
        incomplete=incomplete,
    )


def score_mcq(records: list[dict]) -> dict:
    """Plain multiple-choice accuracy with a per-category breakdown.

    For ScienceQA-IMG, AI2D, SEED-Image, MMStar and similar single-answer benchmarks
    (VLMEvalKit's `mcq_vanilla_eval` with rule-based extraction). Unparsable answers count
    as wrong and are reported.

    Args:
        records: dicts with `prediction`, `answer` (a letter), `options` (letter → text),
            and optionally `category`.

    Returns:
        `accuracy`, `per_category`, `unparsed`, `n`.
    """
    rule = "mcq_accuracy"
    correct, categories, unparsed = [], [], 0
    for i, record in enumerate(records):
        ok, missed = _judge(record, i, rule)
        correct.append(ok)
        unparsed += missed
        categories.append(record.get("category"))
    return result(
        rule, "1", len(records),
        accuracy=ratio(sum(correct), len(correct)),
        per_category=group_mean(categories, correct),
        unparsed=unparsed,
    )


def score_mmmu(records: list[dict]) -> dict:
    """MMMU accuracy with MMMU's own parsers for multiple-choice and open questions.

    Source: MMMU-Benchmark/MMMU eval/eval_utils.py (`parse_multi_choice_response`,
    `parse_open_response`, `eval_multi_choice`, `eval_open`). The multiple-choice fallback
    guess is seeded per question (see `parse_mmmu_choice`), so scores are reproducible but
    can differ from an upstream run on unparsable answers; `guessed` counts those.

    Args:
        records: dicts with `prediction`, `answer` (letter, open answer, or list of either),
            `question_type` ("multiple-choice" or "open"; default "multiple-choice"),
            `options` (letter → text; multiple-choice only), optionally `id` (seeds the
            fallback) and `category` (e.g. the subject).

    Returns:
        `accuracy`, `per_category`, `guessed`, `n`.
    """
    rule = "mmmu"
    correct, categories, guessed = [], [], 0
    for i, record in enumerate(records):
        gold = require(record, "answer", i, rule)
        prediction = str(record.get("prediction", ""))
        if record.get("question_type", "multiple-choice") == "multiple-choice":
            options = require(record, "options", i, rule)
            letter, guess = parse_mmmu_choice(
                prediction, list(options), options, seed=str(record.get("id", i))
            )
            guessed += guess
            ok = letter in gold if isinstance(gold, list) else letter == gold
        else:
            ok = eval_open(gold, parse_open_response(prediction))
        correct.append(ok)
        categories.append(record.get("category"))
    return result(
        rule, "1", len(records),
        accuracy=ratio(sum(correct), len(correct)),
        per_category=group_mean(categories, correct),
        guessed=guessed,
    )


def score_mmvp(records: list[dict]) -> dict:
    """MMVP pair accuracy: the two questions of a pair (consecutive indices) must both be right.

    Source: InternVL internvl_chat/eval/mmvp/evaluate_mmvp.py (counts a pair when both of
    two consecutive answers match; MMVP's 300 questions form 150 pairs 1–2, 3–4, …). We
    sort by `index` first so sharded or shuffled outputs pair correctly, and extract the
    letter with `extract_choice` instead of InternVL's first-character rule.

    Args:
        records: dicts with `index` (sortable), `prediction`, `answer` (a letter),
            `options` (letter → text). The count must be even.

    Returns:
        `accuracy` (pairs), `question_accuracy`, `n_pairs`, `unparsed`, `n`.
    """
    rule = "mmvp_pairs"
    if len(records) % 2:
        raise InputError(f"{rule}: MMVP pairs need an even number of records, got {len(records)}")
    order = sorted(range(len(records)), key=lambda i: require(records[i], "index", i, rule))
    correct, unparsed = [], 0
    for i in order:
        ok, missed = _judge(records[i], i, rule)
        correct.append(ok)
        unparsed += missed
    pair_rate, n_pairs = all_correct_rate([rank // 2 for rank in range(len(order))], correct)
    return result(
        rule, "1", len(records),
        accuracy=pair_rate,
        question_accuracy=ratio(sum(correct), len(correct)),
        n_pairs=n_pairs,
        unparsed=unparsed,
    )
