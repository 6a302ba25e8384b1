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


def _mapped_ranges(path) -> list[tuple[int, int]]:
    """Address ranges where this process maps `path` (from /proc/self/maps)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(str(path)):
                lo, hi = line.split()[0].split("-")
                ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


def test_tensors_to_cast_are_not_views_of_the_file_map(tmp_path, tiny_model):
    """A mapped tensor's pages stay in RSS until the file closes; a cast one must not be mapped."""
    from tilevl.checkpoint.files import iter_tensors, weight_files

    tilevl.save_model(tiny_model, tmp_path / "m")
    file = weight_files(tmp_path / "m")[0]
    stored = dict(tiny_model.state_dict())
    kinds = {"mapped": 0, "private": 0}
    for cast_to in (None, torch.bfloat16):
        for key, tensor, _ in iter_tensors([file], cast_to=cast_to):
            inside = any(lo <= tensor.data_ptr() < hi for lo, hi in _mapped_ranges(file.resolve()))
            expect_private = cast_to is not None and tensor.is_floating_point()
            assert inside != expect_private, (key, cast_to)
            kinds["private" if expect_private else "mapped"] += 1
            if key in stored:
                torch.testing.assert_close(tensor, stored[key], rtol=0, atol=0)
    assert kinds["private"] > 0 and kinds["mapped"] > 0


def test_cast_load_equals_cast_model(tmp_path, tiny_model):
    tilevl.save_model(tiny_model, tmp_path / "m")
    for dtype in (torch.bfloat16, torch.float16):
        loaded = tilevl.load_model(tmp_path / "m", dtype=dtype)
        want = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tiny_model.state_dict().items()}
        for name, got in loaded.state_dict().items():
            assert got.dtype == want[name].dtype, name
            torch.testing.assert_close(got, want[name], rtol=0, atol=0, msg=name)
