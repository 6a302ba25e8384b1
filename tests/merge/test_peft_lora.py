"""`tilevl merge --mode peft-lora` against PEFT itself: `add_weighted_adapter` on tiny adapters.

The same random stream feeds DARE on both sides (PEFT draws from torch's global generator;
during its call `torch.bernoulli` is pointed at a generator seeded like ours).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from tests.merge.test_lora import TARGETS, _base, _logits, _make_adapter
from tilevl.checkpoint.loader import load_model, save_model
from tilevl.errors import CheckpointError, ConfigError
from tilevl.merge.lora import merge_adapters, read_adapter
from tilevl.merge.peft_lora import COMBINATION_TYPES, write_peft_merged_adapter

peft = pytest.importorskip("peft")

WEIGHTS = [1.0, 0.5, -2.0]
SEED = 7


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft-adapters")
    return [_make_adapter(root / f"a{i}", seed=20 + i, targets=[*TARGETS, "embed_tokens"])
            for i in range(3)]


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    return save_model(_base(), tmp_path_factory.mktemp("peft-base") / "ckpt")


def _peft_merged(folders, combination, monkeypatch, density=0.5, svd_rank=None):
    """PeftModel with the three adapters and PEFT's merge of them as adapter "m"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.PeftModel.from_pretrained(_base(), str(folders[0]), adapter_name="a0")
        for i, folder in enumerate(folders[1:], 1):
            model.load_adapter(str(folder), adapter_name=f"a{i}")
    draws = torch.Generator().manual_seed(SEED)
    bernoulli = torch.bernoulli
    with monkeypatch.context() as patch:
        patch.setattr(torch, "bernoulli", lambda x, *a, **k: bernoulli(x, generator=draws))
        model.add_weighted_adapter(["a0", "a1", "a2"], WEIGHTS, "m", combination_type=combination,
                                   density=density, svd_rank=svd_rank)
    return model


def _peft_factors(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "m" in module.lora_A:
            out[name] = (module.lora_A["m"].weight, module.lora_B["m"].weight)
        elif hasattr(module, "lora_embedding_A") and "m" in module.lora_embedding_A:
            out[name] = (module.lora_embedding_A["m"], module.lora_embedding_B["m"])
    return out


@pytest.mark.parametrize("combination", [c for c in COMBINATION_TYPES if c != "svd"] + ["svd"])
def test_merged_factors_equal_peft_add_weighted_adapter(tmp_path, folders, monkeypatch, combination):
    model = _peft_merged(folders, combination, monkeypatch)
    expected = _peft_factors(model)
    sources = [read_adapter(f) for f in folders]
    order = [n for n, _ in _base().named_modules() if n in sources[0].modules]
    merged = read_adapter(write_peft_merged_adapter(sources, order, tmp_path / "m", combination,
                                                    WEIGHTS, 0.5, seed=SEED))
    assert set(merged.modules) == set(expected) and len(expected) > 5
    for name, (a_peft, b_peft) in expected.items():
        a, b = merged.lora_pair(name)
        torch.testing.assert_close(a, a_peft.detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(b, b_peft.detach(), rtol=0, atol=1e-6)
        layer = model.base_model.model.get_submodule(name)
        assert merged.modules[name].scale == layer.scaling["m"] == 1.0


def test_peft_lora_checkpoint_equals_peft_model_and_differs_from_dense(tmp_path, folders, base_ckpt,
                                                                       monkeypatch):
    ids = torch.randint(3, 400, (2, 9), generator=torch.Generator().manual_seed(1))
    model = _peft_merged(folders, "ties", monkeypatch)
    model.set_adapter("m")
    out = merge_adapters(base_ckpt, folders, tmp_path / "peft", method="ties", density=0.5,
                         weights=WEIGHTS, mode="peft-lora", progress=False)
    torch.testing.assert_close(_logits(load_model(out), ids), _logits(model.eval(), ids),
                               rtol=0, atol=1e-5)
    record = json.loads((out / "config.json").read_text())["merged_adapters"]
    assert record == [read_adapter(f).fingerprint for f in folders]
    with pytest.raises(CheckpointError, match="already folded"):
        merge_adapters(out, folders[:1], tmp_path / "again", mode="peft-lora", progress=False)
    # the dense mode (TIES on B·A·scale) is a different merge: cross terms B_i·A_j are absent
    dense = merge_adapters(base_ckpt, folders, tmp_path / "dense", method="ties", density=0.5,
                           weights=WEIGHTS, progress=False)
    key = "language_model.model.layers.0.self_attn.q_proj.weight"
    gap = (load_file(out / "model.safetensors")[key] - load_file(dense / "model.safetensors")[key])
    assert gap.abs().max() > 1e-3


def _tower_adapter(folder, seed):
    """An adapter as `tilevl train` writes it with use_backbone_lora 2 + use_llm_lora 4: one
    PEFT folder whose ViT modules have another rank (rank_pattern / alpha_pattern)."""
    from tilevl.train.args import TrainConfig
    from tilevl.train.lora import apply_lora

    model = apply_lora(_base(), TrainConfig(use_llm_lora=4, use_backbone_lora=2, freeze_llm=True,
                                            freeze_backbone=True, freeze_mlp=True))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)  # PEFT starts B at zero; a trained B is not
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(folder))
    return folder


def test_peft_lora_merges_vit_and_llm_loras_of_different_ranks(tmp_path, base_ckpt, monkeypatch):
    """The MMAlaya2 recipe's adapters (LoRA on the ViT and the LLM): PEFT's LoRA-TIES keeps
    each module's rank in memory; the written adapter must say so to load and fold the same."""
    folders = [_tower_adapter(tmp_path / f"t{i}", 30 + i) for i in range(3)]
    assert read_adapter(folders[0]).config["rank_pattern"]
    model = _peft_merged(folders, "ties", monkeypatch)
    expected = _peft_factors(model)
    assert {a.shape[0] for a, _ in expected.values()} == {2, 4}
    assert any(n.startswith("vision_model.") for n in expected)
    out = merge_adapters(base_ckpt, folders, tmp_path / "peft", method="ties", density=0.5,
                         weights=WEIGHTS, mode="peft-lora", progress=False)
    merged, base = load_model(out).state_dict(), load_model(base_ckpt).state_dict()
    for name, (a, b) in expected.items():
        layer = model.base_model.model.get_submodule(name)
        assert layer.scaling["m"] == 1.0
        torch.testing.assert_close(merged[name + ".weight"] - base[name + ".weight"],
                                   (b @ a).detach(), rtol=0, atol=1e-5)
    # The dense mode folds the ViT deltas too, each with its own scale (PEFT's delta weights).
    dense = merge_adapters(base_ckpt, folders, tmp_path / "dense", method="task_arithmetic",
                           weights=WEIGHTS, progress=False)
    dense = load_model(dense).state_dict()
    for name in expected:
        layer = model.base_model.model.get_submodule(name)
        want = sum(w * layer.get_delta_weight(f"a{i}") for i, w in enumerate(WEIGHTS)).detach()
        torch.testing.assert_close(dense[name + ".weight"] - base[name + ".weight"], want,
                                   rtol=0, atol=1e-5)


def test_peft_lora_as_lora_writes_peft_adapter_and_checks_rank(tmp_path, folders, base_ckpt):
    out = merge_adapters(base_ckpt, folders, tmp_path / "ad", method="ties_svd", density=0.5,
                         as_lora_rank=2, mode="peft-lora", progress=False)
    adapter = read_adapter(out)
    assert adapter.config["r"] == adapter.config["lora_alpha"] == 2
    with pytest.raises(ConfigError, match="rank 4, not --as-lora 2"):
        merge_adapters(base_ckpt, folders, tmp_path / "bad", method="ties", as_lora_rank=2,
                       mode="peft-lora", progress=False)
    with pytest.raises(ConfigError, match="not a PEFT combination_type"):
        merge_adapters(base_ckpt, folders, tmp_path / "bad2", method="task_arithmetic",
                       mode="peft-lora", progress=False)


def test_cli_peft_lora_mode_and_its_refusals(tmp_path, folders, base_ckpt):
    from tilevl.cli import main

    argv = ["merge", "--base", str(base_ckpt), "--adapters", *map(str, folders), "--density", "0.5"]
    assert main([*argv, "--mode", "peft-lora", "--method", "ties", "--out", str(tmp_path / "cli")]) == 0
    api = merge_adapters(base_ckpt, folders, tmp_path / "api", method="ties", density=0.5,
                         mode="peft-lora", progress=False)
    a, b = load_file(tmp_path / "cli" / "model.safetensors"), load_file(api / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit, match="only with --mode peft-lora"):
        main([*argv, "--method", "ties_svd", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="no --lam"):
        main([*argv, "--mode", "peft-lora", "--lam", "0.5", "--out", str(tmp_path / "y")])
