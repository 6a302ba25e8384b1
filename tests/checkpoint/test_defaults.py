"""A key absent from config.json means upstream's default (#16 item 2).

The expected values are copied from upstream's InternVLChatConfig.__init__ and
InternVisionConfig.__init__ (OpenGVLab/InternVL internvl_chat/internvl/model/internvl_chat/
configuration_internvl_chat.py, configuration_intern_vit.py), not read from tilevl. Where the
weights show something else than the default (a 300M tower whose vision_config leaves out
norm_type / qk_normalization / qkv_bias), the weights decide; pickled weights, whose names are
not read ahead, get an error naming the missing key.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tilevl import build_model
from tilevl.checkpoint.loader import load_model, save_model
from tilevl.checkpoint.tokenizer import IMG_CONTEXT_TOKEN
from tilevl.config import ModelConfig, VisionConfig
from tilevl.errors import CheckpointError

UPSTREAM_CHAT = {
    "use_backbone_lora": 0, "use_llm_lora": 0, "pad2square": False, "select_layer": -1,
    "force_image_size": None, "downsample_ratio": 0.5, "template": None,
    "dynamic_image_size": False, "use_thumbnail": False, "ps_version": "v1",
    "min_dynamic_patch": 1, "max_dynamic_patch": 6,
}
UPSTREAM_VISION = {
    "num_channels": 3, "patch_size": 14, "image_size": 224, "qkv_bias": False,
    "hidden_size": 3200, "num_attention_heads": 25, "intermediate_size": 12800,
    "qk_normalization": True, "num_hidden_layers": 48, "hidden_act": "gelu",
    "norm_type": "rms_norm", "layer_norm_eps": 1e-6, "dropout": 0.0, "drop_path_rate": 0.0,
    "attention_dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 0.1,
}
SHOWN_BY_WEIGHTS = ("qkv_bias", "qk_normalization", "norm_type")


def test_config_without_keys_takes_upstreams_defaults():
    minimal = {"vision_config": {}, "llm_config": {"hidden_size": 64, "model_type": "qwen2"}}
    cfg = ModelConfig.from_dict(minimal)
    assert {k: getattr(cfg, k) for k in UPSTREAM_CHAT} == UPSTREAM_CHAT
    assert {k: getattr(cfg.vision, k) for k in UPSTREAM_VISION} == UPSTREAM_VISION


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    """The tiny model (300M-style tower: LayerNorm, qkv bias, no qk-norm) saved officially."""
    model = build_model("tiny", seed=0)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model(model, folder)
    return model, folder


def _without(folder, tmp_path, chat_keys=(), vision_keys=(), name="edited"):
    """A copy of the checkpoint whose config.json lacks the given keys."""
    target = tmp_path / name
    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text())
    for key in chat_keys:
        config.pop(key, None)
    for key in vision_keys:
        config["vision_config"].pop(key)
    (target / "config.json").write_text(json.dumps(config))
    return target


def _logits(model, tiles=2):
    torch.manual_seed(5)
    ids = torch.cat([torch.tensor([[5, 6]]), torch.full((1, model.num_image_token * tiles), model.img_context_token_id),
                     torch.tensor([[8]])], 1)
    pixels = torch.randn(tiles, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels).logits


def test_each_absent_chat_key_loads_as_upstream(saved, tmp_path):
    model, folder = saved
    assert model.config.ps_version == "v2" and model.config.dynamic_image_size  # differ from upstream's
    for key, value in UPSTREAM_CHAT.items():
        loaded = load_model(_without(folder, tmp_path, chat_keys=[key], name=key))
        assert getattr(loaded.config, key) == value, key
    loaded = load_model(_without(folder, tmp_path, chat_keys=list(UPSTREAM_CHAT), name="all"))
    settings = loaded.image_settings  # the image pipeline reads the same defaults
    assert (settings.dynamic, settings.use_thumbnail, settings.max_num) == (False, False, 6)


def test_absent_ps_version_means_v1_behaviour(saved, tmp_path):
    model, folder = saved
    loaded = load_model(_without(folder, tmp_path, chat_keys=["ps_version"]))
    v1 = build_model(model.config.replace(ps_version="v1"), seed=0)
    v1.img_context_token_id = model.img_context_token_id
    torch.testing.assert_close(_logits(loaded), _logits(v1))
    assert not torch.allclose(_logits(loaded), _logits(model))  # v2 would differ


def test_vision_keys_the_weights_show_are_inferred(saved, tmp_path):
    model, folder = saved
    loaded = load_model(_without(folder, tmp_path, vision_keys=SHOWN_BY_WEIGHTS))
    assert (loaded.config.vision.qkv_bias, loaded.config.vision.qk_normalization,
            loaded.config.vision.norm_type) == (True, False, "layer_norm")
    torch.testing.assert_close(_logits(loaded), _logits(model))
    # saved again, the settled values are written out
    again = save_model(loaded, tmp_path / "again")
    vision = json.loads((again / "config.json").read_text())["vision_config"]
    assert (vision["qkv_bias"], vision["qk_normalization"], vision["norm_type"]) == (True, False, "layer_norm")


def test_a_6b_style_tower_without_the_keys_takes_the_defaults(tmp_path, tokenizer):
    cfg = ModelConfig.from_name("tiny")
    six_b = cfg.replace(vision=VisionConfig(**{
        **{k: getattr(cfg.vision, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                               "intermediate_size", "image_size", "patch_size")},
        "qkv_bias": False, "qk_normalization": True, "norm_type": "rms_norm"}))
    model = build_model(six_b, seed=0)
    model.img_context_token_id = 7
    save_model(model, tmp_path / "six_b")
    loaded = load_model(_without(tmp_path / "six_b", tmp_path, vision_keys=SHOWN_BY_WEIGHTS))
    assert (loaded.config.vision.qkv_bias, loaded.config.vision.qk_normalization,
            loaded.config.vision.norm_type) == (False, True, "rms_norm")
    torch.testing.assert_close(_logits(loaded), _logits(model))


def test_pickled_weights_without_the_keys_name_the_missing_key(saved, tmp_path):
    _, folder = saved
    target = _without(folder, tmp_path, vision_keys=SHOWN_BY_WEIGHTS)
    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="vision_config has no '(qkv_bias|norm_type)'"):
        load_model(target, allow_pickle=True)
