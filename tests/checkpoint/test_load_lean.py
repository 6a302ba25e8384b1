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


def _mapped_kib(path) -> int:
    """Resident KiB of this process's mappings of `path` (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split()[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip().endswith(str(path))
            elif inside and first == "Rss:":
                total += int(line.split()[1])
    return total


def test_cast_tensors_leave_no_mapped_pages_behind(tmp_path):
    """A mapped tensor's pages stay in RSS until the file closes, unless handed back after the cast."""
    from safetensors.torch import save_file

    from tilevl.checkpoint.files import iter_tensors

    g = torch.Generator().manual_seed(0)
    stored = {f"w{i}": torch.randn(256, 1024, generator=g) for i in range(8)}  # 1 MiB each
    stored["ids"] = torch.arange(10)
    file = tmp_path / "model.safetensors"
    save_file(stored, str(file))
    # Without a cast every page read stays resident; with one, at most the current tensor
    # (plus the kernel's 64 KiB fault-around at its edges) is.
    for cast_to, most in ((None, None), (torch.bfloat16, 1024 + 256)):
        held = []
        for key, tensor, _ in iter_tensors([file], cast_to=cast_to):
            held.append((key, tensor))  # kept past the release: its values must survive it
            tensor.to(torch.bfloat16)   # the cast reads every page
            resident = _mapped_kib(file.resolve())
        if most is None:
            assert resident >= 8 * 1024
        else:
            assert resident <= most, resident
        for key, tensor in held:
            torch.testing.assert_close(tensor, stored[key], rtol=0, atol=0, msg=key)
        assert len(held) == 9
        del held, tensor


def test_cast_load_equals_cast_model(tmp_path, tiny_model):
    tilevl.save_model(tiny_model, tmp_path / "m")
    for dtype in (torch.bfloat16, torch.float16):
        loaded = tilevl.load_model(tmp_path / "m", dtype=dtype)
        want = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tiny_model.state_dict().items()}
        for name, got in loaded.state_dict().items():
            assert got.dtype == want[name].dtype, name
            torch.testing.assert_close(got, want[name], rtol=0, atol=0, msg=name)
