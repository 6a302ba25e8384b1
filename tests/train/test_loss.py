"""InternVL 2.5's loss reductions (token / square / sample) on hand-worked cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tilevl.train.loss import sample_ids, weighted_lm_loss

X = -100


def _ce(logits, labels):
    """Per-target cross-entropies of one row, in order (the reference)."""
    out = []
    for t in range(labels.shape[0] - 1):
        if labels[t + 1] != X:
            out.append(F.cross_entropy(logits[t][None], labels[t + 1][None]).item())
    return out


@pytest.fixture()
def batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[X, X, X, X, 3, X],      # one supervised token
                           [X, X, 1, 2, 3, 4]])     # four
    return logits, labels


@pytest.mark.parametrize("reduction, power", [("token", 0.0), ("square", 0.5), ("sample", 1.0)])
def test_each_sample_weighs_its_token_count_to_the_minus_power(batch, reduction, power):
    logits, labels = batch
    a, b = _ce(logits[0], labels[0]), _ce(logits[1], labels[1])
    assert (len(a), len(b)) == (1, 4)
    want = (sum(a) * 1 ** -power + sum(b) * 4 ** -power) / (1 * 1 ** -power + 4 * 4 ** -power)
    assert weighted_lm_loss(logits, labels, reduction).item() == pytest.approx(want, rel=1e-5)
    if reduction == "token":  # the plain mean transformers computes
        plain = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
        assert weighted_lm_loss(logits, labels, reduction).item() == pytest.approx(plain.item(), rel=1e-5)
    if reduction == "sample":
        assert weighted_lm_loss(logits, labels, reduction).item() == pytest.approx(
            (a[0] + sum(b) / 4) / 2, rel=1e-5)


def test_a_packed_row_equals_its_samples_padded(batch):
    logits, labels = batch
    packed_logits = torch.cat([logits[0], logits[1]])[None]
    packed_labels = torch.cat([labels[0], labels[1]])[None]
    positions = torch.cat([torch.arange(6), torch.arange(6)])[None]
    assert sample_ids(packed_labels, positions).tolist() == [[0] * 6 + [1] * 6]
    for reduction in ("square", "sample"):
        assert weighted_lm_loss(packed_logits, packed_labels, reduction, positions).item() == \
            pytest.approx(weighted_lm_loss(logits, labels, reduction).item(), rel=1e-5)


def test_gradients_flow_and_bad_names_are_refused(batch):
    logits, labels = batch
    logits = logits.clone().requires_grad_()
    weighted_lm_loss(logits, labels, "square").backward()
    assert logits.grad.abs().sum() > 0 and math.isfinite(logits.grad.sum().item())
    none = torch.full_like(labels, X)
    assert weighted_lm_loss(logits, none, "square").item() == 0.0
    with pytest.raises(ValueError, match="loss_reduction"):
        weighted_lm_loss(logits, labels, "mean")
