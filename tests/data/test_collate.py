"""Tests of batching: padding shapes, pack planning, and packed == separate on the real model.

The packing test runs the tiny InternVL (vision tower, splice and Qwen2) forward in float64.
"""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from tilevl.config import ModelConfig
from tilevl.data.collate import (
    LengthGroupedBatchSampler, PackedBatchSampler, additive_mask, pack_collate, pack_samples,
    pad_collate, plan_packs,
)
from tilevl.data.dataset import SFTDataset
from tilevl.inputs.template import IGNORE_INDEX

PAD = 0


def fake(n, tiles=0, start=10):
    """A sample of n tokens (labels on its second half) with `tiles` random tiles."""
    ids = torch.arange(start, start + n) % 300 + 3
    labels = ids.clone()
    labels[: n // 2] = IGNORE_INDEX
    pixels = torch.randn(tiles, 3, 56, 56) if tiles else None
    return {"input_ids": ids, "labels": labels, "pixel_values": pixels,
            "num_tiles": [tiles] if tiles else []}


@pytest.fixture(scope="module")
def model(tokenizer):
    """The tiny preset in float64, so sums of ~100 token losses compare to 1e-5."""
    from tilevl import build_model
    from tilevl.checkpoint.tokenizer import IMG_CONTEXT_TOKEN

    model = build_model("tiny", seed=0, dtype=torch.float64)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    return model


@pytest.fixture(scope="module")
def samples(tmp_path_factory, tokenizer):
    """Real dataset samples: two with images (1 and 3+1 tiles), three pure text, mixed lengths.

    Short system prompts keep the rows short (the default one is ~150 tiny-BPE tokens).
    """
    tmp_path = tmp_path_factory.mktemp("collate")
    Image.new("RGB", (56, 56), (10, 200, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (160, 60), (200, 10, 10)).save(tmp_path / "b.png")
    records = [
        {"image": "a.png", "conversations": [{"from": "system", "value": "s"},
                                             {"from": "human", "value": "Colour?"},
                                             {"from": "gpt", "value": "Green."}]},
        {"conversations": [{"from": "system", "value": "x"},
                           {"from": "human", "value": "Say hi " * 5},
                           {"from": "gpt", "value": "hi " * 9},
                           {"from": "human", "value": "again"},
                           {"from": "gpt", "value": "hi"}]},
        {"image": "b.png", "conversations": [{"from": "system", "value": "t"},
                                             {"from": "human", "value": "And this one?"},
                                             {"from": "gpt", "value": "Red, wide."}]},
        {"conversations": [{"from": "system", "value": "u"},
                           {"from": "human", "value": "1+1?"}, {"from": "gpt", "value": "2"}]},
        {"conversations": [{"from": "system", "value": "y"},
                           {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    ds = SFTDataset(path, tokenizer, ModelConfig.from_name("tiny"))
    out = [ds[i] for i in range(len(ds))]
    for s in out:
        if s["pixel_values"] is not None:
            s["pixel_values"] = s["pixel_values"].double()
    return out


@pytest.fixture(scope="module")
def separate(model, samples):
    """(Σ token losses, token count) of the samples, each run alone."""
    runs = [_token_loss_sum(model, pad_collate([s], PAD)) for s in samples]
    return sum(float(r[0]) for r in runs), sum(r[1] for r in runs)


def test_pad_collate_shapes_and_values():
    batch = [fake(5, tiles=2), fake(9), fake(3, tiles=1)]
    out = pad_collate(batch, PAD)
    assert out["input_ids"].shape == out["labels"].shape == out["attention_mask"].shape == (3, 9)
    assert out["attention_mask"].sum(1).tolist() == [5, 9, 3]
    assert torch.equal(out["input_ids"][0, :5], batch[0]["input_ids"])
    assert (out["input_ids"][0, 5:] == PAD).all() and (out["labels"][2, 3:] == IGNORE_INDEX).all()
    assert torch.equal(out["pixel_values"],
                       torch.cat([batch[0]["pixel_values"], batch[2]["pixel_values"]]))
    assert set(out) == {"input_ids", "labels", "attention_mask", "pixel_values"}
    assert pad_collate([fake(4), fake(2)], PAD)["pixel_values"] is None


def test_plan_packs_respects_the_budget_and_covers_everything():
    lengths = [70, 10, 55, 30, 100, 5, 45, 20, 120]
    packs = plan_packs(lengths, 100)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    for pack in packs:
        assert pack == sorted(pack)
        assert sum(lengths[i] for i in pack) <= 100 or len(pack) == 1  # 120 rides alone
    assert len(packs) == 5  # FFD: 120 | 100 | 70+30 | 55+45 | 20+10+5
    assert packs == plan_packs(lengths, 100)


def test_pack_samples_layout():
    batch = [fake(4, tiles=1), fake(3), fake(5, tiles=2)]
    out = pack_samples(batch, pad_token_id=PAD)
    assert out["input_ids"].shape == (1, 12) and out["attention_mask"].shape == (1, 1, 12, 12)
    assert out["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]
    # Each sample's first label is ignored: the previous sample's last token must not learn it.
    assert out["labels"][0, [0, 4, 7]].tolist() == [IGNORE_INDEX] * 3
    mask = out["attention_mask"][0, 0]
    assert mask[5, 4] and mask[5, 5] and not mask[5, 3] and not mask[4, 5]  # inside sample 2
    assert not mask[7, 6] and mask[11, 7] and mask.diagonal().all()
    assert torch.equal(out["pixel_values"],
                       torch.cat([batch[0]["pixel_values"], batch[2]["pixel_values"]]))
    # Two rows: the shorter row's padding is its own causal block, never an empty mask row.
    out = pack_samples(batch, max_tokens=8, pad_token_id=PAD)
    assert out["input_ids"].shape == (2, 8)
    # First-fit decreasing: 5 opens row 0, 4 does not fit beside it, 3 does.
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert torch.equal(out["pixel_values"],  # slot order: row 0 (samples 1, 2), then row 1
                       torch.cat([batch[2]["pixel_values"], batch[0]["pixel_values"]]))
    assert out["attention_mask"].any(-1).all()
    assert (out["labels"][1, 4:] == IGNORE_INDEX).all() and (out["input_ids"][1, 4:] == PAD).all()
    add = additive_mask(out["attention_mask"], torch.float64)
    assert add.dtype == torch.float64 and add[0, 0, 0, 1] == torch.finfo(torch.float64).min
    assert add[0, 0, 1, 0] == 0


@torch.no_grad()
def _token_loss_sum(model, batch):
    """Σ of per-token cross-entropy (float64), shifted as the LM loss, and the token count."""
    batch = dict(batch)
    labels = batch.pop("labels")
    logits = model(**batch).logits.double()
    targets = labels[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


@pytest.mark.parametrize("attention", ["block_mask", "position_ids"])
@pytest.mark.parametrize("max_tokens", [None, 160])
def test_packed_loss_equals_sum_of_separate_losses(model, samples, separate, attention,
                                                   max_tokens):
    batch = pack_samples(samples, max_tokens, pad_token_id=PAD, attention=attention)
    assert batch["input_ids"].shape[0] == (1 if max_tokens is None else 2)
    packed, n_packed = _token_loss_sum(model, batch)
    assert n_packed == separate[1]
    assert abs(float(packed) - separate[0]) < 1e-5, (float(packed), separate[0])
    # The model's own (mean) loss agrees too; transformers computes it in float32.
    with torch.no_grad():
        mean = model(**batch).loss
    assert float(mean) * n_packed == pytest.approx(separate[0], rel=1e-6)


def test_without_a_mask_samples_would_leak(model, samples, separate):
    """The control: the same packed row with plain causal attention gives another loss."""
    batch = pack_samples(samples, pad_token_id=PAD)
    leaky = dict(batch, attention_mask=None)  # position_ids alone, but the KV cache is on
    leaked, _ = _token_loss_sum(model, leaky)
    assert abs(float(leaked) - separate[0]) > 1e-3


def test_padded_batch_loss_equals_separate(model, samples, separate):
    padded, _ = _token_loss_sum(model, pad_collate(samples, PAD))
    assert abs(float(padded) - separate[0]) < 1e-5


def test_length_grouped_batch_sampler():
    gen = torch.Generator().manual_seed(1)
    lengths = [int(x) for x in torch.randint(1, 500, (103,), generator=gen)]
    sampler = LengthGroupedBatchSampler(lengths, 4, seed=5, group_size=20)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert batches == list(LengthGroupedBatchSampler(lengths, 4, seed=5, group_size=20))
    sampler.set_epoch(1)
    assert list(sampler) != batches
    # Sorting inside groups leaves far less padding than random batches.
    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)
    rand = torch.randperm(103, generator=torch.Generator().manual_seed(0)).tolist()
    assert padding(batches) < 0.5 * padding([rand[i:i + 4] for i in range(0, 103, 4)])
    dropped = LengthGroupedBatchSampler(lengths, 4, drop_last=True, group_size=20)
    assert all(len(b) == 4 for b in dropped) and len(dropped) == len(list(dropped))


def test_packed_batch_sampler_with_dataloader(tmp_path, tokenizer, tiny_model):
    records = [{"conversations": [{"from": "human", "value": "q " * (i * 7 % 40)},
                                  {"from": "gpt", "value": "a " * (1 + i % 5)}]}
               for i in range(12)]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    ds = SFTDataset(path, tokenizer, ModelConfig.from_name("tiny"), max_seq_length=512)
    lengths = ds.scan()
    sampler = PackedBatchSampler(lengths, max_tokens=512, seed=0)
    packs = list(sampler)
    assert len(packs) == len(sampler) < len(ds)
    assert sorted(i for p in packs for i in p) == list(range(len(ds)))
    assert all(sum(lengths[i] for i in p) <= 512 for p in packs)
    # Several rows per step: every batch re-planned by the collator stays within budget.
    multi = PackedBatchSampler(lengths, max_tokens=256, rows_per_batch=2, seed=1)
    assert sorted(i for b in multi for i in b) == list(range(len(ds)))
    for indices in multi:
        rows = pack_samples([ds[i] for i in indices], 256, pad_token_id=PAD)
        assert rows["input_ids"].shape[1] <= 256 or len(indices) == 1
    loader = DataLoader(ds, batch_sampler=sampler,
                        collate_fn=partial(pack_collate, pad_token_id=tokenizer.pad_token_id))
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] == 1 and batch["pixel_values"] is None
    with torch.no_grad():
        assert torch.isfinite(tiny_model(**batch).loss)
