"""InternVL3.5-Flash checkpoints (ViR) are refused, naming the missing router modules.

Flash is recognised by its config keys (flash_mode / thresholds) and, if a config lacks them,
by weights of its extra modules (mlp2, pooling_before_gating, gating), in either layout.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import tilevl
from tilevl.errors import CheckpointError


@pytest.fixture()
def saved(tmp_path):
    model = tilevl.build_model("tiny", seed=0)
    model.img_context_token_id = 5
    return tilevl.save_model(model, tmp_path / "tiny")


def test_flash_config_keys_are_refused(saved):
    config = json.loads((saved / "config.json").read_text())
    config.update(flash_mode=True, flash_relative_threshold=0.0, flash_absolute_threshold=1.0)
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: key 'flash_mode'.*InternVL3.5-Flash.*pooling_before_gating"):
        tilevl.load_model(saved)
    with pytest.raises(CheckpointError, match="Visual Resolution Router"):
        tilevl.read_config(saved)


@pytest.mark.parametrize("key", ["mlp2.0.weight", "pooling_before_gating.attn1.in_proj_weight",
                                 "gating.0.weight", "model.mlp2.dense1.weight"])
def test_flash_weights_are_refused(saved, key):
    tensors = load_file(str(saved / "model.safetensors"))
    tensors[key] = torch.zeros(2)
    save_file(tensors, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"weight '{key}'.*not implemented in tilevl"):
        tilevl.load_model(saved)


def test_plain_checkpoint_still_loads(saved):
    assert tilevl.load_model(saved).config.template == "Hermes-2"
