"""The splice of visual tokens into the LLM, losses, generation modes, placement."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import TextIteratorStreamer

from tilevl.checkpoint.placement import split_model_device_map
from tilevl.errors import InputError


def _prompt(model, tiles):
    ctx = model.img_context_token_id
    n = model.num_image_token * tiles
    return torch.cat([torch.tensor([[30, 31, 32]]), torch.full((1, n), ctx), torch.tensor([[33, 34]])], 1)


def test_visual_tokens_replace_context_slots(tiny_model):
    ids = _prompt(tiny_model, 2)
    pixels = torch.randn(2, 3, 56, 56)
    embeds = tiny_model.embed_inputs(ids, pixels)
    feats = tiny_model.extract_feature(pixels).reshape(-1, embeds.shape[-1])
    slots = ids[0] == tiny_model.img_context_token_id
    assert torch.equal(embeds[0, slots], feats)
    text = tiny_model.language_model.get_input_embeddings()(ids)
    assert torch.equal(embeds[0, ~slots], text[0, ~slots])


def test_count_mismatch_names_both_numbers(tiny_model):
    ids = _prompt(tiny_model, 2)
    with pytest.raises(InputError, match=r"12 <IMG_CONTEXT> tokens .* 8 visual tokens \(2 tiles x 4\)"):
        tiny_model(_prompt(tiny_model, 3), torch.randn(2, 3, 56, 56))
    assert tiny_model(ids, torch.randn(2, 3, 56, 56)).logits.shape[1] == ids.shape[1]


def test_image_flags_drop_padding_tiles(tiny_model):
    ids = _prompt(tiny_model, 1)
    real = torch.randn(1, 3, 56, 56)
    padded = torch.cat([real, torch.zeros(1, 3, 56, 56)])
    with torch.no_grad():
        a = tiny_model(ids, real).logits
        b = tiny_model(ids, padded, image_flags=torch.tensor([1, 0])).logits
    torch.testing.assert_close(a, b)


def test_pure_text_skips_the_vision_tower(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model.vision_model, "forward", lambda *a, **k: pytest.fail("vision ran"))
    out = tiny_model(torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[-100, 6, 7, 8]]))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_loss_ignores_masked_labels_and_trains_both_towers(tiny_model):
    ids = _prompt(tiny_model, 1)
    labels = torch.full_like(ids, -100)
    labels[0, -2:] = ids[0, -2:]
    tiny_model.train()
    out = tiny_model(ids, torch.randn(1, 3, 56, 56), labels=labels)
    out.loss.backward()
    assert tiny_model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert tiny_model.mlp1[1].weight.grad.abs().sum() > 0
    logits = out.logits[0, -3:-1]  # positions predicting the last two tokens
    expected = torch.nn.functional.cross_entropy(logits, ids[0, -2:])
    torch.testing.assert_close(out.loss, expected)


def test_gradient_checkpointing_on_both_towers(tiny_model):
    ids = _prompt(tiny_model, 1)
    pixels = torch.randn(1, 3, 56, 56)
    tiny_model.train()
    tiny_model(ids, pixels, labels=ids).loss.backward()
    grads = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    tiny_model.gradient_checkpointing_enable()
    assert tiny_model.vision_model.encoder.gradient_checkpointing
    assert getattr(tiny_model.language_model, "is_activation_checkpointing", None) or tiny_model.language_model.is_gradient_checkpointing
    tiny_model(ids, pixels, labels=ids).loss.backward()
    for g, p in zip(grads, tiny_model.parameters()):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_generation_modes(tiny_model, tokenizer):
    ids = _prompt(tiny_model, 1)
    pixels = torch.randn(1, 3, 56, 56)
    greedy = tiny_model.generate(ids, pixels, generation_config=dict(max_new_tokens=6, do_sample=False))
    assert greedy.shape == (1, 6)
    # greedy == argmax of a plain forward for the first token
    first = tiny_model(ids, pixels).logits[0, -1].argmax()
    assert greedy[0, 0] == first
    beams = tiny_model.generate(ids, pixels, max_new_tokens=6, num_beams=3, do_sample=False)
    assert beams.shape[0] == 1
    torch.manual_seed(3)
    s1 = tiny_model.generate(ids, pixels, max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9, top_k=50)
    torch.manual_seed(3)
    s2 = tiny_model.generate(ids, pixels, max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9, top_k=50)
    assert torch.equal(s1, s2)

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=30)
    kwargs = dict(max_new_tokens=6, do_sample=False, streamer=streamer)
    thread = threading.Thread(target=tiny_model.generate, args=(ids, pixels), kwargs=kwargs)
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == tokenizer.decode(greedy[0])


def test_split_model_device_map_follows_the_seeds_rule():
    # V1-2 (60 layers) on 4 GPUs: ceil(60/3.5)=18 per GPU, the first takes ceil(18/2)=9.
    dm = split_model_device_map(60, 4)
    layers = [dm[f"language_model.model.layers.{i}"] for i in range(60)]
    assert layers[:9] == [0] * 9 and layers[9:27] == [1] * 18 and layers[27:45] == [2] * 18
    assert layers[45:59] == [3] * 14 and layers[59] == 0  # last layer back with the head
    for name in ("vision_model", "mlp1", "language_model.model.embed_tokens", "language_model.lm_head"):
        assert dm[name] == 0
    assert set(split_model_device_map(2, 1).values()) == {0}
