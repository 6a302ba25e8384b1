"""Yes/no benchmarks: answer parsing per official script, MME, POPE and HallusionBench scores.

Each benchmark reads "yes"/"no" out of free text by its own rule; the parser takes the rule's name.
"""

from __future__ import annotations

from tilevl.errors import InputError
from tilevl.eval.metrics.normalize import EVALAI_PUNCTUATION, process_vqa_punctuation
from tilevl.eval.metrics.records import all_correct_rate, ratio, require, result

# MME eval_tool/calculation.py `eval_type_dict`: the official split of the 14 subtasks.
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
                  "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
                 "code_reasoning")
_MME_NAMES = {name.lower(): name for name in MME_PERCEPTION + MME_COGNITION}


def parse_yes_no(text: str, style: str = "pope") -> str | None:
    """Read "yes" or "no" out of an answer with one benchmark's official rule.

    - "pope" (POPE evaluate.py, InternVL eval/pope/eval_pope.py): keep the text before the
      first ".", drop commas, split on spaces; "No", "no" or "not" among the words means
      "no", anything else "yes" (never None). "Yes." → yes; "There is no dog." → no. The
      word test is case-sensitive, as upstream: "NO" reads as yes.
    - "mme" (MME eval_tool/calculation.py `parse_pred_ans`): lower-case; exactly "yes"/"no",
      else "yes" or "no" inside the first 4 characters ("yes, it is" → yes), else None
      ("There is no dog." → None). We strip surrounding whitespace first.
    - "vlmevalkit" (VLMEvalKit `YOrN_Extraction`, used for HallusionBench): lower-case,
      punctuation-process, split; "yes" without "no" → yes, "no" without "yes" → no, else
      None.

    Args:
        text: the model's answer.
        style: "pope", "mme" or "vlmevalkit".

    Returns:
        "yes", "no", or None when the rule cannot tell (count as wrong).
    """
    text = "" if text is None else str(text)
    if style == "pope":
        if "." in text:
            text = text.split(".")[0]
        words = text.replace(",", "").split(" ")
        return "no" if ("No" in words or "not" in words or "no" in words) else "yes"
    if style == "mme":
        text = text.strip().lower()
        if text in ("yes", "no"):
            return text
        prefix = text[:4]
        if "yes" in prefix:
            return "yes"
        if "no" in prefix:
            return "no"
        return None
    if style == "vlmevalkit":
        words = process_vqa_punctuation(text.lower(), EVALAI_PUNCTUATION).split()
        if "yes" in words and "no" not in words:
            return "yes"
        if "no" in words and "yes" not in words:
            return "no"
        return None
    raise InputError(f"parse_yes_no: unknown style {style!r}; use 'pope', 'mme' or 'vlmevalkit'")


def _gold_yes_no(record: dict, position: int, rule: str) -> str:
    # HallusionBench ships "1"/"0", VLMEvalKit's TSVs "Yes"/"No".
    raw = str(require(record, "answer", position, rule)).strip().lower()
    mapped = {"yes": "yes", "1": "yes", "true": "yes", "no": "no", "0": "no", "false": "no"}
    if raw not in mapped:
        raise InputError(f"{rule}: record #{position} answer {raw!r} is not yes/no (or 1/0)")
    return mapped[raw]


def score_mme(records: list[dict]) -> dict:
    """MME: per subtask acc and acc+ (both questions of an image right), ×100 and summed.

    Source: MME eval_tool/calculation.py: a subtask's score is `100·acc + 100·acc+`
    (0–200); perception sums the 10 perception subtasks (max 2000), cognition the 4
    cognition subtasks (max 800). Unparsable answers count as wrong.

    Args:
        records: dicts with `category` (subtask name, e.g. "existence", "OCR"), `image`
            (image id; its two questions share it), `prediction`, `answer` ("Yes"/"No").

    Returns:
        `perception`, `cognition`, `per_subtask` (`{name: {"acc", "acc_plus", "score",
        "n"}}`, acc and acc_plus as fractions), `unparsed`, `n`.
    """
    rule = "mme"
    by_task: dict[str, list[tuple[str, bool]]] = {}
    unparsed = 0
    for i, record in enumerate(records):
        raw_task = str(require(record, "category", i, rule))
        task = _MME_NAMES.get(raw_task.lower(), raw_task)
        pred = parse_yes_no(record.get("prediction", ""), "mme")
        unparsed += pred is None
        ok = pred == _gold_yes_no(record, i, rule)
        by_task.setdefault(task, []).append((str(require(record, "image", i, rule)), ok))

    per_subtask = {}
    for task in sorted(by_task):
        images = [image for image, _ in by_task[task]]
        correct = [ok for _, ok in by_task[task]]
        acc = ratio(sum(correct), len(correct))
        acc_plus, _ = all_correct_rate(images, correct)
        per_subtask[task] = {"acc": acc, "acc_plus": acc_plus,
                             "score": 100 * acc + 100 * acc_plus, "n": len(correct)}
    return result(
        rule, "1", len(records),
        perception=sum(per_subtask[t]["score"] for t in MME_PERCEPTION if t in per_subtask),
        cognition=sum(per_subtask[t]["score"] for t in MME_COGNITION if t in per_subtask),
        per_subtask=per_subtask,
        unparsed=unparsed,
    )


def _binary_metrics(preds: list[str], golds: list[str]) -> dict:
    # POPE counts "yes" as the positive class; empty denominators give 0 (VLMEvalKit).
    tp = sum(p == "yes" and g == "yes" for p, g in zip(preds, golds))
    fp = sum(p == "yes" and g == "no" for p, g in zip(preds, golds))
    tn = sum(p == "no" and g == "no" for p, g in zip(preds, golds))
    fn = sum(p == "no" and g == "yes" for p, g in zip(preds, golds))
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": ratio(tp + tn, len(preds)), "precision": precision, "recall": recall,
            "f1": f1, "yes_ratio": ratio(preds.count("yes"), len(preds)), "n": len(preds),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def score_pope(records: list[dict]) -> dict:
    """POPE: accuracy, precision, recall, F1 and yes-ratio, overall and per split.

    Source: POPE evaluate.py as copied in InternVL internvl_chat/eval/pope/eval_pope.py
    (answers parsed with `parse_yes_no(style="pope")`, "yes" positive). InternVL's headline
    number is the mean F1 over the splits, reported as `f1_mean_over_splits`.

    Args:
        records: dicts with `prediction`, `answer` ("yes"/"no") and the split ("random",
            "popular" or "adversarial") as `split` (MiniBench's and LLaVA's POPE files) or
            `category` (InternVL's question files); `split` wins when both are given.

    Returns:
        The overall figures (`accuracy`, `precision`, `recall`, `f1`, `yes_ratio`, confusion
        counts), `per_split` (the same per split), `f1_mean_over_splits` (the overall F1
        when no record names a split: the file is one split), `n`.
    """
    rule = "pope"
    preds, golds, splits = [], [], []
    for i, record in enumerate(records):
        preds.append(parse_yes_no(record.get("prediction", ""), "pope"))
        golds.append(_gold_yes_no(record, i, rule))
        splits.append(record.get("split", record.get("category")))
    per_split = {}
    for split in sorted({s for s in splits if s is not None}, key=str):
        chosen = [k for k, s in enumerate(splits) if s == split]
        per_split[split] = _binary_metrics([preds[k] for k in chosen], [golds[k] for k in chosen])
    overall = _binary_metrics(preds, golds)
    overall.pop("n")
    f1s = [m["f1"] for m in per_split.values()] or [overall["f1"]]
    return result(rule, "1", len(records), **overall, per_split=per_split,
                  f1_mean_over_splits=ratio(sum(f1s), len(f1s)))


def _no_figure(record: dict) -> bool:
    # HallusionBench marks a visual-supplement question asked without its figure with
    # figure_id 0 (visual_input 0); in a TSV the id may arrive as "0" or 0.0.
    if str(record.get("category")) != "VS":
        return False
    try:
        return float(str(record.get("figure_id")).strip()) == 0
    except ValueError:
        return False


def score_hallusionbench(records: list[dict]) -> dict:
    """HallusionBench question (aAcc), figure (fAcc) and question-pair (qAcc) accuracy.

    Source: tianyi-lab/HallusionBench utils.py (`get_eval_all`, `get_eval_fig`,
    `get_eval_pair_all`) with evaluation.py's leaderboard figures: fAcc groups by (category,
    subcategory, set_id, figure_id) and leaves out the visual-supplement (VS) questions
    asked with no figure (figure_id 0); qAcc groups by (category, subcategory, set_id,
    question_id), no-figure questions included; a group counts only if all its questions
    are right. VLMEvalKit's `Hallusion_rating` keeps the no-figure VS questions in fAcc as
    one more "figure" per set; that reading is `fAcc_vlmevalkit`. Answers are read with
    the rule-based `YOrN_Extraction` (no GPT judge); unparsable ones count as wrong.

    Args:
        records: dicts with `prediction`, `answer` ("yes"/"no" or "1"/"0"), `category`
            ("VD"/"VS"), `subcategory`, `set_id`, `figure_id`, `question_id`.

    Returns:
        `aAcc`, `fAcc`, `qAcc` (fractions), `fAcc_vlmevalkit`, `n_figures`,
        `n_no_figure` (VS questions left out of fAcc), `n_questions`, `unparsed`, `n`.
    """
    rule = "hallusionbench"
    correct, figures, questions, unparsed, pictured = [], [], [], 0, []
    for i, record in enumerate(records):
        pred = parse_yes_no(record.get("prediction", ""), "vlmevalkit")
        unparsed += pred is None
        correct.append(pred == _gold_yes_no(record, i, rule))
        base = (record.get("category"), record.get("subcategory"),
                str(require(record, "set_id", i, rule)))
        figures.append(base + (str(require(record, "figure_id", i, rule)),))
        questions.append(base + (str(require(record, "question_id", i, rule)),))
        pictured.append(not _no_figure(record))
    f_acc, n_figures = all_correct_rate(
        [f for f, keep in zip(figures, pictured) if keep],
        [c for c, keep in zip(correct, pictured) if keep])
    f_acc_all, _ = all_correct_rate(figures, correct)
    q_acc, n_questions = all_correct_rate(questions, correct)
    return result(rule, "2", len(records), aAcc=ratio(sum(correct), len(correct)),
                  fAcc=f_acc, qAcc=q_acc, fAcc_vlmevalkit=f_acc_all, n_figures=n_figures,
                  n_no_figure=pictured.count(False), n_questions=n_questions,
                  unparsed=unparsed)
