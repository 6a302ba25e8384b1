"""The seeds' chat API: `chat()` and `batch_chat()` over a loaded model and its tokenizer.

Prompts are rendered by the one shared template function; generation is transformers'
(greedy, sampling, beams, streamers, stop strings) with the template's end token as EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from tilevl.chat.thinking import ChatReply, thinking_system_message
from tilevl.errors import ConfigError, InputError
from tilevl.inputs.template import (
    Template,
    add_image_placeholder,
    build_messages,
    get_template,
    render,
    stop_token_ids,
)
from tilevl.model.generation import keep_image


@dataclass
class GenerationSettings:
    """Generation settings a user (or the HTTP server) may set; None = transformers' default."""

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    num_beams: int = 1
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def from_dict(cls, config: dict | None) -> tuple[GenerationSettings, dict]:
        """Split a seeds-style `generation_config` dict into our settings and the rest.

        The rest (e.g. `streamer`, `min_new_tokens`) is passed to transformers as it is.
        """
        config = dict(config or {})
        names = {f.name for f in fields(cls)}
        known = {k: config.pop(k) for k in list(config) if k in names}
        if "stop_strings" in config:
            known["stop"] = config.pop("stop_strings")
        if isinstance(known.get("stop"), str):
            known["stop"] = (known["stop"],)
        settings = cls(**known)
        settings.validate()
        return settings, config

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_beams < 1:
            raise InputError(f"num_beams must be >= 1, got {self.num_beams}")

    def generate_kwargs(self, tokenizer, template: Template) -> dict[str, Any]:
        """Keyword arguments for `generate`, with the template's end token(s) as EOS."""
        eos = stop_token_ids(tokenizer, template)
        if not eos:
            raise ConfigError(f"the tokenizer has no end token {template.end_token!r} of template {template.name}")
        do_sample = self.do_sample and (self.temperature is None or self.temperature > 0)
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": do_sample,
            "num_beams": self.num_beams,
            "eos_token_id": eos,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        }
        if do_sample:
            for name in ("temperature", "top_p", "top_k"):
                if getattr(self, name) is not None:
                    kwargs[name] = getattr(self, name)
        else:  # silence transformers' warnings about sampling knobs in greedy mode
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.stop:
            kwargs["stop_strings"] = list(self.stop)
            kwargs["tokenizer"] = tokenizer
        return kwargs


def model_template(model, template: str | Template | None = None) -> Template:
    """The conversation template: the argument, else the checkpoint's `template` field."""
    if isinstance(template, Template):
        return template
    name = template or model.config.template
    if not name:
        raise ConfigError("this checkpoint's config.json names no 'template'; pass template=...")
    return get_template(name)


def clean_response(text: str, template: Template, stop: Sequence[str] = ()) -> str:
    """Cut the reply at the end token or a stop string and strip it (as upstream does)."""
    for marker in (template.end_token, *template.stop_strings, *stop):
        if marker and marker in text:
            text = text.split(marker, 1)[0]
    return text.strip()


def decode_reply(tokenizer, ids, template: Template, stop: Sequence[str] = ()) -> ChatReply:
    """Generated ids → the reply: answer (a str) with `.reasoning` and `.raw` (for history).

    Harmony templates keep special tokens when decoding, as upstream does: their channel
    headers are special tokens, and the answer is found by them.
    """
    text = tokenizer.decode(ids, skip_special_tokens=not template.channels)
    return ChatReply.parse(clean_response(text, template, stop), template.channels)


def _check_patches(pixel_values: torch.Tensor | None, num_patches_list: Sequence[int] | None) -> list[int]:
    if pixel_values is None:
        if num_patches_list:
            raise InputError(f"num_patches_list {list(num_patches_list)} given without pixel_values")
        return []
    patches = list(num_patches_list) if num_patches_list is not None else [pixel_values.shape[0]]
    if sum(patches) != pixel_values.shape[0]:
        raise InputError(
            f"num_patches_list sums to {sum(patches)} tiles but pixel_values holds {pixel_values.shape[0]}"
        )
    return patches


def prepare_chat_prompt(
    model, tokenizer, question: str, history=None, num_patches_list: Sequence[int] = (),
    template: Template | None = None, system_message: str | None = None,
) -> tuple[list[int], str]:
    """Render the prompt of one chat turn. Returns (input_ids, question as recorded).

    As upstream: on the first turn with images and no `<image>`, one is put in front.
    """
    template = template or model_template(model)
    if not history:
        question = add_image_placeholder(question, len(num_patches_list))
    messages = build_messages(question, history, system_message or getattr(model, "system_message", None))
    rendered = render(
        tokenizer, template, messages,
        num_patches_list=num_patches_list, num_image_token=model.num_image_token,
        add_generation_prompt=True,
    )
    return rendered.input_ids, question


def _ensure_context_id(model, tokenizer) -> None:
    from tilevl.checkpoint.tokenizer import img_context_token_id

    if model.img_context_token_id is None:
        model.img_context_token_id = img_context_token_id(tokenizer)


def chat(
    model, tokenizer, pixel_values: torch.Tensor | None, question: str,
    generation_config: dict | None = None, history: list | None = None, return_history: bool = False,
    num_patches_list: Sequence[int] | None = None, system_message: str | None = None,
    template: str | Template | None = None, enable_thinking: bool = False,
):
    """One chat turn, exactly as the seeds call it (`model.chat(tokenizer, pixel_values, …)`).

    Args:
        model: a `VisionLanguageModel`.
        tokenizer: its tokenizer.
        pixel_values: [T, 3, S, S] tiles of all images of the conversation, or None.
        question: the user's text; `<image>` placeholders mark where images go.
        generation_config: a dict (max_new_tokens, do_sample, temperature, top_p, top_k,
            num_beams, repetition_penalty, stop, seed, streamer …).
        history: earlier (question, answer) pairs; None starts a conversation.
        return_history: also return the history with this turn appended.
        num_patches_list: tiles per image (default: all tiles form one image).
        system_message: replaces the system prompt (default: `model.system_message`, else
            the template's).
        enable_thinking: InternVL3.5's thinking mode: the model card's reasoning system
            prompt (`tilevl.chat.thinking.THINKING_SYSTEM_PROMPT`) is used.
    Returns:
        The reply, or (reply, history) when `return_history`. The reply is a `ChatReply`:
        the answer as a str, its thinking in `.reasoning` (None when the reply marked
        none) and the whole reply in `.raw`, which is what `history` stores (as upstream).
    """
    _ensure_context_id(model, tokenizer)
    template = model_template(model, template)
    settings, extra = GenerationSettings.from_dict(generation_config)
    patches = _check_patches(pixel_values, num_patches_list)
    system_message = thinking_system_message(
        system_message if system_message is not None else getattr(model, "system_message", None), enable_thinking)
    ids, question = prepare_chat_prompt(model, tokenizer, question, history, patches, template, system_message)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    input_ids = torch.tensor([ids], device=model.device)
    out = model.generate(
        input_ids, pixel_values, attention_mask=torch.ones_like(input_ids),
        **settings.generate_kwargs(tokenizer, template), **extra,
    )
    response = decode_reply(tokenizer, out[0], template, settings.stop)
    history = list(history or []) + [(question, response.raw)]
    return (response, history) if return_history else response


def batch_chat(
    model, tokenizer, pixel_values: torch.Tensor | None, questions: Sequence[str],
    generation_config: dict | None = None, num_patches_list: Sequence[int] | None = None,
    history=None, return_history: bool = False, system_message: str | None = None,
    template: str | Template | None = None, enable_thinking: bool = False,
) -> list[ChatReply]:
    """Answer several independent questions in one left-padded batch (one forward per step).

    Args:
        pixel_values: tiles of all samples, concatenated in sample order (or None).
        questions: one question per sample.
        num_patches_list: tiles per sample (each sample has one image, as in the seeds);
            0 marks a pure-text sample.
        enable_thinking: InternVL3.5's thinking mode for every sample (see `chat`).
    Returns:
        One `ChatReply` per question (answer str, `.reasoning`, `.raw`).
    """
    if history is not None or return_history:
        raise InputError("batch_chat does not take history (as upstream); use chat() per conversation")
    _ensure_context_id(model, tokenizer)
    template = model_template(model, template)
    settings, extra = GenerationSettings.from_dict(generation_config)
    # k sampled replies per question, returned question by question (as transformers lays
    # out num_return_sequences); each prompt and image is encoded once, not k times.
    repeats = int(extra.pop("num_return_sequences", 1) or 1)
    if repeats < 1:
        raise InputError(f"num_return_sequences must be >= 1, got {repeats}")
    system_message = thinking_system_message(
        system_message if system_message is not None else getattr(model, "system_message", None), enable_thinking)
    if num_patches_list is None:
        num_patches_list = [pixel_values.shape[0] // len(questions)] * len(questions) if pixel_values is not None else [0] * len(questions)
    if len(num_patches_list) != len(questions):
        raise InputError(f"{len(questions)} questions but num_patches_list has {len(num_patches_list)} entries")
    total = sum(num_patches_list)
    if (pixel_values.shape[0] if pixel_values is not None else 0) != total:
        raise InputError(f"num_patches_list sums to {total} tiles but pixel_values holds "
                         f"{0 if pixel_values is None else pixel_values.shape[0]}")
    prompts = []
    for question, patches in zip(questions, num_patches_list):
        images = [patches] if patches else []
        ids, _ = prepare_chat_prompt(model, tokenizer, question, None, images, template, system_message)
        prompts.append(ids)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    kwargs = {**settings.generate_kwargs(tokenizer, template), **extra}
    shared = shared_prefix_length(prompts, model.img_context_token_id)
    # The shared prefix lives in a KV cache: without one (use_cache=False) take the plain path.
    if (len(prompts) * repeats > 1 and shared >= MIN_SHARED_PREFIX and settings.num_beams == 1
            and kwargs.get("use_cache", True)):
        out = _generate_from_shared_prefix(model, prompts, shared, pixel_values,
                                           pad_id(tokenizer, template), kwargs, repeats)
    else:
        if repeats > 1:  # the plain path encodes every copy (rare: no shared prefix, beams)
            pixel_values, prompts = _repeat_rows(pixel_values, num_patches_list, prompts, repeats)
        input_ids, attention_mask = left_pad(prompts, pad_id(tokenizer, template))
        out = model.generate(input_ids.to(model.device), pixel_values,
                             attention_mask=attention_mask.to(model.device), **kwargs)
    return [decode_reply(tokenizer, row, template, settings.stop) for row in out]


def _repeat_rows(pixel_values, num_patches_list, prompts, repeats: int):
    """Each prompt (and its tiles) `repeats` times in a row: ([T·k, 3, S, S] | None, prompts)."""
    prompts = [p for p in prompts for _ in range(repeats)]
    if pixel_values is None:
        return None, prompts
    return pixel_values[_tile_rows(num_patches_list, repeats, pixel_values.device)], prompts


def _tile_rows(num_patches_list, repeats: int, device) -> torch.Tensor:
    """Indices of the tiles (or their features) of every row once each row is repeated."""
    starts = [sum(num_patches_list[:i]) for i in range(len(num_patches_list))]
    index = [t for start, n in zip(starts, num_patches_list) for _ in range(repeats)
             for t in range(start, start + n)]
    return torch.tensor(index, dtype=torch.long, device=device)


# A batch whose prompts share at least this many leading ids (the template's system block and
# any common instruction) computes them once; shorter shares are not worth a second pass.
MIN_SHARED_PREFIX = 8


def shared_prefix_length(prompts: Sequence[Sequence[int]], context_id: int | None) -> int:
    """How many leading ids all prompts share, stopping before the first image slot and
    leaving every prompt at least one id of its own (generate() must feed one new token)."""
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    k = 0
    while k < limit and first[k] != context_id and all(p[k] == first[k] for p in prompts):
        k += 1
    return k


@torch.no_grad()
def _generate_from_shared_prefix(model, prompts: Sequence[Sequence[int]], shared: int,
                                 pixel_values: torch.Tensor | None, pad: int,
                                 kwargs: dict, repeats: int = 1) -> torch.Tensor:
    """batch_chat's generation with the shared prefix prefilled once, not once per row.

    The layout is [prefix | left padding | rest of each prompt]; the mask hides the padding
    and position ids count only real tokens, so every row sees exactly what it would see
    alone. The rest is prefilled into the (repeated) prefix cache except its last id, which
    generate() feeds itself. With `repeats` = k the prefilled cache is then repeated k times
    per row (num_return_sequences: the images and prompts are encoded once). Returns
    [B·k, new] generated ids, as `model.generate` does.
    """
    from transformers import DynamicCache

    llm, device = model.language_model, model.device
    rows = len(prompts)
    prefix = torch.tensor([list(prompts[0][:shared])], device=device)
    cache = DynamicCache(config=llm.config)
    llm.model(input_ids=prefix, cache=cache, use_cache=True,
              position_ids=torch.arange(shared, device=device)[None])
    cache.batch_repeat_interleave(rows)
    rest, rest_mask = left_pad([p[shared:] for p in prompts], pad)
    rest, rest_mask = rest.to(device), rest_mask.to(device)
    input_ids = torch.cat([prefix.expand(rows, -1), rest], 1)
    attention_mask = torch.cat([torch.ones(rows, shared, dtype=rest_mask.dtype, device=device),
                                rest_mask], 1)
    width = rest.shape[1]
    features = model.extract_feature(pixel_values) if pixel_values is not None else None
    if width > 1:
        embeds = model.embed_inputs(rest[:, :-1], visual_features=features)  # every image slot is in here
        positions = shared + (rest_mask[:, :-1].cumsum(-1) - 1).clamp(min=0)
        llm.model(inputs_embeds=embeds, attention_mask=attention_mask[:, :-1],
                  position_ids=positions, cache=cache, use_cache=True)
    if repeats > 1:
        cache = _repeated_cache(cache, llm.config, repeats, input_ids.shape[1] + kwargs["max_new_tokens"])
        input_ids = input_ids.repeat_interleave(repeats, 0)
        attention_mask = attention_mask.repeat_interleave(repeats, 0)
        if features is not None:  # only read if the LLM re-embeds the prompt
            patches = [int((p == model.img_context_token_id).sum()) // model.num_image_token
                       if model.img_context_token_id is not None else 0 for p in rest]
            features = features[_tile_rows(patches, repeats, features.device)]
    embeds = lambda: model.embed_inputs(input_ids, visual_features=features)  # noqa: E731
    if repeats > 1 and _compactable(cache, kwargs):
        return _generate_compacting(llm, input_ids, attention_mask, cache, kwargs, embeds,
                                    model.img_context_token_id)
    with keep_image(llm, input_ids, embeds, model.img_context_token_id):
        out = llm.generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **kwargs)
    sequences = out.sequences if hasattr(out, "sequences") else out
    return sequences[:, input_ids.shape[1]:]


# Sampled rows (k per prompt) end at very different lengths, and transformers keeps decoding
# every row until the last one ends. Every COMPACT_EVERY new tokens the rows that ended leave
# the batch (and the cache), so the long tail runs on a few rows, not on all of them.
COMPACT_EVERY = 16


def _compactable(cache, kwargs: dict) -> bool:
    from transformers import StaticCache

    # Stop strings and streamers see one call's rows; a static cache's rows can be dropped.
    return (isinstance(cache, StaticCache) and "stop_strings" not in kwargs
            and kwargs.get("streamer") is None and not kwargs.get("return_dict_in_generate"))


def _generate_compacting(llm, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache,
                         kwargs: dict, embeds, context_id: int | None) -> torch.Tensor:
    """`llm.generate` in chunks of COMPACT_EVERY tokens, dropping ended rows between chunks.

    Each chunk continues from the cache exactly where the previous one stopped (its last
    token is fed next), so a row sees what one long call would show it; the logits
    processors (temperature, top-k/p, repetition penalty) are transformers' own, and
    min_new_tokens counts from the first chunk. Returns [B, new] ids, padded after the end.
    """
    eos = torch.tensor(kwargs["eos_token_id"] if isinstance(kwargs["eos_token_id"], list)
                       else [kwargs["eos_token_id"]], device=input_ids.device)
    total, min_new = kwargs["max_new_tokens"], kwargs.get("min_new_tokens") or 0
    rows, start = input_ids.shape
    out = torch.full((rows, total), kwargs["pad_token_id"], dtype=torch.long, device=input_ids.device)
    live = torch.arange(rows, device=input_ids.device)
    ids, mask, done = input_ids, attention_mask, 0
    while done < total:
        step = min(COMPACT_EVERY, total - done)
        call = {**kwargs, "max_new_tokens": step}
        call.pop("min_new_tokens", None)
        if min_new > done:
            call["min_new_tokens"] = min(min_new - done, step)
        rows_now = live
        prompt = lambda: embeds()[rows_now]  # noqa: E731  (only if the LLM re-embeds)
        with keep_image(llm, ids[:, :start], prompt, context_id):
            sequences = llm.generate(input_ids=ids, attention_mask=mask, cache=cache, **call)
        new = sequences[:, ids.shape[1]:]
        out[live, done:done + new.shape[1]] = new
        done += new.shape[1]
        going = ~torch.isin(new, eos).any(1)
        if new.shape[1] < step or not bool(going.any()):
            break  # every row ended
        ids = sequences
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], new.shape[1])], 1)
        if not bool(going.all()):
            keep = going.nonzero().squeeze(1)
            ids, mask, live = ids[keep], mask[keep], live[keep]
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]
                layer.batch_size = len(keep)
    return out[:, :done]


def _repeated_cache(cache, config, repeats: int, length: int):
    """The prefilled cache with every row repeated `repeats` times, in a preallocated
    (static) cache of `length` positions when every layer is a plain full-attention one.

    Sampling k rows per prompt makes the batch k times wider; a dynamic cache then copies all
    of it at every step (torch.cat: half the decode time of tilevl-tiny at 128 rows), a
    static one writes one position in place. Other layer kinds keep the dynamic cache.
    """
    from transformers import DynamicCache, StaticCache
    from transformers.cache_utils import DynamicLayer

    if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
        cache.batch_repeat_interleave(repeats)
        return cache
    static = StaticCache(config=config, max_cache_len=length)
    if len(static.layers) != len(cache.layers):
        cache.batch_repeat_interleave(repeats)
        return cache
    for old, new in zip(cache.layers, static.layers):
        new.update(old.keys.repeat_interleave(repeats, 0), old.values.repeat_interleave(repeats, 0))
    return static


def pad_id(tokenizer, template: Template) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return stop_token_ids(tokenizer, template)[0]


def left_pad(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts to one length: ([B, L] ids, [B, L] attention mask)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids, mask
