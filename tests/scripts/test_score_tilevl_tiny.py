"""scripts/score_tilevl_tiny.py end to end on a random `tiny` checkpoint: two seeds of a small
MiniBench (two categories), every file written, pooled figures = item-weighted seeds, the
swapped control really swaps, intervals hold their estimates, the yes ratio by POPE's rule."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import tilevl
from tilevl.checkpoint.tokenizer import img_context_token_id
from tilevl.minibench.formats import CIRCULAR_STRIDE, read_tsv

REPO = Path(__file__).resolve().parents[2]
SEEDS = (101, 202)
CATEGORIES = ("color_recognition", "object_counting")


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "score_tilevl_tiny", REPO / "scripts" / "score_tilevl_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


score = _load_script()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer):
    """One scoring run: 2 seeds × 4 items (2 per category) and 4 questions per other file."""
    root = tmp_path_factory.mktemp("score")
    model = tilevl.build_model("tiny", seed=0)
    model.img_context_token_id = img_context_token_id(tokenizer)
    tilevl.save_model(model, root / "tiny", tokenizer=tokenizer)
    out = root / "out"
    argv = [str(root / "tiny"), "--seeds", *map(str, SEEDS), "--size", "30", "--out", str(out),
            "--limit", "4", "--max-tiles", "1", "--categories", *CATEGORIES, "--quiet"]
    assert score.main(argv) == 0
    return out, json.loads((out / "scores.json").read_text("utf-8"))


def test_files_and_settings(run):
    out, scores = run
    for seed in SEEDS:
        info = json.loads((out / f"minibench-{seed}" / "info.json").read_text("utf-8"))
        assert info["seed"] == seed and info["train_size"] == 0
        assert "mcq_items" not in info["splits"]["train"]  # no train split drawn
        assert (out / f"eval-{seed}" / "swapped" / "results.json").exists()
    s = scores["settings"]
    assert s["seeds"] == list(SEEDS) and s["split"] == "test" and s["size"] == 30
    assert s["tile_budget"] == {"max_tiles": 1, "source": "--max-tiles"}
    assert len(s["config_sha256"]) == 16 and s["item_counts"]["mcq_items"] == 8
    assert s["item_counts"]["vqa"] == 8 and s["item_counts"]["grounding"] == 8
    md = (out / "scores.md").read_text("utf-8")
    for name in CATEGORIES:
        assert f"| {name} |" in md
    assert "| **overall** |" in md and "seeds 101, 202, test split" in md
    assert f"Categories above the images-swapped control: " \
           f"{scores['pooled']['mcq']['categories_above_control']} of 2." in md


def test_pooled_is_the_item_weighted_seeds(run):
    _, scores = run
    seeds = [scores["per_seed"][str(s)] for s in SEEDS]
    pooled = scores["pooled"]
    for field in ("accuracy", "swapped", "gap"):
        n = [b["mcq"]["n_items"] for b in seeds]
        expected = sum(b["mcq"][field] * k for b, k in zip(seeds, n)) / sum(n)
        assert pooled["mcq"][field] == pytest.approx(expected)
    for name, c in pooled["mcq"]["per_category"].items():
        parts = [b["mcq"]["per_category"][name] for b in seeds]
        assert c["n_items"] == sum(p["n_items"] for p in parts)
        assert c["acc"] == pytest.approx(sum(p["acc"] * p["n_items"] for p in parts) / c["n_items"])
        assert c["above_control"] == (c["acc"] > c["swapped"])
    for bench in ("vqa", "grounding"):
        assert pooled[bench]["right"] == sum(b[bench]["right"] for b in seeds)
        assert pooled[bench]["n"] == sum(b[bench]["n"] for b in seeds)
    assert pooled["pope"]["n"] == sum(b["pope"]["n"] for b in seeds)
    yes = sum(b["pope"]["yes_ratio"] * b["pope"]["n"] for b in seeds) / pooled["pope"]["n"]
    assert pooled["pope"]["yes_ratio"] == pytest.approx(yes)


def test_intervals_hold_their_estimates(run):
    _, scores = run
    for block in [scores["pooled"], *scores["per_seed"].values()]:
        m = block["mcq"]
        for field in ("accuracy", "swapped", "gap"):
            lo, hi = m[f"{field}_ci95"]
            assert lo - 1e-12 <= m[field] <= hi + 1e-12
        for bench in ("vqa", "grounding"):
            lo, hi = block[bench]["ci95"]
            assert lo <= block[bench]["accuracy"] <= hi
        for field in ("f1", "yes_ratio"):
            lo, hi = block["pope"][f"{field}_ci95"]
            assert lo - 1e-12 <= block["pope"][field] <= hi + 1e-12


def test_the_swapped_control_swaps_every_image(run):
    out, _ = run
    for seed in SEEDS:
        real = read_tsv(out / f"eval-{seed}" / "real.tsv")
        swapped = read_tsv(out / f"eval-{seed}" / "swapped.tsv")
        assert [r["index"] for r in real] == [r["index"] for r in swapped]
        own = {int(r["index"]) % CIRCULAR_STRIDE: r["image"] for r in real}
        category = {r["image"]: r["category"] for r in real}
        shown: dict[int, str] = {}
        for r, s in zip(real, swapped):
            item = int(r["index"]) % CIRCULAR_STRIDE
            assert s["image"] != own[item]  # no item keeps its image
            assert category[s["image"]] == r["category"]  # another item's of its category
            assert shown.setdefault(item, s["image"]) == s["image"]  # copies agree
        assert sorted(shown.values()) == sorted(own.values())
        assert len(own) == 4 and len(real) > 4  # --limit kept 4 items with all their copies


def test_yes_ratio_reads_replies_by_popes_rule():
    replies = ["Yes.", "No, there is not.", "yes", "There is no dog.", "Yes, a cat", "NO"]
    # POPE's rule is case-sensitive on "No"/"no"/"not": "NO" reads as yes, as upstream.
    assert score.yes_ratio(replies) == pytest.approx(4 / 6)
    assert score.yes_ratio([]) == 0.0


def test_pope_counts_give_the_scorers_f1():
    from tilevl.eval.benchmarks.common import Sample
    from tilevl.eval.intervals import f1_from_counts
    from tilevl.eval.metrics import score as run_scorer

    golds = ["yes", "no", "yes", "no", "yes", "no"]
    replies = ["Yes", "Yes", "No", "No", "Yes", "There is no cat."]
    answered = [(Sample(i, "q", image=f"img{i // 2}", record={"answer": g}), r)
                for i, (g, r) in enumerate(zip(golds, replies))]
    counts = score.pope_counts(answered)
    assert counts.shape == (3, 4)  # one row per image
    f1, yes = f1_from_counts(counts.sum(0))
    expected = run_scorer("pope", [{"prediction": r, "answer": g} for g, r in zip(golds, replies)])
    assert f1 == pytest.approx(expected["f1"]) and yes == pytest.approx(expected["yes_ratio"])


def test_first_items_keeps_every_copy():
    rows = [{"index": str(i + k * CIRCULAR_STRIDE)} for i in range(5) for k in range(3)]
    kept = score.first_items(rows, 2)
    assert sorted(int(r["index"]) for r in kept) == sorted(
        i + k * CIRCULAR_STRIDE for i in range(2) for k in range(3))
    assert score.first_items(rows, None) is rows


def test_minibench_is_reused_only_when_info_matches(tmp_path):
    folder = score.prepare_minibench(tmp_path, 7, 30, ["ocr"], progress=False)
    stamp = (folder / "info.json").stat().st_mtime_ns
    assert score.prepare_minibench(tmp_path, 7, 30, ["ocr"], progress=False) == folder
    assert (folder / "info.json").stat().st_mtime_ns == stamp
    score.prepare_minibench(tmp_path, 7, 35, ["ocr"], progress=False)  # another size: redrawn
    assert json.loads((folder / "info.json").read_text("utf-8"))["size"] == 35


def test_tile_budget_prefers_the_flag_then_the_model(tokenizer):
    model = tilevl.build_model("tiny", seed=0)
    assert score.tile_budget(model, 2) == {"max_tiles": 2, "source": "--max-tiles"}
    assert score.tile_budget(model, None)["max_tiles"] == model.image_settings.max_num
    model.config.eval_max_dynamic_patch = 3  # the key another branch adds to config.json
    assert score.tile_budget(model, None)["max_tiles"] == 3


def test_a_single_item_category_is_refused(tmp_path):
    folder = score.prepare_minibench(tmp_path, 7, 30, ["ocr", "image_topic"], progress=False)
    with pytest.raises(SystemExit, match="category .* has one item.*raise --size or --limit"):
        score.write_mcq_files(folder, tmp_path / "eval", 7, limit=2)


def test_pooling_weights_seeds_by_their_items():
    # Seed A: 2 items, 1 right; seed B: 6 items, all right → pooled 7/8, not (1/2 + 1)/2.
    a = {0: ("ocr", True, False), 1: ("ocr", False, False)}
    b = {i: ("ocr", True, i < 3) for i in range(6)}
    pooled = score.summarize_mcq([a, b], ["ocr"], seed=0)
    assert pooled["accuracy"] == pytest.approx(7 / 8) and pooled["swapped"] == pytest.approx(3 / 8)
    assert pooled["per_category"]["ocr"]["n_items"] == 8 and pooled["n_items"] == 8
    assert score.summarize_proportion([(1, 2), (6, 6)])["accuracy"] == pytest.approx(7 / 8)
    pope = score.summarize_pope([np.array([[1.0, 1.0, 0.0, 4.0]]), np.array([[3.0, 0.0, 1.0, 8.0]])],
                                seed=0)
    assert pope["yes_ratio"] == pytest.approx(5 / 12) and pope["f1"] == pytest.approx(8 / 10)
