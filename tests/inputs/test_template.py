"""Tests for tilevl.inputs.template: the upstream prompt strings, label masks, image blocks.

Expected prompts are written out by hand from upstream's `Conversation.get_prompt()` rules.
"""

import time

import pytest

from tilevl.checkpoint.tokenizer import (
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    TEMPLATE_TOKENS,
    VISION_TOKENS,
    build_bpe_tokenizer,
)
from tilevl.errors import ConfigError, InputError
from tilevl.inputs.template import (
    IGNORE_INDEX,
    TEMPLATES,
    add_image_placeholder,
    build_messages,
    get_template,
    render,
    stop_token_ids,
)

SYS_V1_5 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
SYS_V2_5 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

TWO_TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Who are you?"},
]


@pytest.fixture(scope="module")
def tok():
    return build_bpe_tokenizer()


@pytest.fixture(scope="module")
def sp_tok():
    """A SentencePiece-style tokenizer ("▁" put before the first word of an encode call)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tilevl.checkpoint.tokenizer import _DEFAULT_CORPUS

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,?!:-\n")
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[*TEMPLATE_TOKENS, *VISION_TOKENS],
        initial_alphabet=alphabet, show_progress=False,
    )
    core.train_from_iterator(list(_DEFAULT_CORPUS), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>")


def labelled_text(tok, rendered):
    return tok.decode([t for t in rendered.labels if t != IGNORE_INDEX])


# --- the registry -------------------------------------------------------------------------

def test_registry_holds_the_published_templates_with_upstream_strings():
    assert set(TEMPLATES) == {"Hermes-2", "internlm2-chat", "phi3-chat", "internvl2_5",
                              "internvl3_5_gpt_oss", "tilevl"}
    hermes = get_template("Hermes-2")
    assert hermes.system_template == "<|im_start|>system\n{system_message}"
    assert hermes.system_message == SYS_V1_5
    assert hermes.roles == ("<|im_start|>user\n", "<|im_start|>assistant\n")
    assert hermes.sep == "<|im_end|>"
    assert hermes.stop_strings == ("<|im_end|>", "<|endoftext|>")
    assert get_template("internlm2-chat").system_message == SYS_V1_5
    assert get_template("internlm2-chat").stop_strings == ("<|im_end|>",)
    phi3 = get_template("phi3-chat")
    assert (phi3.system_template, phi3.roles, phi3.sep) == (
        "<|system|>\n{system_message}", ("<|user|>\n", "<|assistant|>\n"), "<|end|>"
    )
    assert phi3.system_message == SYS_V1_5 and phi3.end_token == "<|end|>"
    v25 = get_template("internvl2_5")
    assert v25.system_message == SYS_V2_5
    assert v25.sep == "<|im_end|>\n" and v25.end_token == "<|im_end|>"
    # Ours: internvl2_5's format, a short English system prompt.
    ours = get_template("tilevl")
    assert (ours.system_template, ours.roles, ours.sep) == (
        v25.system_template, v25.roles, v25.sep)
    assert ours.system_message.isascii() and len(ours.system_message) < 80


def test_templates_are_frozen():
    with pytest.raises(AttributeError):
        get_template("internvl2_5").sep = "x"


def test_unknown_template_lists_known_names():
    known = r"'vicuna'.*Hermes-2.*internlm2-chat.*internvl2_5.*phi3-chat"
    with pytest.raises(ConfigError, match=known):
        get_template("vicuna")


def test_stop_token_ids(tok):
    ids = stop_token_ids(tok, get_template("Hermes-2"))
    assert ids == tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert stop_token_ids(tok, get_template("phi3-chat")) == [tok.convert_tokens_to_ids("<|end|>")]


# --- rendered text ------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("Hermes-2",
     "<|im_start|>system\n" + SYS_V1_5 + "<|im_end|><|im_start|>user\nHi<|im_end|>"
     "<|im_start|>assistant\nHello<|im_end|><|im_start|>user\nWho are you?<|im_end|>"
     "<|im_start|>assistant\n"),
    ("internlm2-chat",
     "<|im_start|>system\n" + SYS_V1_5 + "<|im_end|><|im_start|>user\nHi<|im_end|>"
     "<|im_start|>assistant\nHello<|im_end|><|im_start|>user\nWho are you?<|im_end|>"
     "<|im_start|>assistant\n"),
    ("phi3-chat",
     "<|system|>\n" + SYS_V1_5 + "<|end|><|user|>\nHi<|end|><|assistant|>\nHello<|end|>"
     "<|user|>\nWho are you?<|end|><|assistant|>\n"),
    ("internvl2_5",
     "<|im_start|>system\n" + SYS_V2_5 + "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
     "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n"
     "<|im_start|>assistant\n"),
])
def test_multi_turn_text_matches_upstream(tok, name, expected):
    rendered = render(tok, get_template(name), TWO_TURNS, add_generation_prompt=True)
    assert rendered.text == expected


def test_without_generation_prompt_text_ends_after_last_message(tok):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = render(tok, get_template("internvl2_5"), messages).text
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n")


def test_user_system_message_replaces_default(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = render(tok, get_template("phi3-chat"), messages, add_generation_prompt=True).text
    assert text == "<|system|>\nBe brief.<|end|><|user|>\nHi<|end|><|assistant|>\n"
    messages[0]["content"] = ""  # an empty system message stays empty, as upstream
    text = render(tok, get_template("Hermes-2"), messages, add_generation_prompt=True).text
    assert text == (
        "<|im_start|>system\n<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"
    )


# --- ids and labels -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_labels_cover_replies_and_end_token_only(tok, name):
    template = get_template(name)
    messages = [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Yes 1 2 3"},
    ]
    rendered = render(tok, template, messages)
    assert len(rendered.labels) == len(rendered.input_ids)
    # Earlier replies end in sep; the one ending the sample in final_sep (MPT_TWO) if set.
    inner, end = template.sep.strip(), template.end_token
    assert labelled_text(tok, rendered) == f"Hello there.{inner}Yes 1 2 3{end}"
    for i, label in enumerate(rendered.labels):
        assert label in (IGNORE_INDEX, rendered.input_ids[i])
    # internvl2_5: the "\n" after <|im_end|> is not trained on (upstream masks it too).
    last = IGNORE_INDEX if name in ("internvl2_5", "tilevl") else rendered.input_ids[-1]
    assert rendered.labels[-1] == last


def test_generation_prompt_has_no_labels(tok):
    rendered = render(tok, get_template("internvl2_5"), TWO_TURNS, add_generation_prompt=True)
    assert labelled_text(tok, rendered) == "Hello<|im_end|>"
    assert rendered.labels[-3:] == [IGNORE_INDEX] * 3


# The harmony template's role tokens are not in these tokenizers' vocabularies; its own
# piecewise test (tests/inputs/test_template_internvl3_5.py) uses a tokenizer that has them.
@pytest.mark.parametrize("name", [n for n in sorted(TEMPLATES) if not TEMPLATES[n].channels])
@pytest.mark.parametrize("fixture", ["tok", "sp_tok"])
def test_piecewise_ids_equal_whole_text_ids(request, name, fixture):
    # Holds on these tokenizers because every cut but "assistant\n" | reply sits next to a
    # special token; the SentencePiece-style one checks the anchor that stops a "▁" prefix.
    tokenizer = request.getfixturevalue(fixture)
    messages = [
        {"role": "system", "content": "You are an AI assistant."},
        {"role": "user", "content": "Image-1: <image>\nImage-2: <image>\nDescribe the two images."},
        {"role": "assistant", "content": "A cat sits on a mat. A blue ball."},
        {"role": "user", "content": "Can you tell me a story?"},
    ]
    rendered = render(tokenizer, get_template(name), messages, num_patches_list=[2, 1],
                      num_image_token=3, add_generation_prompt=True)
    assert rendered.input_ids == tokenizer(rendered.text)["input_ids"]


def test_reply_starting_with_newlines_keeps_labels_aligned():
    # A vocabulary with "\n\n" merges: whole-text tokenization pre-splits "\n" + "\n\nHello"
    # across the role/reply cut as "\n\n" | "\n", the piecewise ids as "\n" | "\n" | "\n".
    # Both decode to the same text; the piecewise ids are the reference because only they
    # keep the reply's tokens apart from the role prefix, so the mask is exact.
    ws = build_bpe_tokenizer(corpus=["Hi\n\n\nHello\n\n\n" * 20])
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\nHello"}]
    rendered = render(ws, get_template("internvl2_5"), messages)
    assert rendered.input_ids != ws(rendered.text)["input_ids"]
    assert ws.decode(rendered.input_ids) == rendered.text
    assert labelled_text(ws, rendered) == "\n\nHello<|im_end|>"


def test_bos_added_when_the_tokenizer_adds_one(tok):
    from tokenizers.processors import TemplateProcessing

    with_bos = build_bpe_tokenizer()
    with_bos._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", with_bos.bos_token_id)]
    )
    messages = TWO_TURNS[:2]
    rendered = render(with_bos, get_template("internlm2-chat"), messages)
    assert rendered.input_ids[0] == with_bos.bos_token_id
    assert rendered.labels[0] == IGNORE_INDEX
    assert rendered.input_ids == with_bos(rendered.text)["input_ids"]
    # The plain test tokenizer adds nothing, so neither do we.
    plain = render(tok, get_template("internlm2-chat"), messages)
    assert plain.input_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert rendered.input_ids[1:] == plain.input_ids


# --- images -------------------------------------------------------------------------------

def test_images_expand_to_context_blocks(tok):
    img_start, img_end, context = tok.convert_tokens_to_ids(
        [IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN]
    )
    messages = [
        {"role": "user", "content": "<image>\nFirst."}, {"role": "assistant", "content": "Ok."},
        {"role": "user", "content": "Image-1: <image>\nImage-2: <image>\nCompare."},
    ]
    rendered = render(tok, get_template("internvl2_5"), messages, num_patches_list=[1, 3, 2],
                      num_image_token=4, add_generation_prompt=True)
    ids = rendered.input_ids
    assert [stop - start for start, stop in rendered.image_spans] == [4, 12, 8]
    for start, stop in rendered.image_spans:
        assert ids[start - 1] == img_start and ids[stop] == img_end
        assert set(ids[start:stop]) == {context}
    assert ids.count(context) == 4 * 6
    assert rendered.text.count(IMG_CONTEXT_TOKEN) == 24
    first = "<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 4 + "</img>\nFirst.<|im_end|>\n"
    assert first in rendered.text
    assert "<image>" not in rendered.text
    assert labelled_text(tok, rendered) == "Ok.<|im_end|>"


def test_forty_tiles_render_fast(tok):
    messages = [{"role": "user", "content": "<image>\nDescribe the image."}]
    start = time.perf_counter()
    rendered = render(tok, get_template("internlm2-chat"), messages, num_patches_list=[40],
                      add_generation_prompt=True)
    assert time.perf_counter() - start < 0.5
    assert rendered.input_ids.count(tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)) == 40 * 256


@pytest.mark.parametrize("content, patches, counts", [
    ("<image><image>\nTwo?", [1], "2 <image> placeholder.*1 image"),
    ("No image here.", [3], "0 <image> placeholder.*1 image"),
    ("<image>\nOne?", None, "1 <image> placeholder.*0 image"),
])
def test_placeholder_image_mismatch_gives_both_counts(tok, content, patches, counts):
    messages = [{"role": "user", "content": content}]
    with pytest.raises(InputError, match=counts):
        render(tok, get_template("internvl2_5"), messages, num_patches_list=patches)


@pytest.mark.parametrize("token", [IMG_CONTEXT_TOKEN, IMG_START_TOKEN, IMG_END_TOKEN])
def test_typed_vision_tokens_are_refused(tok, token):
    messages = [{"role": "user", "content": f"look {token} here"}]
    with pytest.raises(InputError, match=r"messages\[0\].*reserved token"):
        render(tok, get_template("internvl2_5"), messages)


def test_tokenizer_without_image_tokens_is_a_config_error():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.train_from_iterator(["hello world"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", *TEMPLATE_TOKENS], show_progress=False))
    bare = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    with pytest.raises(ConfigError, match="<img>"):
        render(bare, get_template("internvl2_5"), [{"role": "user", "content": "hello"}])


# --- message checks and chat helpers ------------------------------------------------------

@pytest.mark.parametrize("messages, match", [
    ([], "no user turn"),
    ([{"role": "assistant", "content": "x"}], r"messages\[0\].*expected role 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     r"messages\[1\].*expected role 'assistant'"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}],
     r"messages\[1\].*system message may only come first"),
    ([{"role": "user", "content": None}], "must be a str"),
])
def test_bad_messages_are_input_errors(tok, messages, match):
    with pytest.raises(InputError, match=match):
        render(tok, get_template("Hermes-2"), messages)


def test_generation_prompt_after_assistant_is_refused(tok):
    with pytest.raises(InputError, match="last message to be a user turn"):
        render(tok, get_template("Hermes-2"), TWO_TURNS[:2], add_generation_prompt=True)


def test_build_messages_from_chat_arguments(tok):
    messages = build_messages("<image>\nAnd now?", [("Hi", "Hello"), ("Who?", "InternVL")],
                              system_message="Be brief.")
    roles = ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["role"] for m in messages] == roles
    text = render(tok, get_template("internlm2-chat"), messages, num_patches_list=[1],
                  num_image_token=1, add_generation_prompt=True).text
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nHi<|im_end|>"
        "<|im_start|>assistant\nHello<|im_end|><|im_start|>user\nWho?<|im_end|>"
        "<|im_start|>assistant\nInternVL<|im_end|><|im_start|>user\n"
        "<img><IMG_CONTEXT></img>\nAnd now?<|im_end|><|im_start|>assistant\n"
    )
    assert build_messages("q") == [{"role": "user", "content": "q"}]


def test_add_image_placeholder_follows_upstream_rule():
    assert add_image_placeholder("What is it?", 1) == "<image>\nWhat is it?"
    assert add_image_placeholder("Look: <image> what?", 1) == "Look: <image> what?"
    assert add_image_placeholder("Hi", 0) == "Hi"
    assert add_image_placeholder("Two?", 2) == "<image>\nTwo?"  # one, as upstream


def test_empty_reply_keeps_its_end_token(tokenizer):
    template = get_template("internlm2-chat")
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""},
                {"role": "user", "content": "b"}]
    out = render(tokenizer, template, messages, add_generation_prompt=True)
    assert "<|im_start|>assistant\n<|im_end|><|im_start|>user\nb<|im_end|>" in out.text
    labelled = [t for t, l in zip(out.input_ids, out.labels) if l != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "<|im_end|>"
