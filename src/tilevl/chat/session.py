"""A multi-turn conversation that keeps its KV cache and encoded images between turns.

Turn k feeds the LLM only the tokens the cache does not hold yet (the new question), and
each image goes through the vision tower once. Greedy replies equal a full recompute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from tilevl.chat.engine import (
    GenerationSettings,
    _ensure_context_id,
    decode_reply,
    model_template,
)
from tilevl.chat.thinking import ChatReply, thinking_system_message
from tilevl.errors import InputError
from tilevl.inputs.template import IMAGE_PLACEHOLDER, build_messages, render
from tilevl.model.generation import keep_image, longrope_switch_length


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class ChatSession:
    """Chat with one model about images, keeping state between turns.

    Example:
        session = ChatSession(model, tokenizer)
        session.ask("What is in the picture?", images=["cat.png"])
        session.ask("And what colour is it?")

    With `enable_thinking=True` (InternVL3.5's thinking mode) the model card's reasoning
    system prompt is used; each reply's thinking is in `reply.reasoning`, and `history`
    keeps whole replies (`reply.raw`), as upstream's chat() does.
    """

    def __init__(
        self, model, tokenizer, *, template: str | None = None, system_message: str | None = None,
        max_tiles: int | None = None, generation: GenerationSettings | dict | None = None,
        enable_thinking: bool = False,
    ) -> None:
        _ensure_context_id(model, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.template = model_template(model, template)
        self.enable_thinking = enable_thinking
        self.system_message = thinking_system_message(system_message, enable_thinking)
        self.max_tiles = max_tiles
        if isinstance(generation, dict):
            generation, _ = GenerationSettings.from_dict(generation)
        self.generation = generation or GenerationSettings()
        self.reset()

    def reset(self) -> None:
        """Forget the conversation, its images and its cache."""
        self.history: list[tuple[str, str]] = []
        self.num_patches_list: list[int] = []
        self._features: list[torch.Tensor] = []  # per image: [tiles * tokens, hidden]
        self._cache: DynamicCache | None = None
        self._cached_ids: list[int] = []
        self._cache_long = False  # were the cached keys computed past a LongRoPE switch?
        self.stats = {"prefill_tokens": 0, "reused_tokens": 0, "images_encoded": 0}

    # ---- images -----------------------------------------------------------------------------
    def encode_image(self, image: Any, max_tiles: int | None = None) -> int:
        """Tile an image (path, bytes, PIL image or a [T,3,S,S] tensor), encode it once.

        Returns:
            The number of tiles.
        """
        from tilevl.inputs.image import preprocess

        if isinstance(image, torch.Tensor):
            tiles = image
        else:
            tiles = preprocess(image, self.model.image_settings, max_num=max_tiles or self.max_tiles)
        with torch.no_grad():
            features = self.model.extract_feature(tiles)  # [T, tokens, hidden]
        self._features.append(features.reshape(-1, features.shape[-1]))
        self.num_patches_list.append(tiles.shape[0])
        self.stats["images_encoded"] += 1
        return tiles.shape[0]

    # ---- a turn -----------------------------------------------------------------------------
    def prompt_ids(self, question: str) -> list[int]:
        """The ids of the whole conversation so far plus `question`, ready to generate."""
        messages = build_messages(question, self.history, self.system_message)
        rendered = render(
            self.tokenizer, self.template, messages, num_patches_list=self.num_patches_list,
            num_image_token=self.model.num_image_token, add_generation_prompt=True,
        )
        return rendered.input_ids

    def ask(
        self, question: str, images: Sequence[Any] = (), *, generation: GenerationSettings | dict | None = None,
        streamer: Any = None, max_tiles: int | None = None,
    ) -> ChatReply:
        """Ask one question (with new images, if any) and return the reply.

        Args:
            question: the user's text; `<image>` placeholders are added in front for new
                images when the question has none (`Image-k: <image>` for several).
            images: new images for this turn.
            generation: settings for this turn (default: the session's).
            streamer: a transformers streamer that receives the reply as it is generated.
        Returns:
            The reply: the answer as a str, with `.reasoning` and `.raw` (what `history` gets).
        """
        first_new = len(self.num_patches_list)
        for image in images:
            self.encode_image(image, max_tiles)
        if images and IMAGE_PLACEHOLDER not in question:
            if len(self.num_patches_list) == 1:
                prefix = f"{IMAGE_PLACEHOLDER}\n"
            else:
                prefix = "".join(f"Image-{k + 1}: {IMAGE_PLACEHOLDER}\n" for k in range(first_new, len(self.num_patches_list)))
            question = prefix + question
        if isinstance(generation, dict):
            generation, _ = GenerationSettings.from_dict(generation)
        settings = generation or self.generation
        ids = self.prompt_ids(question)
        new = self._generate(ids, settings, streamer)
        response = decode_reply(self.tokenizer, new, self.template, settings.stop)
        self.history.append((question, response.raw))
        return response

    @torch.no_grad()
    def _generate(self, ids: list[int], settings: GenerationSettings, streamer: Any) -> list[int]:
        model, llm = self.model, self.model.language_model
        kwargs = settings.generate_kwargs(self.tokenizer, self.template)
        if streamer is not None:
            kwargs["streamer"] = streamer
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        device = model.device
        full = torch.tensor([ids], device=device)
        context_id = model.img_context_token_id
        if settings.num_beams > 1:
            # Beam search reorders the cache per beam: recompute, but reuse the image features.
            self._cache, self._cached_ids = None, []
            embeds = self._embed(full, 0, None)
            with keep_image(llm, full, embeds, context_id):
                out = llm.generate(input_ids=full, inputs_embeds=embeds, attention_mask=torch.ones_like(full),
                                   **kwargs)
            return out[0, len(ids):].tolist()

        keep = self._reusable(ids)
        if keep == 0:
            # Nothing to reuse: the whole prompt in one call, exactly as chat() computes it.
            self._cache = DynamicCache(config=llm.config)
            switch = longrope_switch_length(llm.config)
            self._cache_long = switch is not None and len(ids) > switch
            embeds = self._embed(full, 0, None)
            with keep_image(llm, full, embeds, context_id):
                out = llm.generate(input_ids=full, inputs_embeds=embeds, attention_mask=torch.ones_like(full),
                                   cache=self._cache, **kwargs)
            self.stats["prefill_tokens"] += len(ids)
        else:
            # Keep what the cache shares with the new prompt; feed the rest except the last
            # token, which generate() feeds itself (it must see at least one new token).
            if keep < self._cache.get_seq_length():
                self._cache.crop(keep - self._cache.get_seq_length())  # negative: tokens to drop
            self.stats["reused_tokens"] += keep
            if keep < len(ids) - 1:
                segment = full[:, keep:len(ids) - 1]
                embeds = self._embed(segment, self._slots_before(ids, keep), None)
                positions = torch.arange(keep, len(ids) - 1, device=device)[None]
                llm.model(
                    inputs_embeds=embeds, cache=self._cache, use_cache=True, position_ids=positions,
                    attention_mask=torch.ones(1, len(ids) - 1, dtype=torch.long, device=device),
                )
                self.stats["prefill_tokens"] += len(ids) - 1 - keep
            with keep_image(llm, full, lambda: self._embed(full, 0, None), context_id):
                out = llm.generate(input_ids=full, attention_mask=torch.ones_like(full), cache=self._cache,
                                   **kwargs)
        sequence = out[0].tolist()
        self._cached_ids = sequence[: self._cache.get_seq_length()]
        return sequence[len(ids):]

    def _reusable(self, ids: list[int]) -> int:
        """How many leading cached ids this prompt may reuse (0: recompute all).

        A LongRoPE LLM (Phi-3) computes keys with short factors while a call stays within
        `original_max_position_embeddings` and with long ones past it, so a recomputed
        prompt longer than that has only long keys. The cache is reused only where it holds
        what that recompute would: short keys for a short prompt, long keys (from a prompt
        that was already long) for a long one.
        """
        if self._cache is None:
            return 0
        keep = min(common_prefix(self._cached_ids, ids), len(ids) - 1)
        switch = longrope_switch_length(self.model.language_model.config)
        if switch is not None:
            long_prompt = len(ids) > switch
            if long_prompt != self._cache_long or (long_prompt and keep <= switch):
                return 0
        return keep

    def _slots_before(self, ids: list[int], position: int) -> int:
        ctx = self.model.img_context_token_id
        return sum(1 for t in ids[:position] if t == ctx)

    def _embed(self, segment: torch.Tensor, slots_before: int, features: torch.Tensor | None) -> torch.Tensor:
        """Embeddings of `segment` with the right slice of image features in its slots."""
        embeds = self.model.language_model.get_input_embeddings()(segment)
        slots = segment == self.model.img_context_token_id
        n = int(slots.sum())
        if n == 0:
            return embeds
        if features is None:
            features = torch.cat(self._features)
        part = features[slots_before: slots_before + n]
        if part.shape[0] != n:
            raise InputError(f"the conversation has {n} image slots here but only {part.shape[0]} image tokens")
        return embeds.masked_scatter(slots.unsqueeze(-1), part.to(embeds.dtype))
