"""The model folder's own evaluation tile budget (config.json `eval_max_dynamic_patch`):
`tilevl eval` uses it when no --max-tiles is given, results say where the number came from,
and the key survives every save/load layout and conversion.
"""

from __future__ import annotations

import argparse
import json

import pytest

import tilevl.eval.runner as runner
from tilevl.checkpoint.loader import load_model, read_config, save_model
from tilevl.config import ModelConfig
from tilevl.errors import ConfigError
from tilevl.eval.commands import add_eval_parsers
from tilevl.eval.runner import EvalConfig, evaluate
from tests.eval.test_benchmarks import write_mcq_tsv


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The `tiny` preset saved twice: with an evaluation budget of 1 tile and without one."""
    from tilevl.resolve import open_model

    model, tokenizer = open_model("tiny", quiet=True)
    root = tmp_path_factory.mktemp("budget")
    plain = save_model(model, root / "plain", tokenizer=tokenizer)
    model.config.eval_max_dynamic_patch = 1
    own = save_model(model, root / "own", tokenizer=tokenizer)
    model.config.eval_max_dynamic_patch = None
    return {"plain": plain, "own": own}


@pytest.fixture()
def tiles_seen(monkeypatch):
    """The tiles per image of every question the runner sends to `batch_chat`."""
    seen = []
    real = runner.batch_chat

    def spy(model, tokenizer, pixel_values, questions, config, num_patches_list=None):
        seen.extend(num_patches_list)
        return real(model, tokenizer, pixel_values, questions, config, num_patches_list)

    monkeypatch.setattr(runner, "batch_chat", spy)
    return seen


def _run(tmp_path, folder, **kw):
    from tilevl.resolve import open_model

    data = write_mcq_tsv(tmp_path, items=2)  # 64×48 images: several tiles when allowed
    cfg = EvalConfig(bench="minibench", data=str(data), out=str(tmp_path / "out"), progress=False,
                     max_new_tokens=2, batch_size=8, **kw)
    return evaluate(*open_model(str(folder), quiet=True), cfg)


def test_the_model_budget_replaces_the_benchmark_default(tmp_path, saved, tiles_seen):
    results = _run(tmp_path, saved["own"])
    assert set(tiles_seen) == {1}
    assert results["settings"]["max_tiles"] == 1 and results["settings"]["max_tiles_source"] == "model"
    assert results["tile_budget"]["source"] == "model"
    assert "eval_max_dynamic_patch" in results["tile_budget"]["detail"]
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["tile_budget"] == results["tile_budget"]
    assert "1 tile(s) per image, from the model's" in (tmp_path / "out" / "results.md").read_text()


def test_without_a_model_budget_the_benchmark_default_stays(tmp_path, saved, tiles_seen):
    results = _run(tmp_path, saved["plain"])
    assert max(tiles_seen) > 1  # the benchmark's 6 tiles cut the 4:3 images
    assert results["tile_budget"] == {"max_tiles": 6, "source": "benchmark",
                                      "detail": "the minibench benchmark's default"}


def test_the_flag_overrides_the_model_budget(tmp_path, saved, tiles_seen):
    results = _run(tmp_path, saved["own"], max_tiles=6)
    assert max(tiles_seen) > 1
    assert results["tile_budget"]["max_tiles"] == 6 and results["tile_budget"]["source"] == "flag"


def test_cli_without_max_tiles_uses_the_folder_budget(tmp_path, saved, capsys):
    data = write_mcq_tsv(tmp_path, items=1)
    parser = argparse.ArgumentParser(prog="tilevl")
    add_eval_parsers(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli"
    args = parser.parse_args(["eval", str(saved["own"]), "--bench", "minibench", "--data", str(data),
                              "--out", str(out), "--max-new-tokens", "2", "--no-progress"])
    assert args.func(args) == 0
    assert json.loads((out / "results.json").read_text())["tile_budget"]["max_tiles"] == 1


# ---- the key survives save/load -----------------------------------------------------------------
@pytest.mark.parametrize("layout", ["official", "native"])
def test_budget_survives_save_and_load_in_both_layouts(tmp_path, saved, layout):
    model = load_model(saved["own"])
    assert model.config.eval_max_dynamic_patch == 1
    folder = save_model(model, tmp_path / layout, layout=layout)
    raw = json.loads((folder / "config.json").read_text())
    assert raw["eval_max_dynamic_patch"] == 1
    config, found = read_config(folder)
    assert found == layout and config.eval_max_dynamic_patch == 1
    # and back: native → official keeps it too
    again = save_model(load_model(folder), tmp_path / f"{layout}-again", layout="official")
    assert read_config(again)[0].eval_max_dynamic_patch == 1


def test_an_unset_budget_writes_no_key(saved):
    raw = json.loads((saved["plain"] / "config.json").read_text())
    assert "eval_max_dynamic_patch" not in raw
    official = ModelConfig.from_name("internvl2-1b")
    assert "eval_max_dynamic_patch" not in official.to_dict()  # official files round-trip unchanged


@pytest.mark.parametrize("bad", [0, "2", 1.5, True])
def test_a_bad_budget_is_refused_naming_the_key(bad):
    with pytest.raises(ConfigError, match="eval_max_dynamic_patch"):
        ModelConfig.from_name("tiny", eval_max_dynamic_patch=bad)


def test_the_shipped_model_names_its_budget():
    config, _ = read_config("tilevl-tiny")
    assert config.eval_max_dynamic_patch == 1 == config.max_dynamic_patch
