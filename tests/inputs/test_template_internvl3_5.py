"""InternVL3.5's templates: GPT-OSS's harmony format and the thinking prompt in internvl2_5.

The expected prompts were produced once by running upstream's own `Conversation.get_prompt()`
(OpenGVLab/InternVL commit 2410d1d: internvl_chat_gpt_oss/internvl/model/internvl_chat/
conversation.py for `internvl3_5_gpt_oss`, internvl_chat/internvl/conversation.py for
`internvl2_5`) and pasted here; the tests do not read the upstream repository.
"""

import pytest

from tilevl.chat.thinking import THINKING_SYSTEM_PROMPT
from tilevl.checkpoint.tokenizer import build_bpe_tokenizer
from tilevl.inputs.template import (
    IGNORE_INDEX,
    build_messages,
    get_template,
    render,
    stop_token_ids,
)

HARMONY_TOKENS = ("<|start|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>")
OSS_SYSTEM = (
    "<|start|>system<|message|>You are InternVL, a large language model trained by Shanghai AI "
    "Laboratory.\nKnowledge cutoff: 2024-06\nCurrent date: 2025-08-06\n\nReasoning: low\n\n"
    "# Valid channels: final. Channel must be included for every message.<|end|>"
)
# get_prompt() of: user "<image>\nWhat is this?", then the bare assistant role.
UPSTREAM_OSS_ONE = OSS_SYSTEM + "<|start|>user<|message|><image>\nWhat is this?<|end|><|start|>assistant"
# history [("Hi", "<|channel|>final<|message|>Hello")] + "Who are you?" (chat() stores the
# reply with its channel header, as decoded with skip_special_tokens=False).
UPSTREAM_OSS_TWO = (
    OSS_SYSTEM + "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>"
    "Hello<|end|><|start|>user<|message|>Who are you?<|end|><|start|>assistant"
)
# A training sample: the last assistant message is closed by sep2 = <|return|>.
UPSTREAM_OSS_TRAIN = (
    OSS_SYSTEM + "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>"
    "Hello<|end|><|start|>user<|message|>Who are you?<|end|><|start|>assistant<|channel|>final"
    "<|message|>InternVL<|return|>"
)
# internvl2_5 with model.system_message = R1_SYSTEM_PROMPT and a thinking reply in history.
UPSTREAM_V25_THINK = (
    "<|im_start|>system\nYou are an AI assistant that rigorously follows this response protocol:"
    "\n\n1. First, conduct a detailed analysis of the question. Consider different angles, "
    "potential solutions, and reason through the problem step-by-step. Enclose this entire "
    "thinking process within <think> and </think> tags.\n\n2. After the thinking section, "
    "provide a clear, concise, and direct answer to the user's question. Separate the answer "
    "from the think section with a newline.\n\nEnsure that the thinking process is thorough but "
    "remains focused on the query. The final answer should be standalone and not reference the "
    "thinking section.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "<think>\nsay hi\n</think>\n\nHello<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def tok():
    return build_bpe_tokenizer(extra_special_tokens=HARMONY_TOKENS)


def test_gpt_oss_template_is_upstreams_harmony_format():
    t = get_template("internvl3_5_gpt_oss")
    assert t.roles == ("<|start|>user<|message|>", "<|start|>assistant")
    assert (t.sep, t.final_sep, t.channels) == ("<|end|>", "<|return|>", True)
    # Upstream generates until sep2: <|end|> also closes the analysis channel mid-reply.
    assert t.end_token == "<|return|>" and t.stop_strings == ("<|return|>",)


def test_gpt_oss_prompts_equal_upstream_get_prompt(tok):
    t = get_template("internvl3_5_gpt_oss")
    one = render(tok, t, build_messages("What is this?"), add_generation_prompt=True)
    assert one.text == UPSTREAM_OSS_ONE.replace("<image>\n", "")
    two = render(tok, t, build_messages("Who are you?", [("Hi", "<|channel|>final<|message|>Hello")]),
                 add_generation_prompt=True)
    assert two.text == UPSTREAM_OSS_TWO
    assert tok.decode(two.input_ids, skip_special_tokens=False) == UPSTREAM_OSS_TWO


def test_gpt_oss_image_prompt_expands_the_placeholder(tok):
    t = get_template("internvl3_5_gpt_oss")
    r = render(tok, t, build_messages("<image>\nWhat is this?"), num_patches_list=[1],
               num_image_token=4, add_generation_prompt=True)
    assert r.text == UPSTREAM_OSS_ONE.replace("<image>", "<img>" + "<IMG_CONTEXT>" * 4 + "</img>")


def test_gpt_oss_training_sample_ends_with_return_and_labels_it(tok):
    t = get_template("internvl3_5_gpt_oss")
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<|channel|>final<|message|>Hello"},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "<|channel|>final<|message|>InternVL"},
    ]
    r = render(tok, t, messages)
    assert r.text == UPSTREAM_OSS_TRAIN
    labelled = tok.decode([x for x in r.labels if x != IGNORE_INDEX], skip_special_tokens=False)
    # Earlier replies end in <|end|>, the last in <|return|>; role headers are not trained.
    assert labelled == ("<|channel|>final<|message|>Hello<|end|>"
                        "<|channel|>final<|message|>InternVL<|return|>")


def test_gpt_oss_stop_ids_are_return_only(tok):
    t = get_template("internvl3_5_gpt_oss")
    assert stop_token_ids(tok, t) == [tok.convert_tokens_to_ids("<|return|>")]


def test_thinking_prompt_in_internvl2_5_equals_upstream(tok):
    """InternVL3.5's Qwen3 models keep internvl2_5; thinking = model.system_message = R1."""
    t = get_template("internvl2_5")
    history = [("Hi", "<think>\nsay hi\n</think>\n\nHello")]
    r = render(tok, t, build_messages("Who are you?", history, THINKING_SYSTEM_PROMPT),
               add_generation_prompt=True)
    assert r.text == UPSTREAM_V25_THINK


def test_gpt_oss_piecewise_ids_equal_whole_text_ids(tok):
    messages = [
        {"role": "user", "content": "Image-1: <image>\nImage-2: <image>\nDescribe the two images."},
        {"role": "assistant", "content": "<|channel|>final<|message|>A cat sits on a mat."},
        {"role": "user", "content": "Can you tell me a story?"},
    ]
    rendered = render(tok, get_template("internvl3_5_gpt_oss"), messages, num_patches_list=[2, 1],
                      num_image_token=3, add_generation_prompt=True)
    assert rendered.input_ids == tok(rendered.text)["input_ids"]
