"""Multiple-choice extraction and scorers: MMBench circular, plain MCQ, MMMU parsers, MMVP pairs.

Every expected figure is worked out by hand in the test.
"""

import pytest

from tilevl.errors import InputError
from tilevl.eval.metrics import (
    eval_open,
    extract_choice,
    parse_mmmu_choice,
    parse_multi_choice_response,
    parse_open_response,
    score_mcq,
    score_mmbench,
    score_mmmu,
    score_mmvp,
)

OPTIONS = {"A": "cat", "B": "dog", "C": "bird"}
FOUR = {**OPTIONS, "D": "fish"}

# VLMEvalKit's `can_infer` (vlmeval/utils/matching_util.py at e8e78f0), case by case; each
# row was also run through that upstream function and gave the same answer. None is
# upstream's False (unreadable: judge, else wrong); "Z" reads as "none of the options".
CAN_INFER_TABLE = [
    ("B", OPTIONS, "B"), ("B.", OPTIONS, "B"), ("(B)", OPTIONS, "B"), ("**B**", OPTIONS, "B"),
    ("The answer is B", OPTIONS, "B"), ("B: dog", OPTIONS, "B"), ("Answer: [B]", OPTIONS, "B"),
    ("dog", OPTIONS, "B"), ("It is a dog.", OPTIONS, "B"),
    # a lone letter counts only among the last four tokens
    ("B because the animal barks", OPTIONS, None),
    ("B because it barks", OPTIONS, "B"),
    ("Looking at the picture, the animal is clearly B", OPTIONS, "B"),
    # "answer is X": any case, A–D only, and also when the letter stands early
    ("the answer is b", OPTIONS, "B"),
    ("The correct answer is **C**. Here's why: birds fly over the lake every morning",
     OPTIONS, "C"),
    ("A or B, the answer is B", OPTIONS, "B"),
    ("the answer is dog", FOUR, "D"),  # upstream's regex has no word boundary: "d" of "dog"
    ("the answer is e", {**FOUR, "E": "eel"}, None),
    # option texts: exactly one, and only in replies at most twice the options' length
    ("cat and dog", OPTIONS, None),
    ("I think it is a dog because it barks", OPTIONS, None),
    ("a bird", OPTIONS, "C"), ("A cat", OPTIONS, "A"),  # "A" is option A (VERBOSE unset)
    ("A or B", OPTIONS, None), ("", OPTIONS, None), ("E", OPTIONS, None),
    # read, but none of the options
    ("Cannot determine the answer", OPTIONS, "Z"), ("Z", OPTIONS, "Z"),
    ("None of these (Z)", OPTIONS, "Z"),
    # an API failure is never read as a letter, only as option text
    ("Failed to obtain answer via API", OPTIONS, None),
    ("Failed to obtain answer via API: dog", {"A": "cat", "B": "dog", "C": "long bird name"}, "B"),
]


@pytest.mark.parametrize(("text", "options", "expected"), CAN_INFER_TABLE)
def test_extract_choice_follows_vlmevalkit_can_infer(text, options, expected):
    assert extract_choice(text, options) == expected


def _mmb(index, prediction, answer, category="attr", l2="perception"):
    return {"index": index, "prediction": prediction, "answer": answer,
            "options": {"A": "red", "B": "blue"}, "category": category, "l2_category": l2}


def test_mmbench_circular_one_rotation_wrong():
    records = [
        # question 1: both rotations right
        _mmb(1, "A", "A"), _mmb(1_000_001, "B", "B"),
        # question 2: original right, rotation wrong → fails circular, passes vanilla
        _mmb(2, "B", "B", category="count"), _mmb(1_000_002, "B", "A", category="count"),
        # question 3: original unparsable (wrong), rotation right
        _mmb(3, "no idea", "A", l2="reasoning"), _mmb(1_000_003, "B", "B", l2="reasoning"),
    ]
    out = score_mmbench(records)
    assert out["rule"] == "mmbench_circular" and out["rule_version"]
    assert out["n"] == 6 and out["n_questions"] == 3
    assert out["accuracy"] == pytest.approx(1 / 3)          # only question 1 survives
    assert out["vanilla_accuracy"] == pytest.approx(2 / 3)  # originals of q1 and q2 right
    assert out["unparsed"] == 1
    assert out["incomplete"] == 0
    assert out["per_category"] == {"attr": {"score": 0.5, "n": 2}, "count": {"score": 0.0, "n": 1}}
    assert out["per_l2_category"]["perception"] == {"score": 0.5, "n": 2}
    assert out["per_l2_category"]["reasoning"] == {"score": 0.0, "n": 1}


def test_mmbench_circular_reads_every_rotation_with_can_infer():
    records = [
        # q1: "answer is b" in lower case reads as B in the rotation
        _mmb(1, "A", "A"), _mmb(1_000_001, "I think the answer is b", "B"),
        # q2: the letter opens a long reply, which is also too long for text matching
        _mmb(2, "A", "A"), _mmb(1_000_002, "B because the star is blue like the sky", "B"),
        # q3: a refusal is read as Z (none of the options): wrong, but not unreadable
        _mmb(3, "Cannot determine the answer", "A"), _mmb(1_000_003, "B", "B"),
    ]
    out = score_mmbench(records)
    assert out["accuracy"] == pytest.approx(1 / 3)
    assert out["vanilla_accuracy"] == pytest.approx(2 / 3)
    assert out["unparsed"] == 1  # only q2's rotation goes to a judge


def test_mmbench_order_does_not_matter_and_missing_copies_are_counted():
    records = [_mmb(1_000_001, "B", "B"), _mmb(1, "A", "A"), _mmb(5, "A", "A")]
    out = score_mmbench(records)
    assert out["accuracy"] == 1.0
    assert out["incomplete"] == 1  # question 5 has 1 copy for 2 options


def test_mcq_accuracy_per_category_and_errors():
    records = [
        {"prediction": "A", "answer": "A", "options": OPTIONS, "category": "x"},
        {"prediction": "(C) bird", "answer": "C", "options": OPTIONS, "category": "x"},
        {"prediction": "???", "answer": "B", "options": OPTIONS, "category": "y"},
    ]
    out = score_mcq(records)
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["per_category"] == {"x": {"score": 1.0, "n": 2}, "y": {"score": 0.0, "n": 1}}
    assert out["unparsed"] == 1
    with pytest.raises(InputError, match=r"record #0 .*'options'"):
        score_mcq([{"prediction": "A", "answer": "A"}])
    with pytest.raises(InputError, match="not one of its options"):
        score_mcq([{"prediction": "A", "answer": "E", "options": OPTIONS}])


def test_mmmu_multi_choice_parser():
    choices = ["A", "B", "C", "D"]
    index2ans = {"A": "green pear", "B": "red apple", "C": "x", "D": "y"}
    assert parse_multi_choice_response("(B)", choices, index2ans) == "B"
    assert parse_multi_choice_response("B.", choices, index2ans) == "B"
    # two bracketed candidates: the one occurring last wins
    assert parse_multi_choice_response("Not (A), the answer is (C).", choices, index2ans) == "C"
    # option text is only tried for responses longer than 5 words
    long_answer = "I think it shows the red apple here"
    assert parse_multi_choice_response(long_answer, choices, index2ans) == "B"
    letter, guessed = parse_mmmu_choice("red apple", choices, index2ans, seed="q1")
    assert guessed and letter in choices
    # the fallback guess is reproducible for the same question
    assert parse_mmmu_choice("red apple", choices, index2ans, seed="q1") == (letter, True)


def test_mmmu_open_parser():
    assert 3.5 in parse_open_response("The answer is 3.50")
    assert eval_open("3.5", parse_open_response("The answer is 3.50"))
    assert eval_open(["Paris", "paris, france"], parse_open_response("So it is Paris."))
    assert not eval_open("4", parse_open_response("The result is 5"))
    assert eval_open("1,000", parse_open_response("total = 1000"))


def test_score_mmmu_mixed():
    records = [
        {"id": "a", "prediction": "(A)", "answer": "A", "options": {"A": "1", "B": "2"}},
        {"id": "b", "prediction": "The answer is 7", "answer": "7", "question_type": "open"},
        {"id": "c", "prediction": "(B)", "answer": ["A", "C"],
         "options": {"A": "1", "B": "2", "C": "3"}},
    ]
    out = score_mmmu(records)
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["guessed"] == 0


def test_mmvp_pairs():
    opts = {"A": "open", "B": "closed"}
    records = [
        {"index": 2, "prediction": "B", "answer": "B", "options": opts},
        {"index": 1, "prediction": "A", "answer": "A", "options": opts},  # pair (1, 2): both right
        {"index": 3, "prediction": "A", "answer": "A", "options": opts},
        {"index": 4, "prediction": "A", "answer": "B", "options": opts},  # pair (3, 4): one wrong
    ]
    out = score_mmvp(records)
    assert out["accuracy"] == 0.5 and out["n_pairs"] == 2
    assert out["question_accuracy"] == 0.75
    with pytest.raises(InputError, match="even number"):
        score_mmvp(records[:3])
