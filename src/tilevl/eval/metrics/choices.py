"""Reading a chosen option (or an open answer) out of free model text.

Generic letter/text extraction for MCQ benchmarks and MMMU's own published parsers.
"""

from __future__ import annotations

import random
import re

# --- generic multiple choice ----------------------------------------------------------
# Source: open-compass/VLMEvalKit vlmeval/utils/matching_util.py (`can_infer_option`,
# `can_infer_text`, `can_infer`): the exact-matching stage that runs before any LLM judge.
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_OPTION_SEPARATORS = ".()[],:;!*#{}"


def _option_letter(prediction: str, letters: list[str]) -> str | None:
    text = prediction
    for char in _OPTION_SEPARATORS:
        text = text.replace(char, " ")
    tokens = text.split()
    found = [letter for letter in letters if letter in tokens]
    # Exactly one option letter standing alone as a token: "B", "B.", "(B)", "B: cat",
    # "The answer is B". Two letters ("A or B") are ambiguous and fall through to text.
    # VLMEvalKit's guard against the article "A" only runs in its verbose mode, so "A cat"
    # reads as option A here too.
    return found[0] if len(found) == 1 else None


def _option_text(prediction: str, options: dict[str, str]) -> str | None:
    lowered = prediction.lower()
    found = [letter for letter, text in options.items() if str(text).lower() in lowered]
    return found[0] if len(found) == 1 else None


def extract_choice(prediction: str, options: dict[str, str]) -> str | None:
    """Which option a free-text answer picks, or None when it cannot be told.

    The option letter is tried first (a single option letter standing as its own token
    after `.()[],:;!*#{}` become spaces), then the option texts (exactly one option text
    contained in the lower-cased answer). Refusals and "Z" (none of the options) give None.

    Args:
        prediction: the model's answer.
        options: option letter → option text, e.g. `{"A": "cat", "B": "dog"}`.

    Returns:
        The chosen letter, or None when unparsable (score it as wrong).
    """
    prediction = "" if prediction is None else str(prediction)
    if any(refusal in prediction for refusal in _REFUSALS):
        return None
    letters = [str(k) for k in options]
    letter = _option_letter(prediction, letters)
    if letter is not None:
        return letter
    return _option_text(prediction, {str(k): v for k, v in options.items()})


# --- MMMU multiple choice -------------------------------------------------------------
# Source: MMMU-Benchmark/MMMU eval/eval_utils.py `parse_multi_choice_response`.
def parse_mmmu_choice(
    response: str, all_choices: list[str], index2ans: dict[str, str], seed: str = ""
) -> tuple[str, bool]:
    """MMMU's multiple-choice parser, also saying whether it had to guess.

    Order, as upstream: "(A)" forms; then " A " as a word; then (only for responses longer
    than 5 words) option texts; with several candidates the one occurring last wins. With
    none, upstream draws `random.choice` from a generator seeded once with 42 for the whole
    run, so its pick depends on every earlier guess. We instead seed a fresh generator with
    the string `"mmmu:" + seed + ":" + response`, which gives the same pick on every run and
    machine for the same question (the caller passes the question id as `seed`).

    Args:
        response: the model's answer.
        all_choices: the option letters, e.g. ["A", "B", "C", "D"].
        index2ans: option letter → option text.
        seed: a per-question string that makes the fallback pick reproducible.

    Returns:
        `(letter, guessed)`; `guessed` is True when the random fallback chose the letter.
    """
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "  # spaces avoid partial matches, as upstream

    index_ans, ans_with_brack = True, False
    candidates = [c for c in all_choices if f"({c})" in response]
    if candidates:
        ans_with_brack = True
    else:
        candidates = [c for c in all_choices if f" {c} " in response]
    if not candidates and len(response.split()) > 5:
        candidates = [i for i, ans in index2ans.items() if str(ans).lower() in response.lower()]
        index_ans = not candidates

    if not candidates:
        rng = random.Random(f"mmmu:{seed}:{response}")
        return rng.choice(list(all_choices)), True
    if len(candidates) == 1:
        return candidates[0], False
    if index_ans and ans_with_brack:
        starts = [response.rfind(f"({c})") for c in candidates]
    elif index_ans:
        starts = [response.rfind(f" {c} ") for c in candidates]
    else:
        starts = [response.lower().rfind(str(index2ans[c]).lower()) for c in candidates]
    # np.argmax semantics: the first candidate among equal maxima.
    return candidates[starts.index(max(starts))], False


def parse_multi_choice_response(
    response: str, all_choices: list[str], index2ans: dict[str, str], seed: str = ""
) -> str:
    """MMMU's `parse_multi_choice_response` with a reproducible fallback (see `parse_mmmu_choice`).

    Args:
        response: the model's answer.
        all_choices: the option letters.
        index2ans: option letter → option text.
        seed: a per-question string for the fallback pick.

    Returns:
        The predicted letter (never None: MMMU always guesses).
    """
    return parse_mmmu_choice(response, all_choices, index2ans, seed)[0]


# --- MMMU open questions --------------------------------------------------------------
# Source: MMMU-Benchmark/MMMU eval/eval_utils.py (`check_is_number`, `normalize_str`,
# `extract_numbers`, `parse_open_response`, `eval_open`).
def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_mmmu_str(text: str) -> list:
    """MMMU normalisation: numbers → float rounded to 2 places; strings lower-cased.

    Args:
        text: an answer fragment.

    Returns:
        A one-element list, or two padded forms for a one-character string (upstream pads
        single letters with a space to avoid trivial substring matches).
    """
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    if len(text) == 1:
        return [" " + text, text + " "]
    return [text]


_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def extract_numbers(text: str) -> list[str]:
    """All numbers in a text: with thousands commas, scientific, then plain (MMMU's order).

    Args:
        text: a response fragment.

    Returns:
        The number strings found.
    """
    return _NUM_COMMAS.findall(text) + _NUM_SCIENTIFIC.findall(text) + _NUM_SIMPLE.findall(text)


_KEY_INDICATORS = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]


def _key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    # Upstream lower-cases before splitting on ". " + capital letter, so in practice only
    # newlines split; kept as published.
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for index, part in enumerate(parts):
        indicators = _KEY_INDICATORS + (["="] if index == len(parts) - 1 else [])
        shortest = None
        for indicator in indicators:
            if indicator in part:
                tail = part.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in [":", ",", ".", "!", "?", ";", ":", "'"]:
            keys.append(shortest)
    return keys or [response]


def parse_open_response(response: str) -> list:
    """MMMU's open-question parser: candidate strings and numbers, normalised.

    Args:
        response: the model's answer.

    Returns:
        The de-duplicated normalised candidates (floats and lower-case strings).
    """
    keys = _key_subresponses(response)
    candidates = list(keys)
    for key in keys:
        candidates.extend(extract_numbers(key))
    normalised = []
    for candidate in candidates:
        normalised.extend(normalize_mmmu_str(candidate))
    return list(dict.fromkeys(normalised))


def eval_open(gold, parsed: list) -> bool:
    """MMMU open-question check: a gold string inside a parsed string, or an equal number.

    Args:
        gold: the gold answer or a list of gold answers.
        parsed: the output of `parse_open_response`.

    Returns:
        Whether the answer counts as correct.
    """
    golds = gold if isinstance(gold, list) else [gold]
    norm_answers = []
    for answer in golds:
        norm_answers.extend(normalize_mmmu_str(str(answer)))
    for pred in parsed:
        if isinstance(pred, str):
            if any(isinstance(a, str) and a in pred for a in norm_answers):
                return True
        elif pred in norm_answers:
            return True
    return False
