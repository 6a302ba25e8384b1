"""Loading builds on the meta device and skips random init: the file's weights are the first values."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

import tilevl


def test_load_runs_no_random_init(tmp_path, tiny_model, monkeypatch):
    """Random init of meta tensors is wasted dispatch (~40 % of a 1.5 GB load): none may run."""
    tilevl.save_model(tiny_model, tmp_path / "m")
    calls = []
    original = PreTrainedModel.init_weights
    monkeypatch.setattr(PreTrainedModel, "init_weights", lambda self: (calls.append(type(self).__name__), original(self)))
    normal = torch.nn.init.normal_
    monkeypatch.setattr(torch.nn.init, "normal_", lambda *a, **k: (calls.append("normal_"), normal(*a, **k))[1])

    loaded = tilevl.load_model(tmp_path / "m")

    assert calls == []
    for (name, want), (_, got) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    # Buffers computed at construction (rotary frequencies) are real, not meta.
    assert not any(b.is_meta for b in loaded.buffers())
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, tiny_model(ids).logits, rtol=0, atol=0)
