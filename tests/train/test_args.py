"""The training config: YAML + `--key value` overrides, and errors that name the file:line or flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tilevl.errors import ConfigError
from tilevl.train.args import TrainConfig, load_train_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, "utf-8")
    return path


def test_yaml_then_overrides_then_keywords(tmp_path):
    path = write(tmp_path, "model: tiny\nlearning_rate: 1e-5\nfreeze_llm: true\nreport_to: [tensorboard]\n")
    config = load_train_config(path, ["--learning-rate", "2e-4", "--use_llm_lora", "8",
                                      "--freeze_backbone", "--max_dynamic_patch=6"], seed=7)
    assert config.learning_rate == 2e-4 and isinstance(config.learning_rate, float)
    assert (config.use_llm_lora, config.freeze_llm, config.freeze_backbone) == (8, True, True)
    assert (config.max_dynamic_patch, config.seed, config.report_to) == (6, 7, ["tensorboard"])
    assert config.model == "tiny" and config.uses_lora


def test_yaml_float_without_dot_is_a_number(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-5 as a string; a float field still takes it.
    assert load_train_config(write(tmp_path, "learning_rate: 1e-5\n")).learning_rate == 1e-5


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path, "model: tiny\n\nlerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: unknown key 'lerning_rate' \(did you mean 'learning_rate'\?\)"):
        load_train_config(path)


def test_wrong_type_names_file_line_and_type(tmp_path):
    path = write(tmp_path, "model: tiny\nper_device_train_batch_size: four\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: per_device_train_batch_size must be an integer, got 'four'"):
        load_train_config(path)
    with pytest.raises(ConfigError, match=r"run.yaml:1: freeze_llm must be true or false, got 'yes please'"):
        load_train_config(write(tmp_path, "freeze_llm: yes please\n"))
    with pytest.raises(ConfigError, match=r"precision must be one of 'bf16', 'fp16', 'fp32'"):
        load_train_config(write(tmp_path, "precision: fp8\n"))


def test_bad_override_names_the_flag():
    with pytest.raises(ConfigError, match=r"--max_step: unknown key 'max_step' \(did you mean 'max_steps'\?\)"):
        load_train_config(None, ["--max_step", "3"])
    with pytest.raises(ConfigError, match=r"--max_steps: max_steps must be an integer, got 'many'"):
        load_train_config(None, ["--max_steps", "many"])
    with pytest.raises(ConfigError, match=r"--seed: needs a value"):
        load_train_config(None, ["--seed"])
    with pytest.raises(ConfigError, match=r"unexpected argument 'extra.yaml'"):
        parse_overrides(["extra.yaml"])


def test_cross_field_rules_name_where_the_value_came_from(tmp_path):
    path = write(tmp_path, "model: tiny\nwarmup_ratio: 1.5\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: warmup_ratio: must be in \[0, 1\)"):
        load_train_config(path)
    with pytest.raises(ConfigError, match=r"--pack_to_tokens: pack_to_tokens: and group_by_length"):
        load_train_config(None, ["--group_by_length", "--pack_to_tokens", "4096"])


def test_invalid_yaml_and_duplicates_name_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"run.yaml:3: invalid YAML \(expected ',' or '\]'.*started on line 2"):
        load_train_config(write(tmp_path, "model: tiny\nseed: [1\n"))
    with pytest.raises(ConfigError, match=r"run.yaml:3: key 'seed' is given twice \(first on line 1\)"):
        load_train_config(write(tmp_path, "seed: 1\nmodel: tiny\nseed: 2\n"))
    with pytest.raises(ConfigError, match=r"no such config file"):
        load_train_config(tmp_path / "missing.yaml")


def test_required_paths():
    with pytest.raises(ConfigError, match=r"meta_path: is required .*--meta_path"):
        load_train_config(None, ["--model", "tiny"]).require_paths()


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    config = load_train_config(CONFIGS / name)
    assert isinstance(config, TrainConfig) and config.model
    if config.deepspeed:
        ds = json.loads((CONFIGS.parent / config.deepspeed).read_text())
        assert ds["zero_optimization"]["stage"] in (1, 2, 3)


def test_shipped_deepspeed_configs_are_stages_1_to_3():
    for stage in (1, 2, 3):
        data = json.loads((CONFIGS / "deepspeed" / f"zero_stage{stage}_config.json").read_text())
        assert data["zero_optimization"]["stage"] == stage
        assert data["train_micro_batch_size_per_gpu"] == "auto"
