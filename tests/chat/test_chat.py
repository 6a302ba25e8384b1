"""The seeds' chat API on the tiny model: shapes, history, batching, streaming, sessions."""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image
from transformers import TextIteratorStreamer

import tilevl.chat.engine as engine
from tilevl.chat.engine import GenerationSettings, batch_chat, left_pad, shared_prefix_length
from tilevl.chat.session import ChatSession, common_prefix
from tilevl.errors import InputError
from tilevl.inputs.image import preprocess

GREEDY = dict(max_new_tokens=8, do_sample=False)


def test_pure_text_and_history(tiny_model, tokenizer):
    response, history = tiny_model.chat(tokenizer, None, "Hello, who are you?", GREEDY, history=None, return_history=True)
    assert isinstance(response, str) and history == [("Hello, who are you?", response)]
    response2, history = tiny_model.chat(tokenizer, None, "Can you tell me a story?", GREEDY, history=history, return_history=True)
    assert len(history) == 2 and history[1] == ("Can you tell me a story?", response2)


def test_single_image_gets_a_placeholder_once(tiny_model, tokenizer):
    pixels = torch.randn(3, 3, 56, 56)
    _, history = tiny_model.chat(tokenizer, pixels, "Describe the image.", GREEDY, return_history=True)
    assert history[0][0] == "<image>\nDescribe the image."
    _, history = tiny_model.chat(tokenizer, pixels, "More?", GREEDY, history=history, return_history=True)
    assert history[1][0] == "More?"  # only the first turn carries the image


def test_separate_images_need_matching_placeholders(tiny_model, tokenizer):
    pixels = torch.randn(3, 3, 56, 56)
    q = "Image-1: <image>\nImage-2: <image>\nDescribe the two images."
    assert isinstance(tiny_model.chat(tokenizer, pixels, q, GREEDY, num_patches_list=[1, 2]), str)
    with pytest.raises(InputError, match="2 <image> placeholder"):
        tiny_model.chat(tokenizer, pixels, q, GREEDY, num_patches_list=[3])
    with pytest.raises(InputError, match="sums to 4 tiles but pixel_values holds 3"):
        tiny_model.chat(tokenizer, pixels, q, GREEDY, num_patches_list=[2, 2])


def test_batch_chat_equals_per_sample_chat(tiny_model, tokenizer):
    torch.manual_seed(0)
    pixels = torch.randn(4, 3, 56, 56)
    questions = ["<image>\nWhat is it?", "<image>\nDescribe the image in detail, please."]
    batched = batch_chat(tiny_model, tokenizer, pixels, questions, GREEDY, num_patches_list=[1, 3])
    single = [
        tiny_model.chat(tokenizer, pixels[:1], questions[0], GREEDY),
        tiny_model.chat(tokenizer, pixels[1:], questions[1], GREEDY),
    ]
    assert batched == single


def test_shared_prefix_stops_before_images_and_leaves_each_prompt_a_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]], context_id=9) == 3
    assert shared_prefix_length([[1, 2, 9, 4], [1, 2, 9, 4]], context_id=9) == 2  # image slot
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]], context_id=9) == 2  # one id left
    assert shared_prefix_length([[7, 2], [1, 2]], context_id=None) == 0


def test_batch_chat_shared_prefix_path_equals_the_plain_batch(tiny_model, tokenizer, monkeypatch):
    """The prefix computed once gives token for token what the left-padded batch gives, for
    rows with and without images, of different lengths, greedy and seeded sampling."""
    torch.manual_seed(0)
    pixels = torch.randn(5, 3, 56, 56)
    questions = ["<image>\nWhat is it?", "Tell me a joke about a very long list of cats.",
                 "<image>\nDescribe the image in detail, please.", "Hi"]
    patches = [2, 0, 3, 0]
    calls = []
    real = engine._generate_from_shared_prefix
    monkeypatch.setattr(engine, "_generate_from_shared_prefix",
                        lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    for config in (dict(max_new_tokens=12, do_sample=False),
                   dict(max_new_tokens=12, do_sample=True, temperature=5.0, seed=3)):
        shared = batch_chat(tiny_model, tokenizer, pixels, questions, config, num_patches_list=patches)
        assert calls and calls[-1] >= engine.MIN_SHARED_PREFIX  # the system block at least
        monkeypatch.setattr(engine, "MIN_SHARED_PREFIX", 10**9)  # force the plain path
        plain = batch_chat(tiny_model, tokenizer, pixels, questions, config, num_patches_list=patches)
        monkeypatch.setattr(engine, "MIN_SHARED_PREFIX", 8)
        assert shared == plain
        assert len(set(shared)) > 1  # the rows really differ


def test_num_return_sequences_encodes_each_prompt_once(tiny_model, tokenizer, monkeypatch):
    """k replies per question, question by question: greedy they are the single reply k times;
    sampled, the shared-prefix path (prompt prefilled once, cache repeated) gives token for
    token what the plain path gives with every row written out, and the rows differ."""
    torch.manual_seed(0)
    pixels = torch.randn(5, 3, 56, 56)
    questions = ["<image>\nWhat is it?", "Tell me a joke about a very long list of cats.",
                 "<image>\nDescribe the image in detail, please."]
    patches = [2, 0, 3]
    encoded = []
    real = tiny_model.extract_feature
    monkeypatch.setattr(tiny_model, "extract_feature", lambda px: encoded.append(len(px)) or real(px))
    greedy = dict(max_new_tokens=10, do_sample=False)
    once = batch_chat(tiny_model, tokenizer, pixels, questions, greedy, num_patches_list=patches)
    three = batch_chat(tiny_model, tokenizer, pixels, questions, {**greedy, "num_return_sequences": 3},
                       num_patches_list=patches)
    assert three == [reply for reply in once for _ in range(3)]
    assert encoded == [5, 5]  # the tiles of the 9 rows were encoded once, not 3 times
    sampled = dict(max_new_tokens=10, do_sample=True, temperature=5.0, seed=3, num_return_sequences=4)
    shared = batch_chat(tiny_model, tokenizer, pixels, questions, sampled, num_patches_list=patches)
    monkeypatch.setattr(engine, "MIN_SHARED_PREFIX", 10**9)  # force the plain path
    plain = batch_chat(tiny_model, tokenizer, pixels, questions, sampled, num_patches_list=patches)
    assert shared == plain and len(shared) == 12
    assert len(set(shared[:4])) > 1  # one question's samples differ


def test_ended_rows_leave_the_batch_and_the_rest_is_unchanged(monkeypatch):
    """Sampled rows that end leave the batch every COMPACT_EVERY tokens; what the others
    generate is token for token what one long call gives (greedy), and each generate call
    after the first has fewer rows."""
    from PIL import Image

    from tilevl.inputs.image import preprocess
    from tilevl.resolve import open_model

    model, tok = open_model("tilevl-tiny", dtype="fp32", quiet=True)  # ends its replies at different lengths
    images = [Image.new("RGB", (112, 112), c) for c in ("red", "blue", "green")]
    pixels = torch.cat([preprocess(im, model.image_settings) for im in images])
    questions = ["<image>\nWhat colour is the square?", "<image>\nHow many shapes are there?",
                 "<image>\nDescribe the picture."]
    config = dict(max_new_tokens=24, do_sample=False, num_return_sequences=2)
    whole = batch_chat(model, tok, pixels, questions, config, num_patches_list=[1, 1, 1])
    rows = []
    real = model.language_model.generate
    monkeypatch.setattr(model.language_model, "generate",
                        lambda **kw: rows.append(kw["input_ids"].shape[0]) or real(**kw))
    monkeypatch.setattr(engine, "COMPACT_EVERY", 2)
    chunked = batch_chat(model, tok, pixels, questions, config, num_patches_list=[1, 1, 1])
    assert chunked == whole
    assert rows[0] == 6 and rows[-1] < 6 and rows == sorted(rows, reverse=True)


def test_streaming_like_the_seeds(tiny_model, tokenizer):
    pixels = torch.randn(1, 3, 56, 56)
    expected = tiny_model.chat(tokenizer, pixels, "Hi", dict(GREEDY))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=30)
    config = dict(GREEDY, streamer=streamer)
    thread = threading.Thread(target=tiny_model.chat, kwargs=dict(
        tokenizer=tokenizer, pixel_values=pixels, question="Hi", history=None,
        return_history=False, generation_config=config))
    thread.start()
    text = ""
    for new_text in streamer:
        if new_text == tiny_model.conv_template.sep:
            break
        text += new_text
    thread.join()
    assert text.strip() == expected


def test_generation_settings_validate_and_map():
    settings, rest = GenerationSettings.from_dict({"max_new_tokens": 5, "stop": "END", "streamer": "s"})
    assert settings.stop == ("END",) and rest == {"streamer": "s"}
    for bad in ({"max_new_tokens": 0}, {"top_p": 1.5}, {"temperature": -1}, {"num_beams": 0}):
        with pytest.raises(InputError):
            GenerationSettings.from_dict(bad)


def test_stop_strings_cut_the_reply(tiny_model, tokenizer):
    full = tiny_model.chat(tokenizer, None, "Hello", dict(max_new_tokens=12, do_sample=False))
    if len(full) < 3:
        pytest.skip("reply too short to cut")
    stop = full[1:3]
    cut = tiny_model.chat(tokenizer, None, "Hello", dict(max_new_tokens=12, do_sample=False, stop=[stop]))
    assert cut == full.split(stop)[0].strip()


def test_sampling_is_reproducible_with_a_seed(tiny_model, tokenizer):
    config = dict(max_new_tokens=8, do_sample=True, temperature=1.3, top_p=0.95, top_k=40, seed=7)
    assert tiny_model.chat(tokenizer, None, "Hi", config) == tiny_model.chat(tokenizer, None, "Hi", config)


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [4]], pad=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2


def test_session_equals_recompute_and_reuses_the_cache(tiny_model, tokenizer):
    image = Image.new("RGB", (200, 90), (200, 30, 30))
    questions = ["What is this?", "And its colour?", "Tell me more about it, please.", "Thanks."]
    session = ChatSession(tiny_model, tokenizer, generation=GREEDY)
    replies = [session.ask(q, images=[image] if i == 0 else []) for i, q in enumerate(questions)]
    assert session.stats["images_encoded"] == 1
    assert session.stats["reused_tokens"] > 3 * tiny_model.num_image_token  # the image block is never re-fed

    pixels = preprocess(image, tiny_model.image_settings)
    history = None
    for question, reply in zip(questions, replies):
        expected, history = tiny_model.chat(tokenizer, pixels, question, GREEDY, history=history, return_history=True)
        assert reply == expected
    assert session.history == history


def test_session_image_added_mid_conversation(tiny_model, tokenizer):
    a, b = Image.new("RGB", (60, 60), "red"), Image.new("RGB", (120, 60), "blue")
    session = ChatSession(tiny_model, tokenizer, generation=GREEDY)
    session.ask("Look.", images=[a])
    reply = session.ask("And this one?", images=[b])
    assert session.history[1][0].startswith("Image-2: <image>\n")
    pixels = torch.cat([preprocess(a, tiny_model.image_settings), preprocess(b, tiny_model.image_settings)])
    expected = tiny_model.chat(tokenizer, pixels, session.history[1][0], GREEDY,
                               history=session.history[:1], num_patches_list=session.num_patches_list)
    assert reply == expected


def test_session_beam_search_and_reset(tiny_model, tokenizer):
    session = ChatSession(tiny_model, tokenizer)
    reply = session.ask("Hi", generation=dict(max_new_tokens=6, num_beams=2))
    assert reply == tiny_model.chat(tokenizer, None, "Hi", dict(max_new_tokens=6, num_beams=2))
    session.reset()
    assert session.history == [] and session.num_patches_list == []
