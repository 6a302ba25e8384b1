"""Merge task vectors (fine-tuned minus base) of one parameter: TIES, DARE, task arithmetic.

Every function takes the N task vectors of ONE weight (same shape) and returns one merged
delta; callers stream weights through them, so memory is N deltas of the largest weight.
Pass the N deltas already stacked ([N, *shape] float32) to let a merge work in that buffer
in place (it is overwritten): peak memory is then about 2·N deltas instead of 5·N.

The building blocks are PEFT's (`peft.utils.merge_utils`: `prune`, `calculate_majority_sign_mask`,
`disjoint_merge`, `task_arithmetic`); we differ from PEFT's composite functions in three places:

* λ (`lam`): the TIES paper's final scale θ = θ_base + λ·τ_m. PEFT has no λ (λ = 1).
* TIES sign election: PEFT (the default here) votes on the *unweighted* trimmed deltas and
  weights them afterwards; `elect_weighted=True` votes on the weighted ones, as mergekit
  does (an adapter given weight 0 does not vote, a weight of 2 counts twice). With equal
  weights (weights=None) both agree.
* DARE draws its drop mask from a `torch.Generator` we are given (PEFT's `random_pruning`
  uses the global RNG), so a merge is reproducible without touching global state. With a
  generator seeded like the global RNG the masks are identical to PEFT's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch

from tilevl.errors import ConfigError

Weights = Sequence[float] | torch.Tensor | None
Deltas = Sequence[torch.Tensor] | torch.Tensor  # N tensors, or one stacked [N, *shape] (overwritten)


def _peft_merge_utils():
    """PEFT's merge utilities (an optional dependency: the `train` extra ships peft)."""
    from tilevl.optional import require

    return require("peft.utils.merge_utils", extra="train", purpose="for TIES/DARE merging")


def _stack(deltas: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """[N, *shape] float32 stack of the task vectors; refuses an empty list or shape mismatch.

    A list is copied into a new stack; an already stacked float32 tensor is returned as is,
    and the merge then works in it as scratch space (one N×weight buffer instead of three).
    """
    if isinstance(deltas, torch.Tensor):
        if deltas.dim() < 1 or deltas.shape[0] == 0:
            raise ConfigError(f"a stacked task-vector tensor must be [N, ...] with N ≥ 1, got {tuple(deltas.shape)}")
        return deltas.float()
    if not deltas:
        raise ConfigError("merging needs at least one task vector, got none")
    shape = tuple(deltas[0].shape)
    for i, delta in enumerate(deltas):
        if tuple(delta.shape) != shape:
            raise ConfigError(f"task vector {i} has shape {tuple(delta.shape)}, task vector 0 has {shape}")
    return torch.stack([d.float() for d in deltas], dim=0)


def _weights(weights: Weights, n: int, device: torch.device) -> torch.Tensor:
    """[N] float32 weights; None → ones."""
    if weights is None:
        return torch.ones(n, device=device)
    w = torch.as_tensor(weights, dtype=torch.float32, device=device).reshape(-1)
    if w.numel() != n:
        raise ConfigError(f"got {w.numel()} weights for {n} task vectors")
    return w


def _broadcast(w: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """[N] → [N, 1, …, 1] so that it multiplies the [N, *shape] stack per task."""
    return w.view(w.shape + (1,) * (stacked.dim() - 1))


def _check_density(density: float, method: str) -> None:
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"{method}: density must be in (0, 1], got {density}")


def trim_by_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the top `density` fraction of `delta` by |value| (k = int(density·numel)), zero the rest.

    Args:
        delta: one task vector, any shape.
        density: fraction kept; 1 keeps everything (PEFT's `prune`, without its warning).
    Returns:
        A tensor of `delta`'s shape.
    """
    _check_density(density, "trim")
    if density >= 1.0:
        return delta
    return _peft_merge_utils().prune(delta, density, method="magnitude")


def drop_at_random(
    delta: torch.Tensor, density: float, rescale: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """DARE's drop: keep each value with probability `density`, rescaled by 1/density.

    Same draw as PEFT's `random_pruning` (one `torch.bernoulli` over a tensor of `density`),
    but from `generator` when one is given.

    Args:
        delta: one task vector.
        density: keep probability; 1 keeps everything.
        rescale: divide the kept values by `density` so the expectation is unchanged.
        generator: the random source (None: torch's global generator, as PEFT).
    Returns:
        A tensor of `delta`'s shape.
    """
    _check_density(density, "dare")
    if density >= 1.0:
        return delta
    mask = torch.bernoulli(torch.full_like(delta, density), generator=generator)
    dropped = delta * mask
    return dropped / density if rescale else dropped


def _ties_combine(trimmed: torch.Tensor, w: torch.Tensor, elect_weighted: bool, sign_method: str) -> torch.Tensor:
    """Elect the sign per parameter, then the disjoint (weighted) mean of the agreeing values.

    `trimmed` [N, *shape] is weighted in place (it is always our own scratch stack).
    """
    mu = _peft_merge_utils()
    # "total": sign of Σ values (the paper's choice); "frequency": sign of the head count.
    if not elect_weighted:  # PEFT's order: vote on the unweighted values, then weight
        agree = mu.calculate_majority_sign_mask(trimmed, method=sign_method)  # [N, *shape] bool
    trimmed.mul_(_broadcast(w, trimmed))
    if elect_weighted:
        agree = mu.calculate_majority_sign_mask(trimmed, method=sign_method)
    # Σ_i agree·w_i·τ_i / #agree (PEFT's divisor: the number of agreeing tasks, at least 1).
    return mu.disjoint_merge(trimmed, agree)


def merge_ties(
    deltas: Deltas,
    weights: Weights = None,
    density: float = 0.2,
    lam: float = 1.0,
    *,
    elect_weighted: bool = False,
    sign_method: str = "total",
) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean, scale by λ.

    Args:
        deltas: N task vectors of one weight, all the same shape (or their [N, *shape]
            float32 stack, which is overwritten).
        weights: N per-task weights (default all 1) multiplying each trimmed delta.
        density: fraction of each task vector kept by magnitude (the paper's k, e.g. 0.2).
        lam: λ, the scale of the merged task vector.
        elect_weighted: elect the sign on the weighted deltas (mergekit); False (default):
            PEFT's vote on the unweighted deltas.
        sign_method: "total" (sign of the sum, the paper) or "frequency" (majority count).
    Returns:
        The merged delta, float32, of the deltas' shape.
    """
    stacked = _stack(deltas)
    w = _weights(weights, len(stacked), stacked.device)
    for row in stacked:  # trim task by task, in place: no second N×weight stack
        row.copy_(trim_by_magnitude(row, density))
    return lam * _ties_combine(stacked, w, elect_weighted, sign_method)


def merge_dare(
    deltas: Deltas,
    weights: Weights = None,
    density: float = 0.5,
    rescale: bool = True,
    then: str = "linear",
    generator: torch.Generator | None = None,
    lam: float = 1.0,
    *,
    elect_weighted: bool = False,
    sign_method: str = "total",
) -> torch.Tensor:
    """DARE (Yu et al. 2023): drop at random with 1/density rescale, then sum or TIES-combine.

    Args:
        deltas: N task vectors of one weight.
        weights: N per-task weights (default all 1).
        density: keep probability of each value.
        rescale: rescale kept values by 1/density (DARE proper; False is plain dropout).
        then: "linear" (weighted sum, PEFT's dare_linear) or "ties" (sign election and
            disjoint mean, PEFT's dare_ties).
        generator: seeded random source; the tasks are drawn in order from it.
        lam: scale of the merged delta.
        elect_weighted, sign_method: as in `merge_ties` (used when then="ties").
    Returns:
        The merged delta, float32.
    """
    if then not in ("linear", "ties"):
        raise ConfigError(f"merge_dare: then must be 'linear' or 'ties', got {then!r}")
    stacked = _stack(deltas)
    w = _weights(weights, len(stacked), stacked.device)
    for row in stacked:  # tasks drawn in order from `generator`, in place
        row.copy_(drop_at_random(row, density, rescale, generator))
    if then == "ties":
        return lam * _ties_combine(stacked, w, elect_weighted, sign_method)
    return lam * (stacked.mul_(_broadcast(w, stacked))).sum(dim=0)


def merge_task_arithmetic(deltas: Deltas, weights: Weights = None, lam: float = 1.0) -> torch.Tensor:
    """Task arithmetic (Ilharco et al. 2023): λ·Σ_i w_i·τ_i (PEFT's `task_arithmetic`, times λ).

    Args:
        deltas: N task vectors of one weight.
        weights: N weights (default all 1).
        lam: the scale λ.
    Returns:
        The merged delta, float32.
    """
    stacked = _stack(deltas)
    w = _weights(weights, len(stacked), stacked.device)
    return lam * _peft_merge_utils().task_arithmetic(list(stacked), w)


def merge_magnitude_prune(
    deltas: Deltas, weights: Weights = None, density: float = 0.2, lam: float = 1.0
) -> torch.Tensor:
    """Trim each task vector by magnitude, then λ·weighted sum (PEFT's `magnitude_prune`, times λ).

    Args:
        deltas: N task vectors of one weight.
        weights: N weights (default all 1).
        density: fraction kept per task vector.
        lam: the scale λ.
    Returns:
        The merged delta, float32.
    """
    stacked = _stack(deltas)
    w = _weights(weights, len(stacked), stacked.device)
    for row in stacked:
        row.copy_(trim_by_magnitude(row, density))
    return lam * (stacked.mul_(_broadcast(w, stacked))).sum(dim=0)


def merge_linear(deltas: Deltas, weights: Weights = None) -> torch.Tensor:
    """Weighted average Σ_i w_i·τ_i / Σ_i w_i (a model soup of the fine-tunes).

    Unlike task arithmetic the weights are normalised, so equal weights give the mean.

    Args:
        deltas: N task vectors of one weight.
        weights: N non-negative weights with a positive sum (default equal).
    Returns:
        The merged delta, float32.
    """
    stacked = _stack(deltas)
    w = _weights(weights, len(stacked), stacked.device)
    total = float(w.sum())
    if total == 0.0:
        raise ConfigError("merge_linear: the weights sum to 0, the average is undefined")
    return _peft_merge_utils().task_arithmetic(list(stacked), w / total)


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "ties": merge_ties,
    "dare_linear": lambda deltas, **kw: merge_dare(deltas, then="linear", **kw),
    "dare_ties": lambda deltas, **kw: merge_dare(deltas, then="ties", **kw),
    "task_arithmetic": merge_task_arithmetic,
    "magnitude_prune": merge_magnitude_prune,
    "linear": merge_linear,
}


def method_parameters(method: str) -> set[str]:
    """The keyword arguments `merge_deltas(method, …)` accepts."""
    fn = {"dare_linear": merge_dare, "dare_ties": merge_dare}.get(method) or METHODS.get(method)
    if fn is None:
        raise ConfigError(f"unknown merge method {method!r}; known: {sorted(METHODS)}")
    return set(inspect.signature(fn).parameters) - {"deltas", "then"}


def merge_deltas(method: str, deltas: Deltas, **kw) -> torch.Tensor:
    """Merge the task vectors of one weight with a named method.

    Args:
        method: one of "ties", "dare_linear", "dare_ties", "task_arithmetic",
            "magnitude_prune", "linear".
        deltas: N task vectors of one weight.
        kw: the method's keyword arguments (weights, density, lam, generator …); one the
            method does not take is refused rather than silently ignored.
    Returns:
        The merged delta, float32.
    """
    accepted = method_parameters(method)
    unknown = sorted(set(kw) - accepted)
    if unknown:
        raise ConfigError(f"merge method {method!r} takes no {unknown}; it takes {sorted(accepted)}")
    return METHODS[method](deltas, **kw)


def low_rank_factors(delta: torch.Tensor, rank: int, kind: str = "linear", fan_in_fan_out: bool = False):
    """PEFT factors (A, B) of the rank-`rank` truncated SVD of a dense delta (scale 1).

    Args:
        delta: in the base weight's layout ([out, in] Linear, [num, dim] Embedding).
        rank: target rank; a delta of lower rank is padded with zero factors.
        kind, fan_in_fan_out: as in `LoraModule`, to undo the transposes of `module_delta`.
    Returns:
        (A [rank, q], B [p, rank]) with B·A ≈ the delta in PEFT's orientation [p, q].
    """
    matrix = delta.T if (kind == "embedding" or fan_in_fan_out) else delta  # PEFT's B·A orientation
    u, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)  # [p, k], [k], [k, q]
    k = min(rank, s.numel())
    root = s[:k].sqrt()  # split √S between the factors so both have similar norms
    a = torch.zeros(rank, matrix.shape[1])
    b = torch.zeros(matrix.shape[0], rank)
    a[:k] = root[:, None] * vh[:k]
    b[:, :k] = u[:, :k] * root
    return a, b
