"""The official layout: bit-identical round trips, InternLM2 packing, sharding, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import tilevl
from tilevl.checkpoint import files as ckfiles
from tilevl.config import ModelConfig

INTERNLM2_LLM = {
    "architectures": ["InternLM2ForCausalLM"],
    "auto_map": {"AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
    "model_type": "internlm2",
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000,
    "rope_scaling": {"type": "dynamic", "factor": 2.0}, "bias": False,
    "tie_word_embeddings": False, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    "attn_implementation": "flash_attention_2",
}


def _tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in ckfiles.weight_files(folder):
        with safe_open(f, framework="pt") as r:
            out.update({k: r.get_tensor(k) for k in r.keys()})
    return out


def _prompt(model, tiles=2):
    ids = torch.cat([torch.tensor([[5, 6, 7]]), torch.full((1, model.num_image_token * tiles), model.img_context_token_id), torch.tensor([[8, 9]])], 1)
    return ids, torch.randn(tiles, 3, model.config.image_size, model.config.image_size)


def test_official_round_trip_is_bit_identical_sharded(tmp_path, tiny_model):
    tiny_model.to(torch.bfloat16)
    first = tilevl.save_model(tiny_model, tmp_path / "a", max_shard_size="100KB")
    index = json.loads((first / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded

    loaded = tilevl.load_model(first)  # dtype=None keeps bf16
    assert loaded.dtype == torch.bfloat16
    second = tilevl.save_model(loaded, tmp_path / "b", max_shard_size="100KB")

    a, b = _tensors(first), _tensors(second)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert json.loads((first / "config.json").read_text()) == json.loads((second / "config.json").read_text())
    assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in second.iterdir())


def test_official_config_json_round_trips_unknown_keys(tmp_path, tiny_model):
    tiny_model.config.extra["custom_field"] = {"kept": True}
    tilevl.save_model(tiny_model, tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    assert raw["custom_field"] == {"kept": True}
    assert raw["architectures"] == ["InternVLChatModel"]
    assert ModelConfig.from_dict(raw).to_dict() == raw


def test_internlm2_checkpoint_written_in_its_own_layout_loads(tmp_path, tokenizer):
    config = ModelConfig.from_name("tiny", llm=INTERNLM2_LLM)
    model = tilevl.build_model(config)
    model.img_context_token_id = 20
    tilevl.save_model(model, tmp_path / "m")
    keys = _tensors(tmp_path / "m").keys()
    # The official InternLM2 names, not Llama's.
    assert "language_model.model.tok_embeddings.weight" in keys
    assert "language_model.output.weight" in keys
    assert "language_model.model.layers.0.attention.wqkv.weight" in keys
    assert "language_model.model.layers.1.feed_forward.w2.weight" in keys
    assert not any("q_proj" in k or "embed_tokens" in k for k in keys)

    loaded = tilevl.load_model(tmp_path / "m")
    ids, pixels = _prompt(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, pixels).logits, model(ids, pixels).logits, atol=0, rtol=0)
    # the folder has no tokenizer: the id comes from config.json, written by save_model
    assert loaded.img_context_token_id == 20
    assert loaded.language_model.config.model_type == "llama"


def test_load_casts_dtype_and_ties_head(tmp_path):
    base = ModelConfig.from_name("tiny")
    model = tilevl.build_model(base.replace(llm={**base.llm, "tie_word_embeddings": True}))
    tilevl.save_model(model, tmp_path / "m")
    assert "language_model.lm_head.weight" not in _tensors(tmp_path / "m")
    loaded = tilevl.load_model(tmp_path / "m", dtype=torch.bfloat16)
    llm = loaded.language_model
    assert llm.get_output_embeddings().weight is llm.get_input_embeddings().weight
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())


def test_save_is_atomic_on_failure(tmp_path, tiny_model, monkeypatch):
    def boom(*args, **kwargs):
        (args[1] / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("tilevl.checkpoint.loader.write_shards", boom)
    with pytest.raises(OSError, match="disk full"):
        tilevl.save_model(tiny_model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary folder


def test_save_refuses_to_clobber(tmp_path, tiny_model):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("x")
    with pytest.raises(tilevl.CheckpointError, match="not empty"):
        tilevl.save_model(tiny_model, tmp_path / "m")
    tilevl.save_model(tiny_model, tmp_path / "m", overwrite=True)
    assert not (tmp_path / "m" / "keep.txt").exists()


# ---- bad input: each error names the file and the key -----------------------------------------
@pytest.fixture()
def saved(tmp_path, tiny_model):
    return tilevl.save_model(tiny_model, tmp_path / "m")


def _rewrite(folder, edit):
    tensors = _tensors(folder)
    edit(tensors)
    (folder / "model.safetensors").unlink()
    save_file(tensors, str(folder / "model.safetensors"))


def test_missing_key_is_named(saved):
    _rewrite(saved, lambda t: t.pop("mlp1.1.weight"))
    with pytest.raises(tilevl.CheckpointError, match=r"missing weights \['mlp1.1.weight'\]"):
        tilevl.load_model(saved)


def test_unexpected_key_is_named(saved):
    _rewrite(saved, lambda t: t.__setitem__("vision_model.extra.weight", torch.zeros(2)))
    with pytest.raises(tilevl.CheckpointError, match="unexpected key 'vision_model.extra.weight'"):
        tilevl.load_model(saved)


def test_shape_mismatch_is_named(saved):
    _rewrite(saved, lambda t: t.__setitem__("mlp1.3.bias", torch.zeros(3)))
    with pytest.raises(tilevl.CheckpointError, match=r"shape mismatch for 'mlp1.3.bias': checkpoint \(3,\)"):
        tilevl.load_model(saved)


def test_unknown_architecture_is_named(saved):
    raw = json.loads((saved / "config.json").read_text())
    raw["architectures"], raw["model_type"] = ["LlavaForConditionalGeneration"], "llava"
    (saved / "config.json").write_text(json.dumps(raw))
    with pytest.raises(tilevl.CheckpointError, match="LlavaForConditionalGeneration"):
        tilevl.load_model(saved)


def test_missing_files_are_named(tmp_path, saved):
    with pytest.raises(tilevl.CheckpointError, match="no config.json"):
        tilevl.load_model(tmp_path / "nowhere")
    (saved / "model.safetensors").unlink()
    with pytest.raises(tilevl.CheckpointError, match="no weights found"):
        tilevl.load_model(saved)


def test_broken_config_json_gives_line(saved):
    (saved / "config.json").write_text('{\n  "vision_config": {,\n}')
    with pytest.raises(tilevl.CheckpointError, match="line 2"):
        tilevl.load_model(saved)


def test_pickle_weights_refused_unless_asked(saved):
    state = _tensors(saved)
    (saved / "model.safetensors").unlink()
    torch.save(state, saved / "pytorch_model.bin")
    with pytest.raises(tilevl.CheckpointError, match="pickle"):
        tilevl.load_model(saved)
    model = tilevl.load_model(saved, allow_pickle=True)  # read with weights_only=True
    assert torch.equal(model.mlp1[1].weight, state["mlp1.1.weight"])


def test_eight_bit_needs_a_gpu(saved):
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU error")
    with pytest.raises(tilevl.CheckpointError, match="CUDA"):
        tilevl.load_model(saved, load_in_8bit=True)


def test_corrupt_safetensors_is_named(saved):
    (saved / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(tilevl.CheckpointError, match="model.safetensors: cannot read safetensors"):
        tilevl.load_model(saved)


def test_saved_folder_has_the_usual_permissions(tmp_path, tiny_model):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        out = tilevl.save_model(tiny_model, tmp_path / "m")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
