"""The peer every benchmark compares against: transformers' own InternVL on the same weights.

A tilevl model is saved in the official layout, rewritten with `tilevl convert --layout
native` (the command a user would run), and loaded with transformers'
`InternVLForConditionalGeneration`. Images go through transformers' InternVL image
processor (GotOcr2's, the PIL backend: its fast backend needs torchvision, which tilevl does
not install). Prompts are the same token ids for both sides: the peer's `InternVLProcessor`
needs a tokenizer carrying `start_image_token`/`context_image_token` attributes, and with the
same tokenizer and template it would produce the very ids tilevl's template renders.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
try:
    import tilevl  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def export_native(model, folder: Path) -> Path:
    """Save `model` (official layout) and convert it with `tilevl convert --layout native`.

    Returns:
        The native folder, `folder / "native"`.
    """
    import tilevl
    from tilevl.cli import main as tilevl_cli

    official, native = Path(folder) / "official", Path(folder) / "native"
    tilevl.save_model(model, official, overwrite=True)
    code = tilevl_cli(["convert", str(official), str(native), "--layout", "native", "--overwrite"])
    if code != 0:
        raise SystemExit(f"tilevl convert --layout native failed with exit code {code}")
    return native


def load_peer(native: Path, dtype: torch.dtype | None = None, device: str = "cpu"):
    """transformers' `InternVLForConditionalGeneration` from a native folder, in eval mode."""
    from transformers import InternVLForConditionalGeneration
    from transformers.utils import logging

    logging.disable_progress_bar()
    peer = InternVLForConditionalGeneration.from_pretrained(str(native), dtype=dtype or "auto")
    return peer.to(device).eval()


def peer_image_processor(model):
    """transformers' InternVL image processor with the model's tiling settings (PIL backend)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    s = model.image_settings
    return GotOcr2ImageProcessorPil(
        size={"height": s.image_size, "width": s.image_size}, crop_to_patches=s.dynamic,
        min_patches=s.min_num, max_patches=s.max_num, image_mean=list(s.mean), image_std=list(s.std),
        do_rescale=True, do_normalize=True, do_convert_rgb=True,
    )


def peer_pixels(processor, image, max_tiles: int) -> torch.Tensor:
    """[T, 3, S, S] float32 tiles of one image, thumbnail last, as the peer's processor cuts them."""
    out = processor(images=[image], max_patches=max_tiles, return_tensors="pt")
    return out["pixel_values"]


@torch.no_grad()
def peer_generate(peer, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, new_tokens: int,
                  eos_token_id, pad_token_id: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy ids after the prompt: [B, ≤ new_tokens] (the prompt is cut off)."""
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    if pixel_values is not None:
        pixel_values = pixel_values.to(peer.dtype)
    out = peer.generate(input_ids=input_ids, pixel_values=pixel_values, attention_mask=mask,
                        max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos_token_id,
                        pad_token_id=pad_token_id, temperature=None, top_p=None, top_k=None)
    return out[:, input_ids.shape[1]:]


def check_same_ids(ours, peer, what: str) -> None:
    """Stop the benchmark when the two sides generate different token ids."""
    a = ours.tolist() if torch.is_tensor(ours) else [list(x) for x in ours]
    b = peer.tolist() if torch.is_tensor(peer) else [list(x) for x in peer]
    if a != b:
        raise SystemExit(f"{what}: tilevl and transformers generate different token ids:\n {a}\n {b}")
