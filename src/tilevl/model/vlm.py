"""ViT-MLP-LLM: InternViT features, pixel-shuffled and projected, spliced into the LLM.

`VisionLanguageModel` holds `vision_model`, `mlp1` and `language_model` under the names of
the official checkpoint. The forward path is `extract_feature` → `embed_inputs` → the LLM.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tilevl.config import ModelConfig
from tilevl.errors import ConfigError, InputError
from tilevl.model.generation import keep_image
from tilevl.model.llm import build_llm
from tilevl.model.projector import Projector, pixel_shuffle, vit_tokens_to_grid
from tilevl.model.vit import InternVisionModel


class VisionLanguageModel(nn.Module):
    """The InternVL network. Tokens in, logits out; images enter as `<IMG_CONTEXT>` slots."""

    def __init__(self, config: ModelConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.vision_model = InternVisionModel(config.vision)
        self.mlp1 = Projector(config.vision.hidden_size, config.llm_hidden_size, config.downsample_ratio)
        self.language_model = build_llm(config.llm, attn_implementation)
        self.num_image_token = config.num_image_token
        self.img_context_token_id: int | None = config.img_context_token_id

    # ---- properties the chat, training and serving layers read ----------------------------
    @property
    def device(self) -> torch.device:
        return self.mlp1[1].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mlp1[1].weight.dtype

    @property
    def vision_device(self) -> torch.device:
        return self.vision_model.embeddings.patch_embedding.weight.device

    @property
    def image_settings(self):
        """How images are tiled for this checkpoint (read from its saved settings)."""
        from tilevl.inputs.image import ImageSettings

        return ImageSettings.from_checkpoint_config(self.config.to_dict(), self.config.preprocessor)

    @property
    def conv_template(self):
        """The conversation template named by the checkpoint (the seeds read `.sep`)."""
        from tilevl.chat.engine import model_template

        return model_template(self)

    system_message: str | None = None  # replaces the template's system prompt in chat()

    # ---- the seeds' chat API (see tilevl.chat.engine) -----------------------------------------
    def chat(self, tokenizer, pixel_values, question, generation_config=None, history=None,
             return_history=False, num_patches_list=None, **kwargs):
        """`model.chat(tokenizer, pixel_values, question, generation_config, …)` as in the seeds."""
        from tilevl.chat.engine import chat

        return chat(self, tokenizer, pixel_values, question, generation_config, history,
                    return_history, num_patches_list, **kwargs)

    def batch_chat(self, tokenizer, pixel_values, questions, generation_config=None,
                   num_patches_list=None, **kwargs):
        """Several independent questions in one batch, as in the seeds."""
        from tilevl.chat.engine import batch_chat

        return batch_chat(self, tokenizer, pixel_values, questions, generation_config,
                          num_patches_list, **kwargs)

    # ---- the forward path -----------------------------------------------------------------
    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles [T, 3, S, S] → visual tokens [T, num_image_token, llm_hidden]."""
        pixel_values = pixel_values.to(self.vision_device, self.vision_model.embeddings.patch_embedding.weight.dtype)
        features = self.vision_model(pixel_values, select_layer=self.config.select_layer)
        grid = vit_tokens_to_grid(features)  # [T, g, g, D]
        shuffled = pixel_shuffle(grid, self.config.downsample_ratio, self.config.ps_version)
        tokens = shuffled.reshape(shuffled.shape[0], -1, shuffled.shape[-1])  # [T, g²r², D/r²]
        return self.mlp1(tokens.to(self.dtype))

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_flags: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text embeddings with the visual tokens written into the `<IMG_CONTEXT>` slots.

        Args:
            input_ids: [B, L] token ids.
            pixel_values: [T, 3, S, S] tiles of all images of the batch, in slot order.
            image_flags: [T] (or [T, 1]); tiles flagged 0 are padding and are dropped.
            visual_features: precomputed `extract_feature` output, instead of pixel_values.
        Returns:
            [B, L, H] embeddings for the LLM.
        """
        embed = self.language_model.get_input_embeddings()
        embeds = embed(input_ids)
        if pixel_values is None and visual_features is None:
            return embeds
        vit = visual_features if visual_features is not None else self.extract_feature(pixel_values)
        if image_flags is not None:
            vit = vit[image_flags.reshape(-1).to(vit.device) == 1]
        if self.img_context_token_id is None:
            raise ConfigError(
                "img_context_token_id is not set: load the model with its tokenizer "
                "(tilevl.load_model) or set model.img_context_token_id"
            )
        slots = input_ids == self.img_context_token_id  # [B, L]
        n_slots, n_tokens = int(slots.sum()), vit.shape[0] * vit.shape[1]
        if n_slots != n_tokens:
            raise InputError(
                f"the prompt has {n_slots} <IMG_CONTEXT> tokens but the images give {n_tokens} "
                f"visual tokens ({vit.shape[0]} tiles x {vit.shape[1]}); the prompt must be "
                "rendered with the same tiles as pixel_values"
            )
        vit = vit.reshape(-1, vit.shape[-1]).to(embeds.device, embeds.dtype)
        return embeds.masked_scatter(slots.unsqueeze(-1).to(embeds.device), vit)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_flags: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **llm_kwargs: Any,
    ):
        """Logits (and the loss when `labels` are given, -100 = ignored) of the LLM.

        Extra keyword arguments (position_ids, cache, use_cache …) go to the LLM.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise InputError("forward needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_flags)
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **llm_kwargs
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generation_config: Any = None,
        visual_features: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generate with transformers (greedy, sampling, beams, streamers, stop strings).

        Args:
            input_ids: [B, L] rendered prompts (left-padded for a batch).
            pixel_values: [T, 3, S, S] tiles for the `<IMG_CONTEXT>` slots, or None.
            attention_mask: [B, L], 0 on padding.
            generation_config: a `GenerationConfig`, or a dict of its fields (as the seeds pass).
            generate_kwargs: more generation settings (max_new_tokens, streamer, tokenizer …).
        Returns:
            [B, new] the generated token ids only (the prompt is not repeated).
        """
        if isinstance(generation_config, dict):
            generate_kwargs = {**generation_config, **generate_kwargs}
            generation_config = None
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        embeds = self.embed_inputs(input_ids, pixel_values, visual_features=visual_features)
        # Passing input_ids beside the embeddings lets repetition penalties and stop strings
        # see the prompt; transformers then returns prompt + new tokens. keep_image: no later
        # step may re-embed the prompt's image slots as text (see model/generation.py).
        with keep_image(self.language_model, input_ids, embeds, self.img_context_token_id):
            out = self.language_model.generate(
                input_ids=input_ids,
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                generation_config=generation_config,
                **generate_kwargs,
            )
        sequences = out.sequences if hasattr(out, "sequences") else out
        return sequences[:, input_ids.shape[1]:]

    # ---- training helpers -------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute activations in the backward pass, in both towers."""
        self.vision_model.encoder.gradient_checkpointing = True
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        llm = self.language_model
        if hasattr(llm, "activation_checkpointing_enable"):  # transformers ≥ 5 renamed it
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # Frozen embeddings would otherwise cut the graph before the first checkpointed layer.
        self.language_model.enable_input_require_grads()

    def gradient_checkpointing_disable(self) -> None:
        self.vision_model.encoder.gradient_checkpointing = False
        llm = self.language_model
        if hasattr(llm, "activation_checkpointing_disable"):
            llm.activation_checkpointing_disable()
        else:
            llm.gradient_checkpointing_disable()

    def init_weights(self, std: float = 0.02) -> None:
        """Random weights for a model built from a preset (the LLM is initialised by transformers)."""
        self.vision_model.init_weights(std)
        for module in self.mlp1:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def build_model(
    config: ModelConfig | str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    seed: int | None = 0,
    **overrides: Any,
) -> VisionLanguageModel:
    """Build a randomly initialised model from a config or a preset name.

    Args:
        config: a `ModelConfig` or a preset name (`"internvl-chat-v1-5"`, `"tiny"` …).
        device: where to build; "meta" allocates nothing (for counting and for loading).
        dtype: parameter dtype (default float32).
        seed: seeds the random initialisation (None leaves the global generator alone).
        overrides: top-level config fields to replace.
    Returns:
        The model in eval mode.
    """
    if isinstance(config, str):
        config = ModelConfig.from_name(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "meta":
        with torch.device("meta"):
            model = VisionLanguageModel(config, attn_implementation)
    else:
        if seed is not None:
            torch.manual_seed(seed)
        model = VisionLanguageModel(config, attn_implementation)
        model.init_weights()
        model.to(device)
    if dtype is not None:
        model.to(dtype)
    return model.eval()
