"""Answer normalisation and string similarity, as the benchmarks' official scripts define them.

VQA answer processing, Levenshtein/ANLS, ChartQA relaxed correctness, exact match, containment.
"""

from __future__ import annotations

import re


def _answers(answers) -> list[str]:
    # A bare string is one gold answer, not a list of characters.
    if isinstance(answers, (list, tuple)):
        return [str(a) for a in answers]
    return [str(answers)]


# --- VQA answer processing ------------------------------------------------------------
# Source: GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py (VQAEval.__init__,
# processPunctuation, processDigitArticle). The tables are facts of the rule, so they are
# reproduced as published, including the odd entries (curly apostrophes, "somebody’d").
_CONTRACTIONS_TEXT = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn’t’ve
couldnt’ve couldn’t’ve|didnt didn’t|doesnt doesn’t|dont don’t|hadnt hadn’t|hadnt’ve hadn’t’ve
hadn'tve hadn’t’ve|hasnt hasn’t|havent haven’t|hed he’d|hed’ve he’d’ve|he’dve he’d’ve|hes he’s
howd how’d|howll how’ll|hows how’s|Id’ve I’d’ve|I’dve I’d’ve|Im I’m|Ive I’ve|isnt isn’t|itd it’d
itd’ve it’d’ve|it’dve it’d’ve|itll it’ll|let’s let’s|maam ma’am|mightnt mightn’t
mightnt’ve mightn’t’ve|mightn’tve mightn’t’ve|mightve might’ve|mustnt mustn’t|mustve must’ve
neednt needn’t|notve not’ve|oclock o’clock|oughtnt oughtn’t|ow’s’at ’ow’s’at|’ows’at ’ow’s’at
’ow’sat ’ow’s’at|shant shan’t|shed’ve she’d’ve|she’dve she’d’ve|she’s she’s|shouldve should’ve
shouldnt shouldn’t|shouldnt’ve shouldn’t’ve|shouldn’tve shouldn’t’ve|somebody’d somebodyd
somebodyd’ve somebody’d’ve|somebody’dve somebody’d’ve|somebodyll somebody’ll
somebodys somebody’s|someoned someone’d|someoned’ve someone’d’ve|someone’dve someone’d’ve
someonell someone’ll|someones someone’s|somethingd something’d|somethingd’ve something’d’ve
something’dve something’d’ve|somethingll something’ll|thats that’s|thered there’d
thered’ve there’d’ve|there’dve there’d’ve|therere there’re|theres there’s|theyd they’d
theyd’ve they’d’ve|they’dve they’d’ve|theyll they’ll|theyre they’re|theyve they’ve|twas ’twas
wasnt wasn’t|wed’ve we’d’ve|we’dve we’d’ve|weve we've|werent weren’t|whatll what’ll
whatre what’re|whats what’s|whatve what’ve|whens when’s|whered where’d|wheres where's
whereve where’ve|whod who’d|whod’ve who’d’ve|who’dve who’d’ve|wholl who’ll|whos who’s
whove who've|whyll why’ll|whyre why’re|whys why’s|wont won’t|wouldve would’ve|wouldnt wouldn’t
wouldnt’ve wouldn’t’ve|wouldn’tve wouldn’t’ve|yall y’all|yall’ll y’all’ll|y’allll y’all’ll
yall’d’ve y’all’d’ve|y’alld’ve y’all’d’ve|y’all’dve y’all’d’ve|youd you’d|youd’ve you’d’ve
you’dve you’d’ve|youll you’ll|youre you’re|youve you’ve
"""
VQA_CONTRACTIONS: dict[str, str] = dict(
    pair.split(" ") for pair in _CONTRACTIONS_TEXT.replace("\n", "|").split("|") if pair
)
VQA_MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
VQA_ARTICLES = ("a", "an", "the")
VQA_PUNCTUATION = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_",
                   ">", "<", "@", "`", ",", "?")
# VLMEvalKit's `process_punctuation` (vlmeval/dataset/utils/vqa_eval.py, from the EvalAI
# processor): no ":" or "'", but "{", "}", "-" and "!".
EVALAI_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                      ">", "<", "@", "`", ",", "?", "!")
# The official lookbehind is misspelt as a lookahead "(?!<=\d)"; it is kept as published,
# so a period is removed unless a digit follows it ("2.5" keeps its point, "cat." loses it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_vqa_punctuation(text: str, marks: tuple[str, ...] = VQA_PUNCTUATION) -> str:
    """Official VQA punctuation handling.

    A punctuation mark next to a space is deleted, otherwise it becomes a space ("t/shirt"
    → "t shirt"); but if the text contains a comma between digits ("1,000") every mark is
    deleted, so numbers keep one token ("1000").

    Args:
        text: a raw answer.
        marks: the punctuation list (the official one unless a caller copies another tool).

    Returns:
        The answer with punctuation removed or replaced.
    """
    out = text
    number_comma = _COMMA_STRIP.search(text) is not None
    for mark in marks:
        if (mark + " " in text or " " + mark in text) or number_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    # Upstream passes re.UNICODE as the `count` argument (at most 32 periods removed); we
    # remove them all, which differs only for answers with more than 32 periods.
    return _PERIOD_STRIP.sub("", out)


def process_vqa_digit_article(text: str) -> str:
    """Official VQA word processing: lower-case, number words → digits, drop articles, contractions.

    Args:
        text: an answer after punctuation processing.

    Returns:
        The normalised answer, words joined by single spaces.
    """
    words = [VQA_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in VQA_ARTICLES]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(text: str) -> str:
    """The full official VQA answer normalisation ("Ten dogs." → "10 dogs").

    Args:
        text: a raw answer (prediction or human answer).

    Returns:
        The normalised answer.
    """
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    return process_vqa_digit_article(process_vqa_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA soft accuracy of one prediction against the human answers.

    With 10 answers this is the official rule: for each of the 10 leave-one-out subsets of 9
    answers, `min(#matches / 3, 1)`, averaged. So a prediction matching m of the 10 humans
    scores 0.3, 0.6, 0.9, 1.0 for m = 1, 2, 3, ≥4. Both sides are normalised with
    `normalize_vqa_answer` (upstream normalises human answers only when they disagree,
    because the released annotations are already normalised; normalising always makes raw
    answer lists safe and is what InternVL's TextVQA evaluator does).

    Fewer than 10 answers: with n ≥ 2 the same leave-one-out average over the n subsets is
    used (VLMEvalKit's behaviour; scores stay below 1 unless ≥ 4 humans agree); with n = 1
    the score is exact match, since leave-one-out would always give 0.

    Args:
        prediction: the model's answer.
        answers: the human answers.

    Returns:
        The score in [0, 1].
    """
    pred = normalize_vqa_answer(prediction)
    gold = [normalize_vqa_answer(a) for a in _answers(answers)]
    if not gold:
        return 0.0
    if len(gold) == 1:
        return float(pred == gold[0])
    matches = sum(g == pred for g in gold)
    # Leaving out a matching answer leaves matches-1 matches; leaving out another leaves all.
    total = sum(min(1.0, (matches - (g == pred)) / 3.0) for g in gold)
    return total / len(gold)


# --- Levenshtein and ANLS -------------------------------------------------------------
def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; unit costs).

    Args:
        a: first string.
        b: second string.

    Returns:
        The number of edits that turn `a` into `b`.
    """
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, cb in enumerate(b, start=1):
        current = [j]
        for i, ca in enumerate(a, start=1):
            cost = 0 if ca == cb else 1
            current.append(min(previous[i] + 1, current[i - 1] + 1, previous[i - 1] + cost))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one prediction (DocVQA / InfographicVQA).

    Source: the official DocVQA/InfographicVQA script (rrc.cvc.uab.es, used by InternVL as
    eval/vqa/infographicsvqa_eval.py): both strings are stripped, lower-cased and
    whitespace-collapsed for the distance, but the length divisor uses the *raw* strings;
    the score is `1 - min normalised distance` over the gold answers, and 0 when it falls
    below the threshold (exactly 0.5 is kept).

    Args:
        prediction: the model's answer.
        answers: the gold answers.
        threshold: scores below this become 0.

    Returns:
        The ANLS score in [0, 1].
    """
    answers = _answers(answers)
    distances = []
    det = " ".join(str(prediction).strip().lower().split())
    for answer in answers:
        answer = str(answer)
        gold = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(str(prediction).upper()))
        distances.append(0.0 if length == 0 else levenshtein(gold, det) / length)
    if not distances:
        return 0.0
    score = 1.0 - min(distances)
    return 0.0 if score < threshold else score


# --- ChartQA relaxed correctness -------------------------------------------------------
def _to_float(text: str) -> float | None:
    # pix2struct: a trailing "%" divides by 100, anything float() rejects is not a number.
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA relaxed correctness: numbers within 5 % of the *gold* value, else exact match.

    Source: google-research/pix2struct pix2struct/metrics.py `relaxed_correctness` (ChartQA
    paper §5.1). The tolerance is relative to the target (gold); InternVL's
    evaluate_vqa.py calls it as `relaxed_correctness(prediction, gold)`, measuring relative to
    the prediction instead: for a gold 100, "95.2" is 4.8 % off the gold (correct here) but
    5.04 % off itself (wrong there). We keep the published order. A gold value of 0 (falsy)
    falls through to exact string match, as upstream. "45%" parses to 0.45, so "45%" matches
    a gold "0.45" but not a gold "45".

    Args:
        target: the gold answer.
        prediction: the model's answer (stripped by the caller).
        max_relative_change: the tolerance as a fraction of |target|.

    Returns:
        Whether the prediction counts as correct.
    """
    target, prediction = str(target), str(prediction)
    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_change
    return prediction.lower() == target.lower()


# --- exact match and containment ------------------------------------------------------
def exact_match(prediction: str, answers: list[str]) -> float:
    """Case-insensitive exact match after stripping, best over gold answers (OCR-VQA).

    Source: InternVL internvl_chat/eval/vqa/evaluate_vqa.py `evaluate_exact_match_accuracy`.

    Args:
        prediction: the model's answer.
        answers: the gold answers.

    Returns:
        1.0 or 0.0.
    """
    pred = str(prediction).strip().lower()
    return float(any(pred == a.strip().lower() for a in _answers(answers)))


def gqa_match(prediction: str, answers: list[str]) -> float:
    """GQA accuracy: trailing periods dropped, lower-cased, compared with the gold answer.

    Source: InternVL internvl_chat/eval/vqa/convert_gqa_for_eval.py (`rstrip('.').lower()`)
    feeding GQA's official eval.py, which compares strings exactly. We also strip
    surrounding whitespace, which the model's decoded answer normally lacks anyway.

    Args:
        prediction: the model's answer.
        answers: the gold answer(s).

    Returns:
        1.0 or 0.0.
    """
    pred = str(prediction).strip().rstrip(".").lower()
    return float(any(pred == a.strip().lower() for a in _answers(answers)))


def ocrbench_match(prediction: str, answers: list[str], dataset_name: str = "") -> float:
    """OCRBench containment: a gold answer occurring inside the prediction scores 1.

    Source: Yuliang-Liu/MultimodalOCR OCRBench evaluation script. For HME100k (handwritten
    formulae) all spaces are removed and case is kept; otherwise both sides are
    lower-cased and stripped, newlines becoming spaces.

    Args:
        prediction: the model's answer.
        answers: the gold answers.
        dataset_name: the record's source dataset ("HME100k" switches the rule).

    Returns:
        1.0 or 0.0.
    """
    if dataset_name == "HME100k":
        def norm(s: str) -> str:
            return str(s).strip().replace("\n", " ").replace(" ", "")
    else:
        def norm(s: str) -> str:
            return str(s).lower().strip().replace("\n", " ")
    pred = norm(prediction)
    return float(any(norm(a) in pred for a in _answers(answers)))
