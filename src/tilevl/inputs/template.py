"""The published InternVL conversation templates, and rendering a chat to (ids, labels).

Prompt text is byte-for-byte what upstream's `Conversation.get_prompt()` builds; ids are made
piece by piece so the training label mask is aligned with the text by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tilevl.checkpoint.tokenizer import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN
from tilevl.errors import ConfigError, InputError

IMAGE_PLACEHOLDER = "<image>"
# Typed into a message, these would add image slots that no image fills (the splice fails).
_FORBIDDEN_IN_CONTENT = (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Template:
    """One conversation format (upstream's `Conversation` with `SeparatorStyle.MPT`/`MPT_TWO`).

    Rendering: `system_template.format(system_message) + sep`, then for every turn
    `role + message + sep`, and a bare assistant `role` to ask for a reply. With a
    `final_sep` (upstream's `sep2` in `MPT_TWO`), an assistant message that ends the
    conversation is closed by `final_sep` instead of `sep`.

    Attributes:
        name: the official name, as in the `template` field of a checkpoint's config.json.
        system_template: holds `{system_message}`.
        system_message: the default system prompt (a user's system message replaces it).
        roles: (user role prefix, assistant role prefix).
        sep: written after the system block and after every message.
        extra_stop_strings: upstream's `stop_str`, besides the end token.
        final_sep: closes the conversation's last assistant message; upstream generates
            until it (and not until `sep`, which also ends a reply's inner channels).
        channels: replies carry harmony channel markup (`<|channel|>final<|message|>…`),
            made of special tokens that decoding must keep (upstream decodes so).
    """

    name: str
    system_template: str
    system_message: str
    roles: tuple[str, str]
    sep: str
    extra_stop_strings: tuple[str, ...] = ()
    final_sep: str | None = None
    channels: bool = False

    @property
    def end_token(self) -> str:
        """The token ending a reply (`(final_sep or sep).strip()`); upstream generates until it."""
        return (self.final_sep or self.sep).strip()

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Strings at which generation stops: the end token, then upstream's `stop_str`."""
        return tuple(dict.fromkeys((self.end_token, *self.extra_stop_strings)))


# Source: OpenGVLab/InternVL, internvl_chat/internvl/conversation.py (commit c981100b3849),
# the four templates registered at the end of that file. Upstream keeps the older Chinese
# system prompt for Hermes-2 / internlm2-chat / phi3-chat "to avoid changes in benchmark
# performance"; InternVL2.5 (and InternVL3, which reuses `internvl2_5`) have the newer one.
_SYSTEM_V1_5 = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
    "是一个有用无害的人工智能助手。"
)
_SYSTEM_V2_5 = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位"
    "联合开发的多模态大语言模型。"
)

# InternVL3.5's Qwen3 models (dense and MoE) keep `internvl2_5` (their training scripts pass
# --conv_style "internvl2_5"); only the GPT-OSS model has its own template and prompt.
_SYSTEM_GPT_OSS = (
    "You are InternVL, a large language model trained by Shanghai AI Laboratory.\n"
    "Knowledge cutoff: 2024-06\nCurrent date: 2025-08-06\n\nReasoning: low\n\n"
    "# Valid channels: final. Channel must be included for every message."
)

TEMPLATES: Mapping[str, Template] = {
    t.name: t
    for t in (
        # ChatML without a newline after <|im_end|>: InternVL-Chat-V1-2, InternVL2-1B/40B.
        Template(
            name="Hermes-2",
            system_template="<|im_start|>system\n{system_message}",
            system_message=_SYSTEM_V1_5,
            roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
            sep="<|im_end|>",
            extra_stop_strings=("<|endoftext|>",),
        ),
        # Same text as Hermes-2 (upstream: they differ only in the <s> its training adds):
        # InternVL-Chat-V1-5, Mini-InternVL-Chat-2B-V1-5, InternVL2-2B/8B/26B.
        Template(
            name="internlm2-chat",
            system_template="<|im_start|>system\n{system_message}",
            system_message=_SYSTEM_V1_5,
            roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
            sep="<|im_end|>",
        ),
        # Phi-3 roles: Mini-InternVL-Chat-4B-V1-5, InternVL2-4B.
        Template(
            name="phi3-chat",
            system_template="<|system|>\n{system_message}",
            system_message=_SYSTEM_V1_5,
            roles=("<|user|>\n", "<|assistant|>\n"),
            sep="<|end|>",
        ),
        # ChatML with a newline after <|im_end|>: InternVL2.5 and InternVL3.
        Template(
            name="internvl2_5",
            system_template="<|im_start|>system\n{system_message}",
            system_message=_SYSTEM_V2_5,
            roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
            sep="<|im_end|>\n",
        ),
        # Harmony (OpenAI's GPT-OSS format) for InternVL3.5-GPT-OSS-20B-A4B. Source:
        # internvl_chat_gpt_oss/internvl/model/internvl_chat/conversation.py (commit
        # 2410d1d, `SeparatorStyle.MPT_TWO`). The assistant role stops before the channel:
        # the reply itself starts with `<|channel|>final<|message|>`.
        Template(
            name="internvl3_5_gpt_oss",
            system_template="<|start|>system<|message|>{system_message}",
            system_message=_SYSTEM_GPT_OSS,
            roles=("<|start|>user<|message|>", "<|start|>assistant"),
            sep="<|end|>",
            final_sep="<|return|>",
            channels=True,
        ),
        # Ours, not upstream's: internvl2_5's format with a short English system prompt, for
        # the embedded tilevl-tiny model. Its tokenizer is trained on English MiniBench text,
        # where the Chinese prompt above costs ~150 byte-level tokens in every sample.
        Template(
            name="tilevl",
            system_template="<|im_start|>system\n{system_message}",
            system_message="You are tilevl-tiny, a small vision-language model.",
            roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
            sep="<|im_end|>\n",
        ),
    )
}


def get_template(name: str) -> Template:
    """Look up a template by its official name (a checkpoint config's `template` field).

    Args:
        name: e.g. "internlm2-chat"; case and spelling as upstream writes it.
    Returns:
        The frozen `Template`.
    Raises:
        ConfigError: for an unknown name; the message lists the known ones.
    """
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ConfigError(
            f"unknown conversation template {name!r}; known: {', '.join(sorted(TEMPLATES))}"
        ) from None


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation.

    Attributes:
        input_ids: token ids, (L,).
        labels: (L,); IGNORE_INDEX (-100) except on the assistant replies and their end token.
        text: the prompt as upstream builds it, image blocks expanded.
        image_spans: per image, (start, stop) of its <IMG_CONTEXT> run in `input_ids`.
    """

    input_ids: list[int]
    labels: list[int]
    text: str
    image_spans: list[tuple[int, int]] = field(default_factory=list)


def build_messages(
    question: str,
    history: Sequence[tuple[str, str]] | None = None,
    system_message: str | None = None,
) -> list[dict[str, str]]:
    """Turn the `chat()` arguments (question + (question, answer) history) into messages.

    Args:
        question: the new user turn (may hold `<image>` placeholders).
        history: earlier turns, oldest first, as upstream's `history` list.
        system_message: replaces the template's default system prompt when given.
    Returns:
        A message list for `render`, ending with the user's question.
    """
    messages: list[dict[str, str]] = []
    if system_message is not None:
        messages.append({"role": "system", "content": system_message})
    for old_question, old_answer in history or ():
        messages.append({"role": "user", "content": old_question})
        messages.append({"role": "assistant", "content": old_answer})
    messages.append({"role": "user", "content": question})
    return messages


def add_image_placeholder(question: str, num_images: int) -> str:
    """Upstream's rule: with pixel values and no `<image>` in the question, prepend one.

    Only one placeholder is added, as upstream does; several images therefore need explicit
    placeholders (or one entry in num_patches_list), else `render` reports the mismatch.

    Args:
        question: the user's text.
        num_images: how many images come with it (0: leave the question alone).
    Returns:
        The question, with "<image>\\n" in front where the rule applies.
    """
    if num_images > 0 and IMAGE_PLACEHOLDER not in question:
        return f"{IMAGE_PLACEHOLDER}\n{question}"
    return question


def stop_token_ids(tokenizer, template: Template) -> list[int]:
    """Ids of the template's stop strings that are single tokens of `tokenizer`.

    Args:
        tokenizer: a `transformers` tokenizer.
        template: the conversation template.
    Returns:
        Distinct ids, end token first; strings the vocabulary lacks are left out.
    """
    ids: list[int] = []
    for text in template.stop_strings:
        tid = _token_id(tokenizer, text)
        if tid is not None and tid not in ids:
            ids.append(tid)
    return ids


def render(
    tokenizer,
    template: Template,
    messages: Sequence[Mapping[str, str]],
    *,
    num_patches_list: Sequence[int] | None = None,
    num_image_token: int = 256,
    add_generation_prompt: bool = False,
) -> Rendered:
    """Render messages in a template to token ids, training labels and the prompt text.

    Text pieces are tokenized separately and concatenated; adjacent pieces with the same
    label are joined first, so the only text cut is between an assistant role prefix
    (ending in "\\n") and its reply. The image blocks are written as ids, never tokenized.
    A beginning-of-sequence id is put first exactly when the tokenizer would put one in
    front of plain text (InternLM2 and Llama/Phi-3 tokenizers do, Qwen2's does not), which
    is what upstream's `tokenizer(query)` gets at inference.

    Args:
        tokenizer: a `transformers` fast tokenizer holding <img>, </img>, <IMG_CONTEXT>.
        template: from `get_template`.
        messages: [{"role": "system"|"user"|"assistant", "content": str}], an optional
            system message first, then user and assistant alternating from a user turn.
        num_patches_list: tiles of each image, in placeholder order.
        num_image_token: <IMG_CONTEXT> tokens per tile (256 for 448 px, pixel-shuffled).
        add_generation_prompt: end with the bare assistant role, to generate a reply.
    Returns:
        `Rendered(input_ids, labels, text, image_spans)`.
    Raises:
        InputError: bad roles or order, vision tokens typed in a message,
            or a placeholder count that differs from len(num_patches_list).
        ConfigError: the tokenizer lacks an image token.
    """
    system_message, turns = _split_messages(messages, add_generation_prompt)
    if system_message is None:
        system_message = template.system_message
    patches = list(num_patches_list or ())
    num_placeholders = sum(c.count(IMAGE_PLACEHOLDER) for role, c in turns if role == "user")
    if num_placeholders != len(patches):
        raise InputError(
            f"the messages hold {num_placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but "
            f"num_patches_list gives {len(patches)} image(s)"
        )
    if any(n < 1 for n in patches):
        raise InputError(f"num_patches_list entries must be >= 1, got {patches}")

    # Segments in text order: (text, labelled) or (tile count, None) for an image block.
    segments: list[tuple[str | int, bool | None]] = [
        (template.system_template.format(system_message=system_message) + template.sep, False)
    ]
    user_role, assistant_role = template.roles
    next_image = 0
    for index, (role, content) in enumerate(turns):
        if role == "user":
            parts = content.split(IMAGE_PLACEHOLDER)
            segments.append((user_role + parts[0], False))
            for part in parts[1:]:
                segments.append((patches[next_image], None))
                segments.append((part, False))
                next_image += 1
            segments.append((template.sep, False))
        else:
            # Upstream trains on the reply and its end token, not on the role prefix nor
            # on internvl2_5's "\n" after <|im_end|>.
            last = index == len(turns) - 1 and not add_generation_prompt
            closer = template.final_sep if (last and template.final_sep) else template.sep
            end, trailer = closer.strip(), closer[len(closer.rstrip()):]
            segments += [(assistant_role, False), (content + end, True), (trailer, False)]
    if add_generation_prompt:
        segments.append((assistant_role, False))

    img_start, img_end, img_context = (
        _require_token_id(tokenizer, t) for t in (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN)
    )
    input_ids: list[int] = list(_bos_ids(tokenizer))
    labels: list[int] = [IGNORE_INDEX] * len(input_ids)
    texts: list[str] = []
    image_spans: list[tuple[int, int]] = []
    for piece, ids, labelled in _encode_segments(tokenizer, _coalesce(segments), img_end):
        if labelled is None:  # an image block: piece is its tile count
            n = num_image_token * piece
            texts.append(IMG_START_TOKEN + IMG_CONTEXT_TOKEN * n + IMG_END_TOKEN)
            start = len(input_ids) + 1
            image_spans.append((start, start + n))
            ids = [img_start, *([img_context] * n), img_end]
            labelled = False
        else:
            texts.append(piece)
        input_ids += ids
        labels += ids if labelled else [IGNORE_INDEX] * len(ids)
    return Rendered(input_ids, labels, "".join(texts), image_spans)


def _split_messages(
    messages: Sequence[Mapping[str, str]], add_generation_prompt: bool
) -> tuple[str | None, list[tuple[str, str]]]:
    """Check roles and order; return (system message or None, [(role, content)])."""
    system_message = None
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        where = f"messages[{i}]"
        if not isinstance(content, str):
            raise InputError(f"{where}: content must be a str, got {type(content).__name__}")
        for token in _FORBIDDEN_IN_CONTENT:
            if token in content:
                raise InputError(
                    f"{where}: content holds the reserved token {token!r}; write "
                    f"{IMAGE_PLACEHOLDER!r} where an image goes"
                )
        if role == "system":
            if i != 0:
                raise InputError(f"{where}: a system message may only come first")
            system_message = content
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise InputError(f"{where}: expected role {expected!r}, got {role!r}")
        # An empty reply (a model may answer with its end token at once) is rendered as
        # role + end token; upstream would drop the end token and garble the next turn.
        turns.append((role, content))
    if not turns:
        raise InputError("messages hold no user turn")
    if add_generation_prompt and turns[-1][0] != "user":
        raise InputError("add_generation_prompt needs the last message to be a user turn")
    return system_message, turns


def _coalesce(segments):
    """Join adjacent text segments with the same label; drop empty ones."""
    out: list[tuple[str | int, bool | None]] = []
    for piece, labelled in segments:
        if labelled is not None and not piece:
            continue
        if out and labelled is not None and out[-1][1] is labelled:
            out[-1] = (out[-1][0] + piece, labelled)
        else:
            out.append((piece, labelled))
    return out


def _encode_segments(tokenizer, segments, anchor_id: int):
    """Yield (piece, ids, labelled) for each segment; ids is None for image blocks.

    Every text piece is encoded behind the </img> anchor token (then dropped) in one batch
    call. The anchor makes each piece start as it would mid-text: SentencePiece tokenizers
    (InternLM2, Phi-3) otherwise put a "▁" prefix on each piece that starts an encode call.
    """
    anchor = IMG_END_TOKEN
    texts = [anchor + piece for piece, labelled in segments if labelled is not None]
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else iter(())
    for piece, labelled in segments:
        if labelled is None:
            yield piece, None, None
            continue
        ids = next(encoded)
        if not ids or ids[0] != anchor_id:
            raise ConfigError(f"the tokenizer does not keep {anchor!r} as one token")
        yield piece, ids[1:], labelled


def _bos_ids(tokenizer) -> list[int]:
    """The ids the tokenizer puts in front of plain text (a BOS, or nothing)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i]
    return []


def _token_id(tokenizer, token: str) -> int | None:
    """The id of `token` if the vocabulary has it as one token, else None."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return tid


def _require_token_id(tokenizer, token: str) -> int:
    tid = _token_id(tokenizer, token)
    if tid is None:
        raise ConfigError(
            f"the tokenizer has no {token!r} token; InternVL checkpoints add it (see "
            "tilevl.checkpoint.tokenizer.VISION_TOKENS)"
        )
    return tid
