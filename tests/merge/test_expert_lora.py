"""LoRA on MoE experts' stacked weights (PEFT target_parameters): folding and dense merging,
against PEFT's own forward and `get_delta_weight` as the reference."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from tilevl.checkpoint.files import weight_files
from tilevl.checkpoint.loader import load_model, save_model
from tilevl.errors import CheckpointError
from tilevl.merge.lora import adapter_for_base, merge_adapters, merge_lora_into_checkpoint, read_adapter
from tilevl.model.vlm import build_model

peft = pytest.importorskip("peft")

FAMILIES = ["tiny-qwen3-moe", "tiny-gpt-oss"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def _base(family):
    model = build_model(family, seed=0)
    model.img_context_token_id = 500
    return model


def _peft_model(family, seed):
    """The base with a random (non-zero B) LoRA on q_proj and on the stacked experts."""
    base = _base(family)
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=2, lora_alpha=6, lora_dropout=0.0, target_modules=["q_proj"],
                             target_parameters=EXPERTS, init_lora_weights=False)
    model = peft.get_peft_model(base, config)
    with torch.no_grad():  # init_lora_weights=False leaves ParamWrapper B random, but small: enlarge
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(20)
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(family)
    base = save_model(_base(family), root / "base")
    adapters = []
    for seed in (1, 2):
        _peft_model(family, seed).save_pretrained(str(root / f"a{seed}"))
        adapters.append(root / f"a{seed}")
    return family, base, adapters


@pytest.fixture()
def ids():
    return torch.randint(3, 400, (2, 12), generator=torch.Generator().manual_seed(1))


def test_adapter_modules_resolve_to_the_stacked_parameters(setup):
    family, base, adapters = setup
    adapter = adapter_for_base(read_adapter(adapters[0]), load_model(base).config)
    experts = {n: m for n, m in adapter.modules.items() if m.kind == "experts"}
    assert sorted(experts) == sorted(f"language_model.model.layers.{i}.{p}" for i in (0, 1) for p in EXPERTS)
    assert all(m.rank == 2 and m.scale == 3.0 for m in experts.values())
    assert all(m.fan_in_fan_out == (family == "tiny-gpt-oss") for m in experts.values())  # [E, in, out]


@pytest.mark.parametrize("layout", ["official", "native"])
def test_merge_lora_logits_equal_peft(tmp_path, setup, ids, layout):
    family, base, adapters = setup
    out = merge_lora_into_checkpoint(base, adapters[0], tmp_path / "merged", layout=layout)
    reference = peft.PeftModel.from_pretrained(_base(family), str(adapters[0])).eval()
    before, want = _logits(_base(family), ids), _logits(reference, ids)
    assert (want - before).abs().max() > 1e-2  # the expert LoRA changes the output
    torch.testing.assert_close(_logits(load_model(out), ids), want, atol=1e-5, rtol=1e-5)
    keys = set()
    for file in weight_files(out):
        with safe_open(file, framework="pt") as reader:
            keys |= set(reader.keys())
    if layout == "official" and family == "tiny-qwen3-moe":  # one key per expert, as published
        assert "language_model.model.layers.0.mlp.experts.3.gate_proj.weight" in keys
        assert not any(k.endswith("experts.gate_up_proj") for k in keys)


def test_dense_merge_adds_peft_deltas(tmp_path, setup):
    """task_arithmetic (weights 1, 0.5) = base + Σ w·ΔW, ΔW from PEFT's get_delta_weight."""
    family, base, adapters = setup
    out = merge_adapters(base, adapters, tmp_path / "ta", method="task_arithmetic", weights=[1.0, 0.5],
                         progress=False)
    merged = dict(load_model(out).named_parameters())
    want = dict(_base(family).named_parameters())
    with torch.no_grad():
        for seed, w in ((1, 1.0), (2, 0.5)):
            model = _peft_model(family, seed)
            for name, module in model.named_modules():
                if hasattr(module, "parameter_name"):
                    plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
                    key = f"{plain}.{module.parameter_name}"
                    want[key] = want[key] + w * module.get_delta_weight("default")
    for key in (f"language_model.model.layers.1.{p}" for p in EXPERTS):
        torch.testing.assert_close(merged[key], want[key], atol=1e-6, rtol=1e-5)
    ties = merge_adapters(base, adapters, tmp_path / "ties", method="ties", density=0.5, progress=False)
    assert load_model(ties).config.llm["model_type"] == load_model(base).config.llm["model_type"]


def test_two_d_only_paths_refuse_expert_adapters(tmp_path, setup):
    _, base, adapters = setup
    with pytest.raises(CheckpointError, match=r"--as-lora .*stacked expert parameter '.*experts\.\w+_proj'"):
        merge_adapters(base, adapters, tmp_path / "x", as_lora_rank=2, progress=False)
    with pytest.raises(CheckpointError, match=r"peft-lora takes 2-D LoRA modules only.*parameter .*experts\.\w+_proj"):
        merge_adapters(base, adapters, tmp_path / "y", method="ties", mode="peft-lora", progress=False)


def test_expert_adapter_on_a_dense_base_is_refused(tmp_path, setup):
    _, _, adapters = setup
    dense = save_model(_base("tiny-qwen3"), tmp_path / "dense")
    with pytest.raises(CheckpointError, match="LoRA on parameters of '.*mlp.experts.*', which the base model lacks"):
        merge_lora_into_checkpoint(dense, adapters[0], tmp_path / "out")
