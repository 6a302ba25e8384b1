"""Freeze flags and LoRA leave exactly the expected parameters trainable (counted independently)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tilevl.train.args import VISION_LORA_TARGETS, TrainConfig
from tilevl.train.lora import (
    LLM_LORA_TARGETS, apply_lora, base_model, count_parameters, default_llm_targets, is_peft_model,
    trainable_base_names,
)


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_numel(model: nn.Module, prefix: str, targets, rank: int) -> int:
    """r·(in + out) per adapted Linear, from the base model's own module list."""
    total = 0
    for name, module in model.named_modules():
        if name.startswith(prefix) and isinstance(module, nn.Linear) and name.endswith(tuple(targets)):
            total += rank * (module.in_features + module.out_features)
    return total


@pytest.fixture()
def model(tiny_model):
    return tiny_model


def test_no_flags_train_everything(model):
    trainable, total = count_parameters(apply_lora(model, TrainConfig()))
    assert trainable == total == numel(model)


@pytest.mark.parametrize("backbone,mlp,llm", [(True, False, False), (True, True, False),
                                              (False, False, True), (True, True, True)])
def test_freeze_flags(model, backbone, mlp, llm):
    parts = {"vision_model": (backbone, model.vision_model), "mlp1": (mlp, model.mlp1),
             "language_model": (llm, model.language_model)}
    expected = sum(numel(m) for frozen, m in parts.values() if not frozen)
    out = apply_lora(model, TrainConfig(freeze_backbone=backbone, freeze_mlp=mlp, freeze_llm=llm))
    assert out is model and count_parameters(model)[0] == expected


def test_unfreeze_vit_layers_and_lm_head(model):
    config = TrainConfig(freeze_backbone=True, freeze_llm=True, freeze_mlp=True,
                         unfreeze_vit_layers=-1, unfreeze_lm_head=True)
    apply_lora(model, config)
    expected = numel(model.vision_model.encoder.layers[-1]) + model.language_model.lm_head.weight.numel()
    assert count_parameters(model)[0] == expected


def test_llm_targets_follow_the_architecture(model):
    assert default_llm_targets(model) == list(LLM_LORA_TARGETS["llama/qwen2"])


def test_lora_on_both_towers_counts_and_alphas(model):
    config = TrainConfig(use_llm_lora=8, use_backbone_lora=4, freeze_llm=True, freeze_backbone=True,
                         freeze_mlp=False)
    llm_targets = LLM_LORA_TARGETS["llama/qwen2"]
    expected = (lora_numel(model, "language_model.", llm_targets, 8)
                + lora_numel(model, "vision_model.", VISION_LORA_TARGETS, 4) + numel(model.mlp1))
    wrapped = apply_lora(model, config)
    assert is_peft_model(wrapped) and base_model(wrapped) is model
    assert count_parameters(wrapped)[0] == expected
    assert {n.split("base_model.model.")[-1].split(".")[0] for n in trainable_base_names(wrapped)} == {"mlp1"}
    vit_qkv = model.vision_model.encoder.layers[0].attn.qkv
    llm_q = model.language_model.model.layers[0].self_attn.q_proj
    assert vit_qkv.r["default"] == 4 and vit_qkv.scaling["default"] == 2.0  # alpha = 2r, as upstream
    assert llm_q.r["default"] == 8 and llm_q.scaling["default"] == 2.0
    # ViT targets never match inside the LLM: its MLP has no fc1/fc2, its attention no qkv.
    adapted = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert all(n.startswith(("vision_model.encoder.layers.", "language_model.")) for n in adapted)


def test_lora_backbone_only_keeps_the_llm_trainable_when_asked(model):
    expected = lora_numel(model, "vision_model.", VISION_LORA_TARGETS, 2) + numel(model.language_model)
    wrapped = apply_lora(model, TrainConfig(use_backbone_lora=2, freeze_llm=False, freeze_mlp=True))
    assert count_parameters(wrapped)[0] == expected


def test_lora_forward_starts_equal_to_the_base(model, tokenizer):
    ids = torch.randint(10, 300, (1, 12))
    with torch.no_grad():
        before = model(ids).logits
        wrapped = apply_lora(model, TrainConfig(use_llm_lora=4, use_backbone_lora=4))
        torch.testing.assert_close(wrapped(input_ids=ids).logits, before)  # B starts at zero


def test_bad_targets_are_named(model):
    from tilevl.errors import ConfigError

    with pytest.raises(ConfigError, match="llm_lora_targets: no module"):
        apply_lora(model, TrainConfig(use_llm_lora=4, llm_lora_targets=["attention.wqkv"]))


# ---- MoE experts: PEFT target_parameters on the stacked 3-D expert weights ---------------------
def test_expert_lora_trains_the_experts(tokenizer):
    from tilevl import build_model
    from tilevl.train.lora import expert_lora_parameters

    model = build_model("tiny-qwen3-moe", seed=0)
    assert expert_lora_parameters(model) == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    config = TrainConfig(use_llm_lora=2, llm_lora_experts=True, lora_dropout=0.0, freeze_backbone=True,
                         freeze_mlp=True)
    wrapped = apply_lora(model, config)
    experts = {n: p for n, p in wrapped.named_parameters() if "experts" in n and "lora_" in n}
    # Two ParamWrappers per layer (gate_up inside down, or the other way), A and B each: 2·2·2.
    assert len(experts) == 8 and all(p.requires_grad for p in experts.values())
    # A: [r·E, in] (PEFT stacks the experts' ranks), so the 4 experts get rank 2 each.
    assert {p.shape[0] for n, p in experts.items() if "lora_A" in n} == {2 * 4}
    before = {n: p.detach().clone() for n, p in experts.items()}
    opt = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(10, 300, (2, 16))
    for _ in range(2):
        loss = wrapped(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = [n for n, p in experts.items() if p.grad is not None and p.grad.abs().sum() > 0]
        assert len(grads) >= 4  # every B has a gradient from step 1, the As once B moved off 0
        opt.step()
        opt.zero_grad()
    assert all(not torch.equal(p, before[n]) for n, p in experts.items())
    base = [p for n, p in model.language_model.named_parameters() if n.endswith((".gate_up_proj", ".down_proj")) and "experts" in n]
    assert base and not any(p.requires_grad for p in base)  # the fused base weights stay frozen


def test_expert_lora_refuses_dense_llms_and_dropout(model):
    from tilevl.errors import ConfigError

    with pytest.raises(ConfigError, match="llm_lora_experts: the LLM has no stacked"):
        apply_lora(model, TrainConfig(use_llm_lora=2, llm_lora_experts=True, lora_dropout=0.0))
    with pytest.raises(ConfigError, match="llm_lora_experts: needs lora_dropout: 0"):
        TrainConfig(use_llm_lora=2, llm_lora_experts=True)
    with pytest.raises(ConfigError, match="llm_lora_experts: needs use_llm_lora > 0"):
        TrainConfig(llm_lora_experts=True, lora_dropout=0.0)
