"""LoRA folding and merging on the tiny model, against PEFT's own LoRA forward as reference.

Adapters are written by `peft.get_peft_model(...).save_pretrained`, exactly what users bring.
"""

from __future__ import annotations

import json
import warnings
import weakref

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tilevl.checkpoint.loader import load_model, save_model
from tilevl.errors import CheckpointError
from tilevl.merge import lora as lora_mod
from tilevl.merge.checkpoints import merge_checkpoints
from tilevl.merge.lora import (
    adapter_deltas,
    fold_adapter,
    merge_adapters,
    merge_lora_into_checkpoint,
    read_adapter,
)
from tilevl.merge.methods import merge_task_arithmetic, merge_ties
from tilevl.model.vlm import build_model

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "v_proj", "o_proj", "qkv", "mlp1.1"]


def _base():
    model = build_model("tiny", seed=0)
    model.img_context_token_id = 500  # the native layout needs one; no image is used here
    return model


def _make_adapter(folder, seed, targets=TARGETS, r=4, alpha=8, rslora=False):
    """A random (non-zero B) PEFT adapter of the tiny model, saved as PEFT saves it."""
    base = _base()  # build_model seeds the global generator: seed the LoRA init after it
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False,
                             use_rslora=rslora)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not a transformers model" when embeddings are targeted
        peft.get_peft_model(base, config).save_pretrained(str(folder))
    return folder


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _peft_logits(adapter_path, ids):
    model = peft.PeftModel.from_pretrained(_base(), str(adapter_path)).eval()
    return _logits(model, ids)


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    return save_model(_base(), tmp_path_factory.mktemp("base") / "ckpt")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [_make_adapter(root / f"a{i}", seed=10 + i) for i in range(3)]


@pytest.fixture()
def ids():
    return torch.randint(3, 400, (2, 9), generator=torch.Generator().manual_seed(1))


def test_read_adapter_names_and_scales(tmp_path, adapters):
    adapter = read_adapter(adapters[0])
    name = "language_model.model.layers.0.self_attn.q_proj"
    assert name in adapter.modules and "vision_model.encoder.layers.1.attn.qkv" in adapter.modules
    assert adapter.modules[name].scale == 8 / 4 and adapter.modules[name].rank == 4
    rs = read_adapter(_make_adapter(tmp_path / "rs", seed=1, r=4, alpha=8, rslora=True))
    assert rs.modules[name].scale == 8 / 4**0.5
    assert adapter.fingerprint != rs.fingerprint


def test_deltas_equal_peft_get_delta_weight(adapters):
    deltas = adapter_deltas(read_adapter(adapters[1]))
    model = peft.PeftModel.from_pretrained(_base(), str(adapters[1]))
    for name, delta in deltas.items():
        layer = model.base_model.model.get_submodule(name)
        torch.testing.assert_close(delta, layer.get_delta_weight("default"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout, rslora, targets", [
    ("official", False, TARGETS), ("native", True, TARGETS), ("official", False, ["embed_tokens", "gate_proj"]),
])
def test_merged_checkpoint_logits_equal_peft(tmp_path, base_ckpt, ids, layout, rslora, targets):
    adapter = _make_adapter(tmp_path / "a", seed=5, rslora=rslora, targets=targets)
    out = merge_lora_into_checkpoint(base_ckpt, adapter, tmp_path / "merged", layout=layout)
    merged = load_model(out)
    torch.testing.assert_close(_logits(merged, ids), _peft_logits(adapter, ids), rtol=0, atol=1e-5)
    assert not torch.allclose(_logits(merged, ids), _logits(_base(), ids), atol=1e-3)
    raw = json.loads((out / "config.json").read_text())
    assert raw["merged_adapters"] == [read_adapter(adapter).fingerprint]


def test_folding_twice_is_refused(tmp_path, base_ckpt, adapters):
    model = fold_adapter(_base(), adapters[0])
    before = model.language_model.lm_head.weight.clone()
    with pytest.raises(CheckpointError, match="already folded"):
        fold_adapter(model, adapters[0])
    assert torch.equal(model.language_model.lm_head.weight, before)
    fold_adapter(model, adapters[1])  # another adapter is fine
    once = merge_lora_into_checkpoint(base_ckpt, adapters[0], tmp_path / "once")
    assert load_model(once).config.extra["merged_adapters"] == [read_adapter(adapters[0]).fingerprint]
    with pytest.raises(CheckpointError, match="already folded"):
        merge_lora_into_checkpoint(once, adapters[0], tmp_path / "twice")
    with pytest.raises(CheckpointError, match="already folded"):
        merge_adapters(once, [adapters[1], adapters[0]], tmp_path / "twice2", progress=False)
    assert not (tmp_path / "twice").exists() and not (tmp_path / "twice2").exists()


def test_folded_record_survives_every_layout(tmp_path, base_ckpt, adapters):
    from tilevl.cli import main

    once = merge_lora_into_checkpoint(base_ckpt, adapters[0], tmp_path / "once")
    record = [read_adapter(adapters[0]).fingerprint]
    assert main(["convert", str(once), str(tmp_path / "native"), "--layout", "native"]) == 0
    assert json.loads((tmp_path / "native" / "config.json").read_text())["merged_adapters"] == record
    assert load_model(tmp_path / "native").config.extra["merged_adapters"] == record
    with pytest.raises(CheckpointError, match="already folded"):
        merge_lora_into_checkpoint(tmp_path / "native", adapters[0], tmp_path / "twice")
    with pytest.raises(CheckpointError, match="already folded"):
        merge_adapters(tmp_path / "native", [adapters[0]], tmp_path / "twice2", progress=False)
    assert main(["convert", str(tmp_path / "native"), str(tmp_path / "back"), "--layout", "official"]) == 0
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert back["merged_adapters"] == record
    # the record must not make the official writer drop the settings equal to tilevl's defaults
    assert back["ps_version"] == "v2" and "select_layer" in back and "downsample_ratio" in back
    with pytest.raises(CheckpointError, match="already folded"):
        merge_lora_into_checkpoint(tmp_path / "back", adapters[0], tmp_path / "twice3")
    # a second adapter folded into the native copy adds to the record, in either output layout
    both = merge_lora_into_checkpoint(tmp_path / "native", adapters[1], tmp_path / "both", layout="native")
    assert load_model(both).config.extra["merged_adapters"] == [*record, read_adapter(adapters[1]).fingerprint]


def test_ties_density_one_single_adapter_equals_fold(tmp_path, base_ckpt, adapters):
    folded = merge_lora_into_checkpoint(base_ckpt, adapters[2], tmp_path / "fold")
    tied = merge_adapters(base_ckpt, [adapters[2]], tmp_path / "ties", method="ties", density=1.0, progress=False)
    a, b = load_file(folded / "model.safetensors"), load_file(tied / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert json.loads((tied / "config.json").read_text())["merged_adapters"] == [read_adapter(adapters[2]).fingerprint]


def test_merge_adapters_is_the_per_module_merge(tmp_path, base_ckpt, adapters):
    out = merge_adapters(base_ckpt, adapters, tmp_path / "m", method="ties", density=0.3, lam=0.8,
                         weights=[1.0, 0.5, 2.0], progress=False)
    merged, base = load_file(out / "model.safetensors"), load_file(base_ckpt / "model.safetensors")
    read = [read_adapter(p) for p in adapters]
    for name in ("language_model.model.layers.1.self_attn.v_proj", "vision_model.encoder.layers.0.attn.qkv"):
        expected = merge_ties([lora_mod.module_delta(a, name) for a in read], [1.0, 0.5, 2.0], 0.3, 0.8)
        torch.testing.assert_close(merged[name + ".weight"], base[name + ".weight"] + expected, rtol=0, atol=1e-6)
    untouched = "language_model.model.layers.0.mlp.down_proj.weight"
    assert torch.equal(merged[untouched], base[untouched])
    dare = merge_adapters(base_ckpt, adapters, tmp_path / "d1", method="dare_ties", density=0.5, seed=3, progress=False)
    again = merge_adapters(base_ckpt, adapters, tmp_path / "d2", method="dare_ties", density=0.5, seed=3, progress=False)
    assert all(torch.equal(t, load_file(again / "model.safetensors")[k]) for k, t in load_file(dare / "model.safetensors").items())


def test_as_lora_round_trip(tmp_path, base_ckpt, adapters, ids):
    out = merge_adapters(base_ckpt, [adapters[0]], tmp_path / "svd", density=1.0, as_lora_rank=4, progress=False)
    svd, original = read_adapter(out), read_adapter(adapters[0])
    assert svd.modules.keys() == original.modules.keys()
    assert {m.rank for m in svd.modules.values()} == {4}
    for name, delta in adapter_deltas(original).items():
        torch.testing.assert_close(lora_mod.module_delta(svd, name), delta, rtol=0, atol=1e-5)
    torch.testing.assert_close(_peft_logits(out, ids), _peft_logits(adapters[0], ids), rtol=0, atol=1e-5)
    # Three adapters merged into rank 8: loadable by PEFT, equal to folding that adapter.
    multi = merge_adapters(base_ckpt, adapters, tmp_path / "svd3", method="ties", as_lora_rank=8, progress=False)
    torch.testing.assert_close(_peft_logits(multi, ids), _logits(fold_adapter(_base(), multi), ids), rtol=0, atol=1e-5)


def test_merge_streams_one_module_at_a_time(tmp_path, base_ckpt, adapters, monkeypatch):
    # Record every densified delta and every merge input; CPython frees a tensor when its
    # last reference goes (no cycles here), so a dead weakref means the merge dropped it.
    events: list[str] = []
    buffers: list[weakref.ref] = []
    most_buffers = 0
    real_delta, real_merge = lora_mod.module_delta, lora_mod.merge_deltas

    def counting_delta(adapter, name):
        events.append(name)
        return real_delta(adapter, name)

    def counting_merge(method, deltas, **kw):
        nonlocal most_buffers
        buffers.append(weakref.ref(deltas))
        most_buffers = max(most_buffers, sum(ref() is not None for ref in buffers))
        events.append("merge")
        return real_merge(method, deltas, **kw)

    monkeypatch.setattr(lora_mod, "module_delta", counting_delta)
    monkeypatch.setattr(lora_mod, "merge_deltas", counting_merge)
    merge_adapters(base_ckpt, adapters, tmp_path / "m", method="ties", progress=False)
    names = list(read_adapter(adapters[0]).modules)
    # Module by module: its 3 deltas, then its merge, before the next module is densified.
    assert events == [e for name in names for e in (name, name, name, "merge")]
    assert most_buffers == 1  # one module's [3, out, in] stack alive at a time


def test_merge_checkpoints_task_vectors(tmp_path, base_ckpt):
    tuned = []
    for i in range(2):
        model = _base()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01 * (i + 1))
        tuned.append(save_model(model, tmp_path / f"ft{i}"))
    out = merge_checkpoints(base_ckpt, tuned, tmp_path / "ta", method="task_arithmetic", weights=[0.3, 0.7], lam=1.0, progress=False)
    base = load_file(base_ckpt / "model.safetensors")
    fts = [load_file(t / "model.safetensors") for t in tuned]
    merged = load_file(out / "model.safetensors")
    for key in ("mlp1.1.weight", "language_model.model.layers.1.mlp.up_proj.weight"):
        deltas = [ft[key] - base[key] for ft in fts]
        torch.testing.assert_close(merged[key], base[key] + merge_task_arithmetic(deltas, [0.3, 0.7]), rtol=0, atol=1e-6)
    ties = merge_checkpoints(base_ckpt, tuned, tmp_path / "ties", density=0.2, progress=False)
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    expected = base[key] + merge_ties([ft[key] - base[key] for ft in fts], density=0.2)
    torch.testing.assert_close(load_file(ties / "model.safetensors")[key], expected, rtol=0, atol=1e-6)
    load_model(ties)  # a loadable checkpoint


# ---- bad input ----------------------------------------------------------------------------------
def _rewrite(src, dst, edit_tensors=None, edit_config=None):
    """Copy an adapter folder, editing its tensors dict and/or config dict."""
    dst.mkdir()
    tensors = load_file(src / "adapter_model.safetensors")
    config = json.loads((src / "adapter_config.json").read_text())
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        edit_config(config)
    save_file(tensors, str(dst / "adapter_model.safetensors"))
    (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst


Q0 = "base_model.model.language_model.model.layers.0.self_attn.q_proj"


def test_bad_adapters_are_refused_with_path_and_module(tmp_path, base_ckpt, adapters):
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        read_adapter(tmp_path)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((adapters[0] / "adapter_config.json").read_text())
    torch.save({}, pickled / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="adapter_model.bin, a pickle"):
        read_adapter(pickled)

    def widen(t):  # an adapter for a wider base: B has 80 rows where q_proj has 64
        t[Q0 + ".lora_B.weight"] = torch.randn(80, 4)
    other = _rewrite(adapters[0], tmp_path / "other", widen)
    with pytest.raises(CheckpointError, match=r"other: module 'language_model.model.layers.0.self_attn.q_proj'.*\(80, 64\)"):
        merge_adapters(base_ckpt, [adapters[0], other], tmp_path / "x", progress=False)
    with pytest.raises(CheckpointError, match="other: module .*q_proj"):
        fold_adapter(_base(), other)

    def drop(t):
        del t[Q0 + ".lora_A.weight"], t[Q0 + ".lora_B.weight"]
    fewer = _rewrite(adapters[1], tmp_path / "fewer", drop)
    with pytest.raises(CheckpointError, match=r"fewer: targets other modules.*lacking \['language_model.model.layers.0.self_attn.q_proj'\]"):
        merge_adapters(base_ckpt, [adapters[0], fewer], tmp_path / "x", progress=False)

    def rank8(c):
        c["r"] = 8
    wrong_rank = _rewrite(adapters[0], tmp_path / "rank", edit_config=rank8)
    with pytest.raises(CheckpointError, match="rank: module .* rank 4, adapter_config.json says 8"):
        read_adapter(wrong_rank)

    def half(t):
        del t[Q0 + ".lora_B.weight"]
    halves = _rewrite(adapters[0], tmp_path / "half", half)
    with pytest.raises(CheckpointError, match="half: module .*q_proj.* not both"):
        read_adapter(halves)

    def stray(t):
        t["base_model.model.mlp1.1.lora_magnitude_vector"] = torch.ones(64)
    dora = _rewrite(adapters[0], tmp_path / "dora", stray)
    with pytest.raises(CheckpointError, match="not a LoRA factor"):
        read_adapter(dora)
    assert not (tmp_path / "x").exists()


def test_tied_embeddings_are_refused(tmp_path):
    model = build_model("tiny", seed=0)
    model.language_model.lm_head.weight = model.language_model.model.embed_tokens.weight
    adapter = _make_adapter(tmp_path / "emb", seed=2, targets=["embed_tokens"])
    with pytest.raises(CheckpointError, match="tied to"):
        fold_adapter(model, adapter)


def test_bad_checkpoints_are_refused(tmp_path, base_ckpt, adapters):
    with pytest.raises(CheckpointError, match="no config.json"):
        merge_adapters(tmp_path, adapters, tmp_path / "x", progress=False)
    small = save_model(build_model("tiny", seed=0, downsample_ratio=0.25), tmp_path / "small")
    with pytest.raises(CheckpointError, match="keys differ|shape"):
        merge_checkpoints(base_ckpt, [small], tmp_path / "y", progress=False)
    with safe_open(base_ckpt / "model.safetensors", "pt") as f:
        assert len(list(f.keys())) > 0


def test_upstream_internlm2_adapter_folds_as_on_the_packed_weights(tmp_path):
    """An adapter in InternVL's own InternLM2 naming (attention.wqkv, feed_forward.w1 …, what
    MMAlaya2 trained on InternVL-Chat-V1-5) folds into our Llama build exactly as adding
    B·A·scale to the packed official weights does."""
    from tilevl.checkpoint.files import weight_files
    from tilevl.config import ModelConfig
    from tests.checkpoint.test_official import INTERNLM2_LLM

    model = build_model(ModelConfig.from_name("tiny", llm=INTERNLM2_LLM), seed=0)
    model.img_context_token_id = 20
    base = save_model(model, tmp_path / "base")
    torch.manual_seed(1)
    r, alpha, tensors, deltas = 4, 8, {}, {}
    for layer in (0, 1):
        for module, (out, inp) in (("attention.wqkv", (128, 64)), ("attention.wo", (64, 64)),
                                   ("feed_forward.w1", (96, 64))):
            name = f"language_model.model.layers.{layer}.{module}"
            a, b = torch.randn(r, inp) * 0.1, torch.randn(out, r) * 0.1
            tensors[f"base_model.model.{name}.lora_A.weight"] = a
            tensors[f"base_model.model.{name}.lora_B.weight"] = b
            deltas[name + ".weight"] = b @ a * (alpha / r)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": alpha,
         "target_modules": ["attention.wqkv", "attention.wo", "feed_forward.w1"]}))

    # The reference: the deltas added to the official (packed) tensors, loaded as usual.
    (expected := tmp_path / "expected").mkdir()
    (expected / "config.json").write_text((base / "config.json").read_text())
    official = {}
    for f in weight_files(base):
        official.update(load_file(f))
    for key, delta in deltas.items():
        official[key] = official[key] + delta
    save_file(official, str(expected / "model.safetensors"), metadata={"format": "pt"})

    ids = torch.tensor([[1, 5, 9, 33, 7, 2]])
    want = _logits(load_model(expected), ids)
    folded = merge_lora_into_checkpoint(base, adapter, tmp_path / "folded")
    torch.testing.assert_close(_logits(load_model(folded), ids), want, atol=1e-5, rtol=1e-5)
    ties = merge_adapters(base, [adapter], tmp_path / "ties", method="ties", density=1.0,
                          progress=False)
    torch.testing.assert_close(_logits(load_model(ties), ids), want, atol=1e-5, rtol=1e-5)
    # On a base that is not InternLM2 the same names are refused, naming the module.
    with pytest.raises(CheckpointError, match=r"layers\.0\.attention\.w.*not in the base model"):
        fold_adapter(_base(), adapter)
