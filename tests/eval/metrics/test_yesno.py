"""Yes/no parsing per official script, and the MME, POPE and HallusionBench aggregates.

Every expected figure is worked out by hand in the test.
"""

import pytest

from tilevl.errors import InputError
from tilevl.eval.metrics import parse_yes_no, score_hallusionbench, score_mme, score_pope


@pytest.mark.parametrize(
    ("text", "pope", "mme", "vlmevalkit"),
    [
        ("Yes.", "yes", "yes", "yes"),
        ("yes, it is", "yes", "yes", "yes"),
        ("No", "no", "no", "no"),
        ("There is no dog.", "no", None, "no"),
        ("The dog is not there.", "no", None, None),
        ("NO", "yes", "no", "no"),            # POPE's word test is case-sensitive
        ("Yes and no", "no", "yes", None),
        ("", "yes", None, None),
    ],
)
def test_parse_yes_no_styles(text, pope, mme, vlmevalkit):
    assert parse_yes_no(text, "pope") == pope
    assert parse_yes_no(text, "mme") == mme
    assert parse_yes_no(text, "vlmevalkit") == vlmevalkit


def test_parse_yes_no_unknown_style():
    with pytest.raises(InputError, match="unknown style"):
        parse_yes_no("yes", "nope")


def test_mme_acc_plus_and_totals():
    def rec(task, image, prediction, answer):
        return {"category": task, "image": image, "prediction": prediction, "answer": answer}

    records = [
        rec("existence", "a.jpg", "Yes", "Yes"), rec("existence", "a.jpg", "No", "No"),
        rec("existence", "b.jpg", "Yes.", "Yes"), rec("existence", "b.jpg", "Yes", "No"),
        rec("code_reasoning", "c.png", "yes", "Yes"), rec("code_reasoning", "c.png", "no", "No"),
        rec("ocr", "d.png", "Maybe", "Yes"), rec("ocr", "d.png", "No", "No"),
    ]
    out = score_mme(records)
    # existence: acc 3/4, acc+ 1/2 (only a.jpg fully right) → 75 + 50 = 125
    assert out["per_subtask"]["existence"]["score"] == pytest.approx(125.0)
    # OCR (name matched case-insensitively): acc 1/2, acc+ 0 → 50; "Maybe" is unparsed
    assert out["per_subtask"]["OCR"]["score"] == pytest.approx(50.0)
    assert out["perception"] == pytest.approx(175.0)
    assert out["cognition"] == pytest.approx(200.0)
    assert out["unparsed"] == 1 and out["n"] == 8


def test_pope_per_split():
    def rec(prediction, answer, split):
        return {"prediction": prediction, "answer": answer, "category": split}

    records = [
        # random: parsed yes, no, no, yes against yes, yes, no, no → TP 1, FN 1, TN 1, FP 1
        rec("Yes.", "yes", "random"), rec("No", "yes", "random"),
        rec("There is no dog.", "no", "random"), rec("Yes, there is", "no", "random"),
        # adversarial: both right → precision = recall = F1 = 1
        rec("yes", "yes", "adversarial"), rec("no", "no", "adversarial"),
    ]
    out = score_pope(records)
    rnd = out["per_split"]["random"]
    assert (rnd["tp"], rnd["fp"], rnd["tn"], rnd["fn"]) == (1, 1, 1, 1)
    assert rnd["accuracy"] == rnd["precision"] == rnd["recall"] == rnd["f1"] == 0.5
    assert rnd["yes_ratio"] == 0.5
    assert out["per_split"]["adversarial"]["f1"] == 1.0
    assert out["f1_mean_over_splits"] == pytest.approx(0.75)
    # overall: TP 2, FP 1, TN 2, FN 1
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(2 / 3)
    assert out["yes_ratio"] == pytest.approx(3 / 6)


def test_pope_reads_the_split_field_as_the_readme_example_passes_it():
    # The README's example gave F1 0.0: the scorer read only `category`.
    out = score_pope([{"prediction": "Yes.", "answer": "yes", "split": "random"}])
    assert out["per_split"]["random"]["f1"] == 1.0 and out["f1_mean_over_splits"] == 1.0
    both = score_pope([{"prediction": "No", "answer": "no", "split": "popular",
                        "category": "existence"}, {"prediction": "Yes", "answer": "yes"}])
    assert set(both["per_split"]) == {"popular"}
    unsplit = score_pope([{"prediction": "Yes", "answer": "yes"}, {"prediction": "No", "answer": "yes"}])
    assert unsplit["per_split"] == {} and unsplit["f1_mean_over_splits"] == unsplit["f1"]


def test_hallusionbench_groupings():
    def rec(figure, question, prediction, answer):
        return {"category": "VD", "subcategory": "chart", "set_id": 0, "figure_id": figure,
                "question_id": question, "prediction": prediction, "answer": answer}

    records = [
        rec(0, 0, "Yes, it is.", "1"), rec(0, 1, "No.", "0"),   # figure 0: both right
        rec(1, 0, "No", "no"), rec(1, 1, "Yes", "no"),         # figure 1: question 1 wrong
    ]
    out = score_hallusionbench(records)
    assert out["aAcc"] == 0.75
    assert out["fAcc"] == 0.5 and out["n_figures"] == 2   # figure 0 only
    assert out["qAcc"] == 0.5 and out["n_questions"] == 2  # question 0 only (on both figures)
    with pytest.raises(InputError, match="not yes/no"):
        score_hallusionbench([rec(0, 0, "yes", "maybe")])


def test_hallusionbench_fig_accuracy_leaves_out_vs_questions_without_a_figure():
    # tianyi-lab/HallusionBench utils.py get_eval_fig: `if category == "VS" and figure_id
    # == "0": continue`. VS set 3: asked without the figure (id 0, wrong), then with
    # figure 1 (right). VD figure 0 is a real figure and stays.
    def rec(category, figure, question, prediction, answer):
        return {"category": category, "subcategory": "map", "set_id": "3",
                "figure_id": figure, "question_id": question, "prediction": prediction,
                "answer": answer}

    records = [
        rec("VS", "0", 0, "Yes", "0"), rec("VS", "0", 1, "No", "0"),  # no figure: 1 of 2
        rec("VS", "1", 0, "No", "0"), rec("VS", "1", 1, "No", "0"),   # figure 1: right
        rec("VD", 0, 0, "No", "1"),                                  # VD figure 0: wrong
    ]
    out = score_hallusionbench(records)
    assert out["fAcc"] == 0.5 and out["n_figures"] == 2   # VS figure 1 and VD figure 0
    assert out["n_no_figure"] == 2
    assert out["fAcc_vlmevalkit"] == pytest.approx(1 / 3)  # the no-figure group counted too
    assert out["aAcc"] == 0.6 and out["qAcc"] == pytest.approx(1 / 3)
