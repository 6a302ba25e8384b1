"""The embedded-model machinery: its recipe runs end to end in --quick mode, and a model folder
in tilevl/assets loads by name (`open_model`, `load_model`, `load_tokenizer`, `tilevl chat`).

The by-name tests install the quick recipe's output where the package looks for it, so they
test the loading machinery on a folder this run wrote; tests/test_shipped_model.py tests the
weights that ship.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "scores.json")


def _load_recipe():
    spec = importlib.util.spec_from_file_location(
        "train_tilevl_tiny", REPO / "scripts" / "train_tilevl_tiny.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The recipe in --quick mode (a few steps per stage), run once for this module."""
    out = tmp_path_factory.mktemp("tilevl-tiny")
    recipe = _load_recipe()
    package_weights = recipe.PACKAGE_ASSETS / "model.safetensors"
    before = package_weights.stat().st_mtime_ns if package_weights.exists() else None
    assert recipe.main(["--out", str(out), "--quick"]) == 0
    after = package_weights.stat().st_mtime_ns if package_weights.exists() else None
    assert before == after, "--quick must not touch the package's shipped weights"
    return recipe, out


@pytest.fixture()
def installed(quick_run, monkeypatch):
    """The quick run's folder, found by `asset_path("tilevl-tiny")` as a shipped model is."""
    import tilevl.assets

    folder = quick_run[1] / "assets" / "tilevl-tiny"
    real = tilevl.assets.asset_path
    monkeypatch.setattr(tilevl.assets, "asset_path",
                        lambda name: folder if str(name).strip().lower() == "tilevl-tiny" else real(name))
    return folder


def test_quick_recipe_writes_a_complete_small_folder(quick_run):
    recipe, out = quick_run
    folder = out / "assets" / "tilevl-tiny"
    for name in SHIPPED_FILES:
        assert (folder / name).is_file(), f"the quick recipe wrote no {name}"
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total <= 25 * 2**20, f"{folder} holds {total / 2**20:.1f} MiB (limit 25)"
    config = json.loads((folder / "config.json").read_text("utf-8"))
    assert config["template"] == "tilevl" and config["max_dynamic_patch"] == 1  # trained on one tile
    assert config["eval_max_dynamic_patch"] == 1  # and evaluated on one, with no flag:
    budget = json.loads((out / "eval" / "minibench" / "results.json").read_text("utf-8"))["tile_budget"]
    assert (budget["max_tiles"], budget["source"]) == (1, "model")
    scores = json.loads((out / "scores.json").read_text("utf-8"))
    assert [scores["run"][f"stage{i}"]["steps"] for i in range(1, len(recipe.STAGES) + 1)] == [
        quick for _, _, _, quick, _ in recipe.STAGES]
    assert "| **overall (circular accuracy)** |" in (out / "scores.md").read_text("utf-8")
    for key in ("vqa_accuracy", "pope_f1", "grounding_accuracy"):
        assert 0 <= scores[key] <= 1


def test_a_shipped_folder_beats_the_preset_of_the_same_name(installed):
    from tilevl.checkpoint.loader import load_model
    from tilevl.model.vlm import build_model
    from tilevl.resolve import open_model

    model, tokenizer = open_model("tilevl-tiny", dtype="fp32", quiet=True)
    stored = load_model(installed)
    random = build_model("tilevl-tiny", seed=0)
    name, weight = next(iter(stored.state_dict().items()))
    assert weight.float().equal(model.state_dict()[name])
    assert not weight.float().equal(random.state_dict()[name])
    assert model.config.num_image_token == 16 and tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") is not None


def test_load_model_tokenizer_and_chat_by_name(installed, capsys):
    import tilevl
    from tilevl.cli import main

    model = tilevl.load_model("tilevl-tiny")
    tokenizer = tilevl.load_tokenizer("tilevl-tiny")
    assert model.config.template == "tilevl"
    assert tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") == model.img_context_token_id
    assert main(["chat", "--max-new-tokens", "3", "What is this?"]) == 0  # no MODEL: the shipped one
    assert capsys.readouterr().out.startswith("assistant> ")


def test_demo_runs_on_the_shipped_model(installed, tmp_path, capsys):
    from tilevl.cli import main

    assert main(["demo", "--out", str(tmp_path), "--questions", "8"]) == 0
    out = capsys.readouterr().out
    assert "color_recognition.png" in out and "expected:" in out and "mmbench_circular" in out


def test_visual_use_probe_reports_every_category(quick_run, capsys):
    """scripts/probe_visual_use.py: per-category shares in [0, 1] and the feature statistics."""
    spec = importlib.util.spec_from_file_location("probe_visual_use",
                                                  REPO / "scripts" / "probe_visual_use.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    folder = quick_run[1] / "assets" / "tilevl-tiny"
    assert probe.main([str(folder), "--n", "2", "--categories", "color_recognition", "ocr"]) == 0
    out = capsys.readouterr().out
    assert "color_recognition" in out and "ocr" in out and "visual tokens: norm" in out
    from tilevl.resolve import open_model

    model, tokenizer = open_model(str(folder), dtype="fp32", quiet=True)
    result = probe.probe(model, tokenizer, ["shape_recognition"], 2)
    assert 0 <= result["shape_recognition"]["worded"] <= 1
    assert 0 <= result["shape_recognition"]["letter"] <= 1
    assert result["_features"]["visual_norm"] > 0


def test_tokenizer_corpus_carries_the_template_scaffold(tmp_path):
    """The role names and system prompt every sample carries become few tokens."""
    from tilevl.checkpoint.tokenizer import build_bpe_tokenizer

    records = [{"conversations": [{"from": "human", "value": f"<image>\nWhat color is item {i}?"},
                                  {"from": "gpt", "value": "red"}]} for i in range(50)]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    texts = _load_recipe().training_texts(jsonl)
    assert "What color is item 7?" in texts and not any("<image>" in t for t in texts)
    tokenizer = build_bpe_tokenizer(corpus=texts, vocab_size=400)
    assert len(tokenizer("assistant")["input_ids"]) == 1
    assert len(tokenizer("You are tilevl-tiny, a small vision-language model.")["input_ids"]) <= 16  # bytes: 51


def test_second_stage_mixes_the_train_split_with_repeated_look_items(quick_run):
    """The recipe's mix_meta.json loads as two sources whose paths exist; look items repeat."""
    from tilevl.data.meta import load_meta, repeat_indices

    recipe, out = quick_run
    specs = {spec.name: spec for spec in load_meta(out / "minibench" / "mix_meta.json")}
    assert set(specs) == {"minibench_train", "minibench_look"}
    for spec in specs.values():
        assert spec.annotation.is_file() and spec.root.is_dir()
    look = specs["minibench_look"]
    assert look.repeat_time == recipe.LOOK_REPEAT
    assert len(repeat_indices(8, look.repeat_time)) == 8 * recipe.LOOK_REPEAT
    assert specs["minibench_train"].annotation.name == recipe.WORDED_TRAIN


def test_image_blind_control_swaps_images_within_a_category():
    """Every item gets another item's image of its own category; circular copies agree."""
    spec = importlib.util.spec_from_file_location(
        "image_blind_control", REPO / "scripts" / "image_blind_control.py")
    control = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(control)
    rows = [{"index": str(i + k * control.STRIDE), "image": f"img{i}", "category": "ab"[i % 2]}
            for k in range(2) for i in range(6)]
    swapped = control.swap_images(rows, seed=3)
    by_item = {}
    for row, new in zip(rows, swapped):
        item = int(row["index"]) % control.STRIDE
        assert new["image"] != row["image"] and new["category"] == row["category"]
        assert int(new["image"][3:]) % 2 == item % 2  # from the same category
        assert by_item.setdefault(item, new["image"]) == new["image"]  # copies agree
    assert sorted(by_item.values()) == sorted(f"img{i}" for i in range(6))  # a permutation
    with pytest.raises(ValueError, match="category 'c' has one item"):
        control.swap_images(rows + [{"index": "9", "image": "x", "category": "c"}])


def test_third_stage_reads_traced_records_answered_as_asked(quick_run):
    """reason_words_meta.json (the default --answers): direct and chain-of-thought records of
    the traced train split, the CoT ones ending in an option's text; stage 2 carries no trace."""
    from tilevl.data.meta import load_meta
    from tilevl.eval.benchmarks.common import MCQ_COT_PROMPT, final_answer

    recipe, out = quick_run
    specs = {spec.name: spec for spec in load_meta(out / "minibench" / "reason_words_meta.json")}
    records = [json.loads(line) for line in specs["minibench_train"].annotation.open()]
    cot = [r for r in records if r["conversations"][0]["value"].endswith(MCQ_COT_PROMPT)]
    assert cot and len(records) - len(cot) >= recipe.REASON_RECORDS["quick"]["direct"] - 1
    for record in cot:
        ask, reply = (t["value"] for t in record["conversations"][:2])
        assert f". {final_answer(reply)}\n" in ask, (ask, reply)
    stage2 = (out / "minibench" / "train" / recipe.WORDED_TRAIN).read_text("utf-8")
    assert "Think step by step" not in stage2
    assert json.loads((out / "run.json").read_text("utf-8"))["stage3"]["data"] == "reason_words_meta.json"
