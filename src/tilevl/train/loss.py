"""InternVL 2.5's loss reductions: how a batch's token losses are averaged.

Each token of a sample whose response has x supervised tokens weighs x^-p:
"token" (p = 0) is the plain token mean, which lets long replies (captions, boxes) drown
one-word answers; "sample" (p = 1) is the mean of per-sample means; "square" (p = 0.5) is
InternVL 2.5's compromise (its report, "loss reweighting"). The batch loss is
Σ w·ce / Σ w over supervised tokens. A sample is a row of a padded batch, or a run of a
packed row (its position ids restart at 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tilevl.inputs.template import IGNORE_INDEX

LOSS_REDUCTIONS = {"token": 0.0, "square": 0.5, "sample": 1.0}


def sample_ids(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[B, L] the sample each position belongs to (0, 1, … over the whole batch)."""
    rows, width = labels.shape
    if position_ids is None:
        return torch.arange(rows, device=labels.device)[:, None].expand(rows, width)
    starts = (position_ids == 0).long()
    starts[:, 0] = 1  # every row starts a sample
    return starts.reshape(-1).cumsum(0).reshape(rows, width) - 1


def weighted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "square",
                     position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy with InternVL 2.5's per-sample token weights.

    Args:
        logits: [B, L, V].
        labels: [B, L]; IGNORE_INDEX (-100) where there is no target.
        reduction: "token", "square" or "sample".
        position_ids: [B, L] for packed rows (samples restart at position 0), else None.
    Returns:
        The scalar loss (0 with a gradient when no token is supervised).
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss_reduction must be one of {sorted(LOSS_REDUCTIONS)}, got {reduction!r}")
    target = labels[:, 1:]
    valid = target != IGNORE_INDEX
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                         target.reshape(-1).clamp(min=0), reduction="none").reshape(target.shape)
    owner = sample_ids(labels, position_ids)[:, 1:]
    counts = torch.zeros(int(owner.max()) + 1, device=labels.device)
    counts.index_add_(0, owner[valid], torch.ones_like(owner[valid], dtype=counts.dtype))
    weight = counts.clamp(min=1)[owner].pow(-LOSS_REDUCTIONS[reduction]) * valid
    if not bool(valid.any()):
        return (ce * 0).sum()
    return (ce * weight).sum() / weight.sum()
