"""InternVL3.5's thinking mode: its reasoning system prompt, and replies split into thinking
and answer where the format marks them (`<think>…</think>`, or harmony channels for GPT-OSS).

The layers above (chat(), ChatSession, the CLI, the server) call these; none parses replies itself.
"""

from __future__ import annotations

import re

from tilevl.errors import InputError

# The InternVL3.5 model cards' "Thinking System Prompt" (R1_SYSTEM_PROMPT), set as the
# model's system message to switch thinking on. Source: the InternVL3_5-* model cards
# ("Thinking Mode"; they point to VLMEvalKit's vlmeval/vlm/internvl/internvl_chat.py) and
# OpenGVLab/InternVL internvl_chat/tools/reasoning_data_pipeline/utils/constants.py.
# The cards recommend do_sample=True, temperature=0.6 with it (against repetition).
THINKING_SYSTEM_PROMPT = (
    "You are an AI assistant that rigorously follows this response protocol:\n\n"
    "1. First, conduct a detailed analysis of the question. Consider different angles, "
    "potential solutions, and reason through the problem step-by-step. Enclose this entire "
    "thinking process within <think> and </think> tags.\n\n"
    "2. After the thinking section, provide a clear, concise, and direct answer to the user's "
    "question. Separate the answer from the think section with a newline.\n\n"
    "Ensure that the thinking process is thorough but remains focused on the query. The final "
    "answer should be standalone and not reference the thinking section."
)
# The model cards' recommended sampling in thinking mode.
THINKING_TEMPERATURE = 0.6

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Harmony: `<|channel|>NAME<|message|>TEXT` ended by <|end|>, <|return|> or the next <|start|>.
_CHANNEL = re.compile(r"<\|channel\|>(\w+)<\|message\|>(.*?)(?=<\|end\|>|<\|return\|>|<\|start\|>|<\|call\|>|$)",
                      re.DOTALL)


def thinking_system_message(system_message: str | None, enable_thinking: bool) -> str | None:
    """The system message to render: the thinking prompt when thinking is on.

    Args:
        system_message: the caller's system message (None: the template's default).
        enable_thinking: switch InternVL3.5's thinking mode on.
    Returns:
        `system_message` unchanged when thinking is off, else THINKING_SYSTEM_PROMPT.
    Raises:
        InputError: thinking is on and another system message is given: the thinking mode
            *is* a system prompt, so the two cannot both apply.
    """
    if not enable_thinking:
        return system_message
    if system_message is not None and system_message != THINKING_SYSTEM_PROMPT:
        raise InputError(
            "enable_thinking sets the system prompt to InternVL3.5's thinking prompt; it cannot be "
            f"combined with another system message ({system_message[:40]!r}...); drop one of them"
        )
    return THINKING_SYSTEM_PROMPT


class ChatReply(str):
    """A reply: the answer as a `str` (what chat() always returned), plus its thinking.

    Attributes:
        reasoning: the thinking text the reply marked (`<think>…</think>` or a harmony
            `analysis` channel), stripped; None when it marked none.
        raw: the reply as upstream returns and stores it in `history` (tags and channel
            headers kept), cut at the end token and stripped.
    """

    reasoning: str | None
    raw: str

    def __new__(cls, answer: str, reasoning: str | None = None, raw: str | None = None) -> ChatReply:
        reply = super().__new__(cls, answer)
        reply.reasoning = reasoning
        reply.raw = answer if raw is None else raw
        return reply

    @classmethod
    def parse(cls, raw: str, channels: bool = False) -> ChatReply:
        """Split a cleaned reply into answer and thinking (see `split_reasoning`)."""
        reasoning, answer = split_reasoning(raw, channels)
        return cls(answer, reasoning, raw)


def split_reasoning(text: str, channels: bool = False) -> tuple[str | None, str]:
    """Split a reply into (thinking, answer) where its format marks the thinking.

    `<think>` must open the reply (after whitespace), as the thinking prompt asks; the
    answer is what follows `</think>`. A reply cut short inside the thinking (no
    `</think>`) is all thinking and an empty answer. Text without a leading `<think>` is
    all answer. With `channels` (harmony), the `analysis` channel is thinking and the
    `final` channel the answer; a `<think>` block inside the final channel is split too.

    Args:
        text: the reply, cut at the end token.
        channels: the template's replies carry harmony channel markup.
    Returns:
        (thinking or None, answer), both stripped.
    """
    thoughts: list[str] = []
    if channels and "<|channel|>" in text:
        analysis, final = channel_bodies(text)
        thoughts += [t.strip() for t in analysis]
        text = "\n".join(f.strip() for f in final)
    stripped = text.strip()
    if stripped.startswith(THINK_OPEN):
        body = stripped[len(THINK_OPEN):]
        thought, closed, rest = body.partition(THINK_CLOSE)
        thoughts.append(thought.strip())
        stripped = rest.strip() if closed else ""
    reasoning = "\n".join(t for t in thoughts if t) if thoughts else None
    return reasoning, stripped


def channel_bodies(text: str) -> tuple[list[str], list[str]]:
    """Harmony markup → (bodies of non-final channels, bodies of `final` channels), unstripped."""
    analysis: list[str] = []
    final: list[str] = []
    for name, body in _CHANNEL.findall(text):
        (final if name == "final" else analysis).append(body)
    return analysis, final


class ReasoningStream:
    """`split_reasoning` for text that arrives in pieces (the server's streamed deltas).

    `feed` returns (thinking delta, answer delta) as soon as they are certain: text that
    may still turn out to be a `<think>`/`</think>` tag, or whitespace that may be trailing,
    is held back until the next piece or `finish`. The deltas of each part, joined, equal
    what `split_reasoning` returns for the whole text (`<think>` form; not harmony).
    """

    def __init__(self) -> None:
        self._state = "start"  # start → thinking → answer
        self._held = ""
        self._started = False  # the current part has shown non-whitespace text

    def feed(self, piece: str) -> tuple[str, str]:
        """Take the next piece of the reply; return (thinking delta, answer delta)."""
        text = self._held + piece
        self._held = ""
        thought = ""
        if self._state == "start":
            head = text.lstrip()
            if head.startswith(THINK_OPEN):
                self._state, text = "thinking", head[len(THINK_OPEN):]
            elif THINK_OPEN.startswith(head):  # still empty, or a piece of "<think>"
                self._held = text
                return "", ""
            else:
                self._state, text = "answer", head
        if self._state == "thinking":
            if not self._started:
                text = text.lstrip()
                self._started = bool(text)
            before, closed, after = text.partition(THINK_CLOSE)
            if not closed:
                keep = _tag_prefix_length(text, THINK_CLOSE)
                return self._emit(text[:len(text) - keep], text[len(text) - keep:]), ""
            thought, self._state, self._started, text = before.rstrip(), "answer", False, after
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        return thought, self._emit(text, "")

    def _emit(self, safe: str, tail: str) -> str:
        """Give out `safe` but its trailing whitespace, which is held with `tail`."""
        out = safe.rstrip()
        self._held = safe[len(out):] + tail
        return out

    def finish(self) -> tuple[str, str]:
        """Flush what was held back: (thinking tail, answer tail); trailing space is dropped."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            return held.rstrip(), ""
        if self._state == "start":
            return "", held.strip()
        return "", ""


def _tag_prefix_length(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ChannelStream:
    """`split_reasoning(channels=True)` for streamed harmony replies (GPT-OSS template).

    Channel headers are special tokens, so they arrive whole: the channels of the text so
    far only grow. Non-final channels stream as thinking; the final channel goes through a
    `ReasoningStream` (a `<think>` block inside it is thinking too).
    """

    def __init__(self) -> None:
        self._text = ""
        self._sent_analysis = 0
        self._sent_final = 0
        self._final = ReasoningStream()

    def feed(self, piece: str) -> tuple[str, str]:
        """Take the next piece of the reply; return (thinking delta, answer delta)."""
        self._text += piece
        if "<|channel|>" in self._text:
            analysis, final = channel_bodies(self._text)
        else:  # no markup (yet): the text so far is the answer
            analysis, final = [], [self._text]
        thought_text = "\n".join(t for t in (a.strip() for a in analysis) if t)
        thought = thought_text[self._sent_analysis:]
        self._sent_analysis = len(thought_text)
        final_text = "\n".join(final)
        r, a = self._final.feed(final_text[self._sent_final:])
        self._sent_final = len(final_text)
        return thought + r, a

    def finish(self) -> tuple[str, str]:
        """Flush what the final channel's splitter holds back."""
        return self._final.finish()
