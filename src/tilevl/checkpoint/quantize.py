"""Weight-only int8 quantization of the LLM's linear layers, a load option (`quantize="int8"`).

Single-stream decode reads every LLM weight once per token, so it is bound by memory bandwidth:
int8 weights halve the bytes of bf16. The kernel is PyTorch's own `aten._weight_int8pack_mm`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tilevl.errors import CheckpointError, ConfigError

QUANTIZE_MODES = ("int8",)

# Why not torchao: its int8 weight-only tensor (0.18, `Int8WeightOnlyConfig`) runs eager
# linears as `mm(x, weight.to(x.dtype)) * scale`, a cast of the whole weight per call: the same
# computation at one row measured 0.92 ms against bf16's 0.34 ms here; torch.compile would fuse it.

# `_weight_int8pack_mm` is a matrix-vector kernel. One AVX-512 thread, (4864, 896) weight:
# 1 row 0.22 ms vs bf16 linear 0.34 ms; 8 rows 0.91 vs 0.59; 16 rows 1.85 vs 0.90; 128 rows
# 14.5 vs 5.6. Casting the int8 weight to the activations' dtype and running the ordinary
# GEMM (scales applied to the output) costs 1.16 ms at 8 rows, 1.50 at 16, 6.4 at 128: it wins
# from ~12 rows on. So: the kernel up to this many rows (decode, small batches), else the GEMM.
_MATVEC_MAX_ROWS = 8


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with one scale per output feature (symmetric).

    `weight` (out, in) int8 and `scales` (out,) are buffers, not parameters: the layer is
    for inference only. y = x @ (weight * scales[:, None]).T + bias.
    """

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)
        self._packed_kernel = True  # turned off where the device has no int8pack kernel

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """Quantize `linear` per output row: scale = max|w| / 127, rounded to nearest.

        The scale is first rounded to the weight's dtype (what the kernel multiplies by), so
        the int8 values are chosen against the scale actually used.
        """
        w = linear.weight.detach()
        store = w.dtype if w.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
        w32 = w.float()
        scales = (w32.abs().amax(dim=1) / 127.0).clamp(min=1e-12).to(store)
        q = torch.round(w32 / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        return cls(q.contiguous(), scales, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (rows, in)
        if x2.shape[0] <= _MATVEC_MAX_ROWS and self._packed_kernel:
            try:
                y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.weight, self.scales.to(x.dtype))
            except (NotImplementedError, RuntimeError):
                # a device (or dtype) without the kernel: remember, then take the GEMM path
                self._packed_kernel = False
                y = F.linear(x2, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        else:
            # x @ (q * s[:, None]).T == (x @ q.T) * s: one cast of the weight, no second pass
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def check_quantize(mode: str | None) -> str | None:
    """Return `mode` when it is a known quantization (or None); refuse anything else."""
    if mode is None or mode in QUANTIZE_MODES:
        return mode
    allowed = ", ".join(repr(m) for m in QUANTIZE_MODES)
    raise ConfigError(f"quantize={mode!r} is not supported; allowed: {allowed} (or None for none)")


def quantize_model(model: nn.Module, mode: str = "int8", *, include_head: bool = True) -> nn.Module:
    """Replace the LLM's `nn.Linear` layers by `Int8Linear`, in place.

    The vision tower and the projector stay in floating point: they run once per image over
    hundreds of tokens (compute-bound, where int8 weights save no time), and they are a third
    of a 1B model at most. The LM head is quantized too (`include_head`): on small LLMs it is
    the largest single matrix (Qwen2.5-0.5B: 136 M of 494 M weights). A head tied to the input
    embeddings gets its own int8 copy; the embedding lookup keeps its floating weights.

    Args:
        model: a `VisionLanguageModel` (or anything with `.language_model`).
        mode: "int8" (the one mode today).
        include_head: also quantize the LM head.
    Returns:
        The same model, quantized; `model.quantization` says how.
    """
    if check_quantize(mode) is None:
        return model
    if getattr(model, "quantization", None):
        raise CheckpointError(f"the model is already quantized ({model.quantization})")
    llm = getattr(model, "language_model", model)
    head = llm.get_output_embeddings() if hasattr(llm, "get_output_embeddings") else None
    if head is not None and hasattr(llm, "config"):
        llm.config.tie_word_embeddings = False  # the int8 head is no longer the embedding
    count = 0
    for parent in list(llm.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or (child is head and not include_head):
                continue
            if child.weight.is_meta:
                raise CheckpointError(f"cannot quantize {name!r}: its weight is not loaded (meta)")
            setattr(parent, name, Int8Linear.from_linear(child))
            count += 1
    model.quantization = f"{mode} weight-only: {count} LLM linear layers" + (" incl. LM head" if include_head else "")
    return model


def is_quantized(model: nn.Module) -> bool:
    """True when `quantize_model` has rewritten the model."""
    return any(isinstance(m, Int8Linear) for m in model.modules())
