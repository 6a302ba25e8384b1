"""Generation keeps the image where an LLM would re-embed the prompt from its ids (#16 item 1).

A tiny Phi-3 with LongRoPE switches to the long factors past 64 positions; transformers'
Phi-3 drops the KV cache there and re-prefills from the ids, which turns every image slot
into the `<IMG_CONTEXT>` text embedding. The reference keeps the cache, as upstream InternVL's
own Phi-3 code does: a plain greedy loop over the LLM with one cache, the prompt fed once as
embeddings with the visual tokens spliced in.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.generation.streamers import BaseStreamer

from tilevl import build_model
from tilevl.chat.engine import batch_chat, model_template, prepare_chat_prompt
from tilevl.chat.session import ChatSession
from tilevl.config import ModelConfig
from tilevl.inputs.template import stop_token_ids
from tilevl.model.generation import keep_image, longrope_switch_length

SWITCH = 64  # original_max_position_embeddings of the tiny Phi-3
NEW = 24  # the prompts below are ~52 ids: generation crosses the switch after ~12 tokens
GREEDY = dict(max_new_tokens=NEW, do_sample=False)
SYSTEM = "S"  # a short system prompt keeps the prompt under the switch


def _phi3_llm() -> dict:
    head_half = 8  # head_dim 16 / 2
    return {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "vocab_size": 512, "hidden_act": "silu",
        "max_position_embeddings": 8 * SWITCH, "original_max_position_embeddings": SWITCH,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        # factors far apart, so keys computed with the wrong set change the argmax
        "rope_scaling": {"type": "su", "short_factor": [1.0] * head_half,
                         "long_factor": [float(2**i) for i in range(head_half)]},
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "initializer_range": 0.3,  # a random LM peaked enough that the image decides tokens
    }


@pytest.fixture()
def phi3_model(tokenizer, tiny_model):
    model = build_model(ModelConfig.from_name("tiny").replace(llm=_phi3_llm()), seed=0)
    model.img_context_token_id = tiny_model.img_context_token_id
    return model


class Recorder(BaseStreamer):
    """Collects the generated ids per row (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def put(self, value):
        self.calls.append(value.reshape(-1).tolist())

    def end(self):
        pass

    def rows(self) -> list[list[int]]:
        return [list(col) for col in zip(*self.calls[1:])]


def cached_greedy(model, ids: list[int], pixels, eos: list[int]) -> list[int]:
    """Upstream's semantics by hand: prefill once from embeddings, then one id per step."""
    llm = model.language_model
    cache = DynamicCache(config=llm.config)
    embeds = model.embed_inputs(torch.tensor([ids]), pixels)
    logits = llm(inputs_embeds=embeds, cache=cache, use_cache=True).logits
    out: list[int] = []
    while len(out) < NEW:
        out.append(int(logits[0, -1].argmax()))
        if out[-1] in eos:
            break
        logits = llm(input_ids=torch.tensor([[out[-1]]]), cache=cache, use_cache=True).logits
    return out


def _reference(model, tokenizer, pixels, question="Describe.", history=None):
    template = model_template(model)
    patches = [pixels.shape[0]] if pixels is not None else []
    ids, _ = prepare_chat_prompt(model, tokenizer, question, history, patches, template, SYSTEM)
    assert len(ids) < SWITCH
    return ids, cached_greedy(model, ids, pixels, stop_token_ids(tokenizer, template))


def test_switch_length_is_read_from_longrope_only(phi3_model, tiny_model):
    assert longrope_switch_length(phi3_model.language_model.config) == SWITCH
    assert longrope_switch_length(tiny_model.language_model.config) is None


def test_generate_and_chat_keep_the_image_across_the_switch(phi3_model, tokenizer):
    torch.manual_seed(1)
    pixels = torch.randn(6, 3, 56, 56)
    ids, expected = _reference(phi3_model, tokenizer, pixels)
    assert len(ids) + len(expected) > SWITCH + 4  # really crosses

    x = torch.tensor([ids])
    template = model_template(phi3_model)
    out = phi3_model.generate(x, pixels, attention_mask=torch.ones_like(x), max_new_tokens=NEW,
                              do_sample=False, eos_token_id=stop_token_ids(tokenizer, template), pad_token_id=0)
    assert out[0].tolist() == expected

    recorder = Recorder()
    phi3_model.chat(tokenizer, pixels, "Describe.", dict(GREEDY, streamer=recorder), system_message=SYSTEM)
    assert recorder.rows()[0] == expected
    # the LLM's own input preparation is back in place afterwards
    assert "prepare_inputs_for_generation" not in vars(phi3_model.language_model)


def test_batch_chat_keeps_the_image_across_the_switch(phi3_model, tokenizer):
    torch.manual_seed(2)
    pixels = torch.randn(12, 3, 56, 56)
    # same question, same tile count: equal lengths, so each row switches where it would alone
    expected = [_reference(phi3_model, tokenizer, part)[1] for part in (pixels[:6], pixels[6:])]
    assert expected[0] != expected[1]
    recorder = Recorder()
    batch_chat(phi3_model, tokenizer, pixels, ["Describe."] * 2, dict(GREEDY, streamer=recorder),
               num_patches_list=[6, 6], system_message=SYSTEM)
    rows = recorder.rows()
    for row, want in zip(rows, expected):
        assert row[:len(want)] == want  # a row that ended early is padded after its end token


def test_session_keeps_the_image_and_matches_chat_past_the_switch(phi3_model, tokenizer):
    torch.manual_seed(3)
    pixels = torch.randn(6, 3, 56, 56)
    _, expected = _reference(phi3_model, tokenizer, pixels)
    session = ChatSession(phi3_model, tokenizer, system_message=SYSTEM, generation=GREEDY)
    recorder = Recorder()
    session.ask("Describe.", images=[pixels], streamer=recorder)
    assert recorder.rows()[0] == expected
    # Later turns start past the switch: the session must give what chat() (a full
    # recompute each turn, as upstream's chat) gives, first by recomputing, then reusing.
    for question in ("More.", "Again."):
        history = list(session.history)
        mine, theirs = Recorder(), Recorder()
        session.ask(question, streamer=mine)
        phi3_model.chat(tokenizer, pixels, question, dict(GREEDY, streamer=theirs), history=history,
                        system_message=SYSTEM)
        assert mine.rows() == theirs.rows()
    assert session.stats["reused_tokens"] > SWITCH  # the third turn reused the long cache


def test_generation_without_a_cache_keeps_the_image(phi3_model, tokenizer):
    """use_cache=False: transformers keeps a cache anyway when it is given embeddings, but
    batch_chat's shared-prefix path gives ids and a prefilled cache, which failed (53 vs 52
    positions). Below the switch it must give the cached tokens."""
    torch.manual_seed(4)
    pixels = torch.randn(12, 3, 56, 56)
    short = dict(GREEDY, max_new_tokens=10)  # 52 + 10 stays under the switch
    cached, uncached = Recorder(), Recorder()
    for recorder, extra in ((cached, {}), (uncached, {"use_cache": False})):
        batch_chat(phi3_model, tokenizer, pixels, ["Describe."] * 2, dict(short, streamer=recorder, **extra),
                   num_patches_list=[6, 6], system_message=SYSTEM)
    assert uncached.rows() == cached.rows() and len(cached.rows()[0]) > 5


def test_keep_image_splices_only_a_re_embedded_prompt(tiny_model):
    llm, ctx = tiny_model.language_model, tiny_model.img_context_token_id
    prompt = torch.tensor([[5, ctx, ctx, 6], [7, ctx, ctx, 8]])
    embeds = torch.randn(2, 4, llm.config.hidden_size)
    embed = llm.get_input_embeddings()
    with keep_image(llm, prompt, embeds, ctx):
        again = embed(torch.cat([prompt, torch.tensor([[9], [9]])], 1).repeat_interleave(2, 0))
        new_only = embed(torch.tensor([[ctx], [9]]))
    plain = embed(prompt).repeat_interleave(2, 0)
    slots = (prompt == ctx).repeat_interleave(2, 0)
    torch.testing.assert_close(again[:, :4][slots], embeds.repeat_interleave(2, 0)[slots])
    torch.testing.assert_close(again[:, :4][~slots], plain[~slots])  # text ids untouched
    torch.testing.assert_close(new_only, embed(torch.tensor([[ctx], [9]])))  # not the prompt: as is


def test_keep_image_computes_lazy_embeddings_once_without_recursing(tiny_model):
    llm, ctx = tiny_model.language_model, tiny_model.img_context_token_id
    embed = llm.get_input_embeddings()
    prompt = torch.tensor([[5, ctx, 6]])
    calls = []

    def lazy():  # embeds the prompt itself, as the chat paths do
        calls.append(1)
        return embed(prompt) + 1.0

    with keep_image(llm, prompt, lazy, ctx):
        first, second = embed(prompt), embed(prompt)
    assert len(calls) == 1
    torch.testing.assert_close(first[0, 1], embed(prompt)[0, 1] + 1.0)
    torch.testing.assert_close(second, first)


def test_keep_image_nests_and_restores(tiny_model):
    llm = tiny_model.language_model
    prompt = torch.tensor([[5, 6]])
    with keep_image(llm, prompt, torch.zeros(1, 2, llm.config.hidden_size), None):
        outer = llm.prepare_inputs_for_generation
        with keep_image(llm, prompt, torch.zeros(1, 2, llm.config.hidden_size), None):
            assert llm.prepare_inputs_for_generation is outer  # not wrapped twice
        assert llm.prepare_inputs_for_generation is outer
    assert "prepare_inputs_for_generation" not in vars(llm)
