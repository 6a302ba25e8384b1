"""The LLM's `generate` with the image kept: no step may see `<IMG_CONTEXT>` embedded as text.

transformers' generation feeds the prompt's embeddings (with the visual tokens spliced in) only
on the first step; any later step that runs over the prompt again works from the token ids.
That happens in two ways, and both would silently drop the image:

* an LLM whose `prepare_inputs_for_generation` drops a filled KV cache and re-prefills from
  the ids. Phi-3 with LongRoPE (`su`/`longrope`) does so once generation crosses
  `original_max_position_embeddings`, so that every key is recomputed with the long factors.
  Upstream InternVL's own Phi-3 code keeps the cache there: the keys already cached keep the
  short factors and only the new positions use the long ones. We keep the cache for every LLM
  (the generic `GenerationMixin.prepare_inputs_for_generation`), which is upstream's semantics.
* generation without a cache (`use_cache=False`): each step re-runs the whole sequence.

For the second (and any other re-prefill an LLM may ask for), a forward hook on the LLM's input
embeddings writes the prompt's visual tokens back into the `<IMG_CONTEXT>` slots whenever the
embedded ids start with the whole prompt (also once per beam or returned sequence, which
transformers lays out with `repeat_interleave`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import GenerationMixin

PromptEmbeds = torch.Tensor | Callable[[], torch.Tensor]


def longrope_switch_length(llm_config: Any) -> int | None:
    """Positions past which a LongRoPE LLM switches from short to long factors, else None.

    transformers picks the factors per forward call from the call's largest position, so
    keys computed before and after the switch differ; callers that reuse a cache across
    calls must know where it lies.
    """
    params = getattr(llm_config, "rope_parameters", None) or getattr(llm_config, "rope_scaling", None)
    if not isinstance(params, dict):
        return None
    kind = params.get("rope_type", params.get("type"))
    if kind not in ("longrope", "su"):
        return None
    limit = params.get("original_max_position_embeddings") or getattr(
        llm_config, "original_max_position_embeddings", None)
    return int(limit) if limit else None


@contextlib.contextmanager
def keep_image(llm, prompt_ids: torch.Tensor, prompt_embeds: PromptEmbeds,
               context_id: int | None) -> Iterator[None]:
    """Within the block, `llm.generate` keeps its KV cache and the prompt's visual tokens.

    Args:
        llm: the transformers causal LM.
        prompt_ids: [B, P] the prompt ids given to `generate` (padding and cached prefix
            included), before transformers expands them per beam.
        prompt_embeds: [B, P, H] their embeddings with the visual tokens spliced in, or a
            function computing them (called only if the LLM re-embeds the prompt).
        context_id: the `<IMG_CONTEXT>` id (None: text only, nothing to splice).
    """
    handle = None
    if context_id is not None and bool((prompt_ids == context_id).any()):
        splice = _PromptSplice(prompt_ids, prompt_embeds, context_id)
        handle = llm.get_input_embeddings().register_forward_hook(splice)
    # Set on the instance for the block only (a lasting attribute would follow the LLM into
    # copies still bound to the original); a nested block leaves the outer one's in place.
    previous = llm.prepare_inputs_for_generation
    install = not getattr(previous, "keeps_cache", False)
    had_own = "prepare_inputs_for_generation" in vars(llm)
    if install:
        llm.prepare_inputs_for_generation = _cache_keeping(llm, previous)
    try:
        yield
    finally:
        if install and had_own:
            llm.prepare_inputs_for_generation = previous
        elif install:
            del llm.prepare_inputs_for_generation
        if handle is not None:
            handle.remove()


def _cache_keeping(llm, prepare: Callable) -> Callable:
    """`prepare` (the LLM's own input preparation), but the cache it is given is never dropped."""
    generic = functools.partial(GenerationMixin.prepare_inputs_for_generation, llm)

    @functools.wraps(prepare)
    def prepare_keeping_cache(input_ids, *args, **kwargs):
        inputs = prepare(input_ids, *args, **kwargs)
        cache = kwargs.get("cache")
        # Dropping even an empty cache would lose the caller's object (ChatSession keeps it).
        if cache is not None and inputs.get("cache") is None:
            inputs = generic(input_ids, *args, **kwargs)
        return inputs

    prepare_keeping_cache.keeps_cache = True
    return prepare_keeping_cache


class _PromptSplice:
    """Forward hook of the input embeddings: puts the visual tokens back into re-embedded prompts."""

    def __init__(self, prompt_ids: torch.Tensor, prompt_embeds: PromptEmbeds, context_id: int) -> None:
        self.prompt_ids = prompt_ids
        self.context_id = context_id
        self._embeds = prompt_embeds
        self._computing = False

    def embeds(self) -> torch.Tensor:
        if callable(self._embeds):
            self._computing = True  # the function embeds the prompt itself: leave that call alone
            try:
                self._embeds = self._embeds()
            finally:
                self._computing = False
        return self._embeds

    def __call__(self, module, args, output: torch.Tensor) -> torch.Tensor | None:
        ids = args[0] if args else None
        if self._computing:
            return None
        rows, width = self.prompt_ids.shape
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < width:
            return None  # new tokens only: nothing of the prompt is re-embedded
        copies, rest = divmod(ids.shape[0], rows)
        if rest or not copies:
            return None
        prompt = self.prompt_ids.to(ids.device).repeat_interleave(copies, 0)  # [B·k, P]
        if not torch.equal(ids[:, :width], prompt):
            return None
        embeds = self.embeds().to(output.device, output.dtype).repeat_interleave(copies, 0)
        slots = (prompt == self.context_id).unsqueeze(-1)  # [B·k, P, 1]
        head = torch.where(slots, embeds, output[:, :width])
        return torch.cat([head, output[:, width:]], 1)
