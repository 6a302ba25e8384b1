"""Presets: every published preset is a well-formed config whose analytic parameter count
lands within 1 % of the checkpoint's published size; built models count the same."""

from __future__ import annotations

import importlib

import pytest

from tilevl.errors import ConfigError
from tilevl.param_count import (
    count_llm_parameters,
    count_parameters,
    count_projector_parameters,
    count_vision_parameters,
)
from tilevl.presets import PRESETS, PUBLISHED_PARAMS, SYNTHETIC_PRESETS, get_preset, preset_names

PUBLISHED = [n for n in preset_names() if n not in SYNTHETIC_PRESETS]

TOP_KEYS = {
    "architectures", "model_type", "template", "select_layer", "force_image_size",
    "downsample_ratio", "ps_version", "dynamic_image_size", "use_thumbnail",
    "min_dynamic_patch", "max_dynamic_patch", "vision_config", "llm_config",
}
VISION_KEYS = {
    "architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "image_size", "patch_size", "qkv_bias", "qk_normalization",
    "norm_type", "layer_norm_eps", "initializer_factor", "drop_path_rate", "hidden_act",
    "use_flash_attn",
}
LLM_KEYS = {
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "vocab_size", "rope_theta",
    "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
}
LLM_ARCHS = {
    "InternLM2ForCausalLM": "internlm2",
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Phi3ForCausalLM": "phi3",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "GptOssForCausalLM": "gpt_oss",
    "InternLM3ForCausalLM": "internlm3",
}


def _row(name: str) -> tuple[int, int, float, str]:
    ours = count_parameters(get_preset(name))
    published, source = PUBLISHED_PARAMS[name]
    return ours, published, (ours - published) / published * 100, source


def test_every_published_preset_has_a_published_count():
    assert sorted(PUBLISHED_PARAMS) == sorted(PUBLISHED)


def test_parameter_table(capsys):
    lines = [f"{'preset':28s} {'ours':>16s} {'published':>16s} {'diff%':>7s}"]
    for name in PUBLISHED:
        ours, published, diff, _ = _row(name)
        lines.append(f"{name:28s} {ours:>16,d} {published:>16,d} {diff:>+7.2f}")
    for name in SYNTHETIC_PRESETS:
        lines.append(f"{name:28s} {count_parameters(get_preset(name)):>16,d} {'-':>16s} {'-':>7s}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.parametrize("name", PUBLISHED)
def test_count_matches_published_within_one_percent(name):
    ours, published, diff, source = _row(name)
    assert abs(diff) <= 1.0, (
        f"{name}: ours {ours:,d} vs published {published:,d} ({diff:+.2f}%), source: {source}")


@pytest.mark.parametrize("name", preset_names())
def test_preset_has_required_keys(name):
    cfg = get_preset(name)
    assert TOP_KEYS <= cfg.keys(), f"{name}: missing top-level {sorted(TOP_KEYS - cfg.keys())}"
    vision, llm = cfg["vision_config"], cfg["llm_config"]
    assert VISION_KEYS <= vision.keys(), f"{name}: vision_config missing {sorted(VISION_KEYS - vision.keys())}"
    assert LLM_KEYS <= llm.keys(), f"{name}: llm_config missing {sorted(LLM_KEYS - llm.keys())}"
    assert cfg["architectures"] == ["InternVLChatModel"] and cfg["model_type"] == "internvl_chat"
    assert vision["architectures"] == ["InternVisionModel"]
    assert vision["model_type"] == "intern_vit_6b"
    assert vision["norm_type"] in ("layer_norm", "rms_norm")
    assert cfg["ps_version"] in ("v1", "v2")
    arch = llm["architectures"][0]
    assert LLM_ARCHS.get(arch) == llm["model_type"], f"{name}: {arch} with {llm['model_type']}"


@pytest.mark.parametrize("name", preset_names())
def test_tile_gives_a_whole_number_of_tokens(name):
    cfg = get_preset(name)
    vision = cfg["vision_config"]
    assert cfg["force_image_size"] == vision["image_size"]
    grid = vision["image_size"] // vision["patch_size"]
    assert grid * vision["patch_size"] == vision["image_size"]
    scale = round(1 / cfg["downsample_ratio"])
    assert grid % scale == 0, f"{name}: grid {grid} not divisible by pixel-shuffle factor {scale}"
    assert vision["hidden_size"] % vision["num_attention_heads"] == 0
    llm = cfg["llm_config"]
    assert llm["hidden_size"] % llm["num_attention_heads"] == 0
    assert llm["num_attention_heads"] % llm["num_key_value_heads"] == 0


def test_test_and_benchmark_sizes():
    tiny, small = get_preset("tiny"), get_preset("small")
    # tokens per tile after pixel shuffle 0.5: (image/patch/2)^2
    assert (tiny["vision_config"]["image_size"] // 14 // 2) ** 2 == 4
    assert (small["vision_config"]["image_size"] // 14 // 2) ** 2 == 64
    assert tiny["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert tiny["llm_config"]["vocab_size"] == 512
    assert count_parameters(tiny) < 1_000_000
    assert count_parameters(small) < 50_000_000


def test_phi3_presets_carry_longrope_factors():
    for name in ("mini-internvl-chat-4b-v1-5", "internvl2-4b"):
        llm = get_preset(name)["llm_config"]
        head_dim = llm["hidden_size"] // llm["num_attention_heads"]
        scaling = llm["rope_scaling"]
        assert len(scaling["long_factor"]) == len(scaling["short_factor"]) == head_dim // 2
        assert llm["original_max_position_embeddings"] == 4096


def test_known_pieces_match_published_component_sizes():
    # InternViT-300M-448px: HF "304M"; InternViT-6B-448px-V1-5: HF "5.54B".
    assert round(count_vision_parameters(get_preset("internvl2-1b")["vision_config"]) / 1e6) == 304
    assert round(count_vision_parameters(get_preset("internvl2-26b")["vision_config"]) / 1e7) == 554


def test_get_preset_is_a_deep_copy_and_case_insensitive():
    a = get_preset("InternVL2-1B")
    a["llm_config"]["hidden_size"] = 1
    a["vision_config"]["image_size"] = 1
    assert get_preset("internvl2-1b")["llm_config"]["hidden_size"] == 896
    assert PRESETS["internvl2-1b"]["vision_config"]["image_size"] == 448


@pytest.mark.parametrize("spelling", ["OpenGVLab/InternVL3_5-8B", "InternVL3.5-8B", "internvl3_5-8b-hf",
                                      "InternVL3_5-8B-MPO-HF", "InternVL3_5-8B-Instruct",
                                      "internvl3_5-8b-pretrained"])
def test_published_spellings_name_the_same_preset(spelling):
    assert get_preset(spelling) == get_preset("internvl3_5-8b")


def test_gpt_oss_preset_answers_to_its_short_names():
    for spelling in ("InternVL3_5-20B-A4B", "InternVL3_5-GPT-OSS-20B-A4B-Preview-HF"):
        assert get_preset(spelling)["llm_config"]["model_type"] == "gpt_oss"


def test_every_internvl3_and_3_5_size_has_a_preset():
    sizes3 = ["1b", "2b", "8b", "9b", "14b", "38b", "78b"]
    sizes35 = ["1b", "2b", "4b", "8b", "14b", "38b", "30b-a3b", "241b-a28b", "gpt-oss-20b-a4b-preview"]
    names = [f"internvl3-{s}" for s in sizes3] + [f"internvl3_5-{s}" for s in sizes35]
    assert set(names) <= set(PRESETS)
    moe = get_preset("internvl3_5-30b-a3b")["llm_config"]
    assert (moe["num_experts"], moe["num_experts_per_tok"]) == (128, 8)
    assert get_preset("internvl3_5-gpt-oss-20b-a4b-preview")["template"] == "internvl3_5_gpt_oss"
    assert get_preset("internvl3-9b")["llm_config"]["model_type"] == "internlm3"


def test_unknown_name_lists_known_names():
    with pytest.raises(ConfigError) as info:
        get_preset("internvl9-7b")
    message = str(info.value)
    assert "internvl9-7b" in message
    assert "internvl2-1b" in message and "tiny" in message


def test_count_rejects_unknown_llm():
    cfg = get_preset("tiny")
    cfg["llm_config"]["architectures"] = ["MambaForCausalLM"]
    cfg["llm_config"]["model_type"] = "mamba"
    with pytest.raises(ConfigError, match="MambaForCausalLM"):
        count_parameters(cfg)


def test_presets_module_does_not_import_torch():
    # Checked on the source: importing tilevl itself may pull torch in, presets.py must not.
    import ast
    import tilevl.presets as presets

    tree = ast.parse(open(presets.__file__, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "transformers", "numpy"}, sorted(imported)


# --- independent references: the pieces built with torch on the meta device ----------------

@pytest.mark.parametrize("name", ["tiny", "small", "internvl2-1b", "internvl2-26b"])
def test_vision_and_projector_counts_match_built_modules(name):
    torch = pytest.importorskip("torch")
    config = pytest.importorskip("tilevl.config")
    vit = pytest.importorskip("tilevl.model.vit")
    projector = pytest.importorskip("tilevl.model.projector")
    cfg = get_preset(name)
    with torch.device("meta"):
        v = vit.InternVisionModel(config.VisionConfig.from_dict(cfg["vision_config"]))
        p = projector.Projector(cfg["vision_config"]["hidden_size"],
                                cfg["llm_config"]["hidden_size"], cfg["downsample_ratio"])
    assert sum(t.numel() for t in v.parameters()) == count_vision_parameters(cfg["vision_config"])
    assert sum(t.numel() for t in p.parameters()) == count_projector_parameters(cfg)


@pytest.mark.parametrize("name", ["tiny", "internvl2-1b", "internvl2_5-4b", "internvl2-4b",
                                  "internvl-chat-v1-2", "internvl3-2b", "internvl3-9b",
                                  "internvl3_5-1b", "internvl3_5-8b", "internvl3_5-30b-a3b",
                                  "internvl3_5-241b-a28b", "internvl3_5-gpt-oss-20b-a4b-preview"])
def test_llm_count_matches_transformers(name):
    # transformers has no native InternLM2, so every other LLM kind is checked here.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    llm = get_preset(name)["llm_config"]
    kwargs = {k: v for k, v in llm.items() if k not in ("model_type", "architectures", "_name_or_path")}
    if llm["model_type"] == "internlm3":  # InternLM3's own bias names → transformers' one flag
        kwargs["attention_bias"] = kwargs.pop("qkv_bias") or kwargs.pop("bias")
    if kwargs.get("rope_scaling") and kwargs["rope_scaling"].get("type") == "su":
        # transformers>=5 validates "su" before renaming it to "longrope"; same rope either way
        kwargs["rope_scaling"] = {**kwargs["rope_scaling"], "type": "longrope"}
    hf_config = transformers.AutoConfig.for_model(llm["model_type"], **kwargs)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert sum(t.numel() for t in model.parameters()) == count_llm_parameters(llm)


# --- the lead's builder: enabled once tilevl.build_model exists ------------------------------

@pytest.mark.parametrize("name", preset_names())
def test_built_model_count_equals_analytic_count(name):
    pytest.importorskip("torch")
    tilevl = importlib.import_module("tilevl")
    build_model = getattr(tilevl, "build_model", None)
    if build_model is None:
        pytest.skip("tilevl.build_model does not exist yet")
    model = build_model(name, device="meta")
    built = sum(p.numel() for p in model.parameters())
    expected = count_parameters(get_preset(name))
    assert built == expected, f"{name}: built {built:,d} vs analytic {expected:,d}"
