"""InternVL3.5's thinking mode: the switch in chat()/batch_chat()/ChatSession, reply splitting.

Random tiny models never write `<think>`, so the model's `generate` is replaced by one that
returns a canned reply (and records the prompt it was given): that checks the whole path
from the switch to the rendered prompt, and from generated ids to answer, thinking and history.
"""

from __future__ import annotations

import random

import pytest
import torch

from tilevl.chat.session import ChatSession
from tilevl.chat.thinking import (
    THINKING_SYSTEM_PROMPT,
    ChannelStream,
    ChatReply,
    ReasoningStream,
    split_reasoning,
    thinking_system_message,
)
from tilevl.errors import InputError

THOUGHT_REPLY = "<think>\nThe shapes: a red square.\n</think>\n\nA red square."
GREEDY = dict(max_new_tokens=4, do_sample=False)


# ---- splitting ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    (THOUGHT_REPLY, ("The shapes: a red square.", "A red square.")),
    ("  <think>a</think>b ", ("a", "b")),
    ("<think>cut short", ("cut short", "")),  # max_new_tokens ran out while thinking
    ("Plain answer.", (None, "Plain answer.")),
    ("Answer with <think>late</think> tags.", (None, "Answer with <think>late</think> tags.")),
    ("<think></think>x", ("", "x")),
])
def test_split_reasoning_think_tags(text, expected):
    assert split_reasoning(text) == expected


def test_split_reasoning_harmony_channels():
    raw = ("<|channel|>analysis<|message|>Count the sides.<|end|><|start|>assistant"
           "<|channel|>final<|message|>A square.")
    assert split_reasoning(raw, channels=True) == ("Count the sides.", "A square.")
    # What InternVL3.5-GPT-OSS writes by default (Reasoning: low, final channel only).
    assert split_reasoning("<|channel|>final<|message|>Hi!", channels=True) == (None, "Hi!")
    # The thinking prompt in the final channel: <think> split inside it.
    assert split_reasoning("<|channel|>final<|message|><think>t</think>\na", channels=True) == ("t", "a")
    # Without the channels flag the markup is left alone.
    assert split_reasoning("<|channel|>final<|message|>Hi!")[1] == "<|channel|>final<|message|>Hi!"


@pytest.mark.parametrize("text", [THOUGHT_REPLY, "  Hello  there ", "<think> partial thou",
                                  "<thinking is not a tag", "<think>a</thin", "", "<thi", "x</think>y"])
def test_reasoning_stream_joins_to_split_reasoning(text):
    rng = random.Random(0)
    want_reasoning, want_answer = split_reasoning(text)
    for _ in range(40):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text), rng.randint(0, 8))))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        stream, reasoning, answer = ReasoningStream(), "", ""
        for piece in [*pieces, None]:
            r, a = stream.feed(piece) if piece is not None else stream.finish()
            reasoning, answer = reasoning + r, answer + a
        assert (reasoning or None, answer) == (want_reasoning or None, want_answer), pieces


@pytest.mark.parametrize("text", [
    "<|channel|>analysis<|message|>Count  the sides. <|end|><|start|>assistant<|channel|>final<|message|>A square.",
    "<|channel|>final<|message|>Hi there!",
    "<|channel|>final<|message|><think>t</think>\nanswer",
    "no markup at all",
])
def test_channel_stream_joins_to_split_reasoning(text):
    import re

    tokens = re.findall(r"<\|\w+\|>|[^<]|<", text)  # special tokens arrive whole
    rng = random.Random(1)
    want_reasoning, want_answer = split_reasoning(text, channels=True)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(tokens)), min(len(tokens) - 1, rng.randint(0, 6))))
        pieces = ["".join(tokens[i:j]) for i, j in zip([0, *cuts], [*cuts, len(tokens)])]
        stream, reasoning, answer = ChannelStream(), "", ""
        for piece in pieces:
            r, a = stream.feed(piece)
            reasoning, answer = reasoning + r, answer + a
        r, a = stream.finish()
        assert ((reasoning + r) or None, answer + a) == (want_reasoning, want_answer), pieces


def test_reasoning_stream_holds_back_a_possible_tag():
    stream = ReasoningStream()
    assert stream.feed("<thi") == ("", "")
    assert stream.feed("nk>idea </th") == ("idea", "")
    assert stream.feed("ink>\n\nok") == ("", "ok")


def test_thinking_system_message_conflicts():
    assert thinking_system_message(None, True) == THINKING_SYSTEM_PROMPT
    assert thinking_system_message("Be brief.", False) == "Be brief."
    assert thinking_system_message(THINKING_SYSTEM_PROMPT, True) == THINKING_SYSTEM_PROMPT
    with pytest.raises(InputError, match="enable_thinking"):
        thinking_system_message("Be brief.", True)


def test_thinking_prompt_is_the_model_cards():
    assert THINKING_SYSTEM_PROMPT.startswith("You are an AI assistant that rigorously follows this response protocol:\n\n1. ")
    assert "Enclose this entire thinking process within <think> and </think> tags.\n\n2. " in THINKING_SYSTEM_PROMPT
    assert THINKING_SYSTEM_PROMPT.endswith("not reference the thinking section.")


def test_chat_reply_is_the_answer_string():
    reply = ChatReply.parse(THOUGHT_REPLY)
    assert reply == "A red square." and isinstance(reply, str)
    assert reply.reasoning == "The shapes: a red square." and reply.raw == THOUGHT_REPLY


# ---- end to end on the tiny model -----------------------------------------------------------
def _canned_generate(model, tokenizer, reply: str, seen: list):
    """Replace model.generate: record the prompt ids, return `reply` + the end token."""
    ids = tokenizer(reply + "<|im_end|>", add_special_tokens=False)["input_ids"]

    def generate(input_ids, pixel_values=None, **kwargs):
        seen.append(input_ids[0].tolist())
        return torch.tensor([ids] * input_ids.shape[0])

    model.generate = generate


def test_chat_enable_thinking_renders_the_prompt_and_splits_the_reply(tiny_model, tokenizer):
    seen: list = []
    _canned_generate(tiny_model, tokenizer, THOUGHT_REPLY, seen)
    reply, history = tiny_model.chat(tokenizer, None, "What is shown?", GREEDY,
                                     return_history=True, enable_thinking=True)
    prompt = tokenizer.decode(seen[0])
    assert prompt.startswith("<|im_start|>system\n" + THINKING_SYSTEM_PROMPT + "<|im_end|>")
    assert reply == "A red square." and reply.reasoning == "The shapes: a red square."
    assert history == [("What is shown?", THOUGHT_REPLY)]  # upstream keeps the whole reply
    # The next turn renders the stored reply, thinking included, as upstream's template does.
    tiny_model.chat(tokenizer, None, "Sure?", GREEDY, history=history, enable_thinking=True)
    assert "<|im_start|>assistant\n" + THOUGHT_REPLY + "<|im_end|>" in tokenizer.decode(seen[1])


def test_chat_without_thinking_keeps_the_default_prompt(tiny_model, tokenizer):
    seen: list = []
    _canned_generate(tiny_model, tokenizer, "Plain.", seen)
    reply = tiny_model.chat(tokenizer, None, "Hi", GREEDY)
    assert THINKING_SYSTEM_PROMPT not in tokenizer.decode(seen[0])
    assert reply == "Plain." and reply.reasoning is None
    with pytest.raises(InputError, match="enable_thinking"):
        tiny_model.chat(tokenizer, None, "Hi", GREEDY, system_message="Be brief.", enable_thinking=True)


def test_batch_chat_enable_thinking(tiny_model, tokenizer, monkeypatch):
    import tilevl.chat.engine as engine

    monkeypatch.setattr(engine, "MIN_SHARED_PREFIX", 10**9)  # the path through model.generate
    seen: list = []
    _canned_generate(tiny_model, tokenizer, THOUGHT_REPLY, seen)
    replies = tiny_model.batch_chat(tokenizer, None, ["a?", "b?"], GREEDY, enable_thinking=True)
    assert [r.reasoning for r in replies] == ["The shapes: a red square."] * 2
    assert replies == ["A red square."] * 2
    assert THINKING_SYSTEM_PROMPT in tokenizer.decode(seen[0])


def test_session_enable_thinking(tiny_model, tokenizer, monkeypatch):
    session = ChatSession(tiny_model, tokenizer, enable_thinking=True, generation=GREEDY)
    assert session.system_message == THINKING_SYSTEM_PROMPT
    assert tokenizer.decode(session.prompt_ids("Hi")).startswith(
        "<|im_start|>system\n" + THINKING_SYSTEM_PROMPT)
    canned = tokenizer(THOUGHT_REPLY + "<|im_end|>", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(session, "_generate", lambda ids, settings, streamer: canned)
    reply = session.ask("What is shown?")
    assert reply == "A red square." and reply.reasoning == "The shapes: a red square."
    assert session.history == [("What is shown?", THOUGHT_REPLY)]
    # A real (random) generation still goes through the thinking prompt and returns a reply.
    monkeypatch.undo()
    assert isinstance(session.ask("And?"), ChatReply)


def test_gpt_oss_template_keeps_channel_markup_and_answers_the_final_channel(tiny_model):
    """The harmony template: the prompt ends at `<|start|>assistant`, the reply is decoded with
    its special tokens (upstream's skip_special_tokens=False), cut at <|return|>, and split."""
    from tilevl.checkpoint.tokenizer import IMG_CONTEXT_TOKEN, build_bpe_tokenizer

    tok = build_bpe_tokenizer(vocab_size=400, extra_special_tokens=(
        "<|start|>", "<|message|>", "<|channel|>", "<|return|>"))
    tiny_model.img_context_token_id = tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    raw = ("<|channel|>analysis<|message|>Compare 9.11 and 9.80.<|end|><|start|>assistant"
           "<|channel|>final<|message|>9.8 is greater.")
    seen: list = []
    ids = tok(raw + "<|return|><|endoftext|>", add_special_tokens=False)["input_ids"]
    tiny_model.generate = lambda input_ids, pixel_values=None, **kw: seen.append(input_ids[0].tolist()) or torch.tensor([ids])
    reply, history = tiny_model.chat(tok, None, "Which is greater?", GREEDY, return_history=True,
                                     template="internvl3_5_gpt_oss")
    assert tok.decode(seen[0], skip_special_tokens=False).endswith(
        "<|start|>user<|message|>Which is greater?<|end|><|start|>assistant")
    assert reply == "9.8 is greater." and reply.reasoning == "Compare 9.11 and 9.80."
    assert history == [("Which is greater?", raw)]
