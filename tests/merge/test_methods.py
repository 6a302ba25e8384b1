"""Merge methods checked against hand-computed tensors and against PEFT's merge utilities.

The 2×3 TIES example is worked out by hand in the comments; the PEFT comparisons use the
same inputs (and, for DARE, the same random draws).
"""

from __future__ import annotations

import pytest
import torch

from tilevl.errors import ConfigError
from tilevl.merge.methods import (
    drop_at_random,
    merge_dare,
    merge_deltas,
    merge_linear,
    merge_magnitude_prune,
    merge_task_arithmetic,
    merge_ties,
    trim_by_magnitude,
)

mu = pytest.importorskip("peft.utils.merge_utils")

# Three task vectors of one 2×3 weight. With density 0.5 each keeps int(0.5·6) = 3 values:
#   τ1 keeps .5 (0,0), -.4 (1,0), .3 (0,2)     → [[ .5,  0, .3], [-.4,   0,  0]]
#   τ2 keeps .6 (0,1), -.5 (1,1), .3 (1,0)     → [[  0, .6,  0], [ .3, -.5,  0]]
#   τ3 keeps -.7 (0,1), -.6 (1,0), .4 (1,2)    → [[  0,-.7,  0], [-.6,   0, .4]]
T1 = torch.tensor([[0.5, -0.1, 0.3], [-0.4, 0.2, 0.0]])
T2 = torch.tensor([[-0.2, 0.6, -0.1], [0.3, -0.5, 0.05]])
T3 = torch.tensor([[0.1, -0.7, 0.2], [-0.6, 0.05, 0.4]])
TASKS = [T1, T2, T3]


def test_trim_keeps_top_fraction_by_magnitude():
    assert torch.equal(trim_by_magnitude(T1, 0.5), torch.tensor([[0.5, 0.0, 0.3], [-0.4, 0.0, 0.0]]))
    assert torch.equal(trim_by_magnitude(T1, 1.0), T1)


def test_ties_by_hand():
    # Elected signs (sum of trimmed): (0,0) +.5  (0,1) .6-.7=-.1 → −  (0,2) +.3
    #                                 (1,0) -.4+.3-.6=-.7 → −  (1,1) -.5 → −  (1,2) +.4
    # Disjoint mean of the agreeing values: (0,1) only τ3: -.7; (1,0) τ1, τ3: (-.4-.6)/2 = -.5.
    expected = torch.tensor([[0.5, -0.7, 0.3], [-0.5, -0.5, 0.4]])
    torch.testing.assert_close(merge_ties(TASKS, density=0.5), expected)
    torch.testing.assert_close(merge_ties(TASKS, density=0.5, lam=0.5), 0.5 * expected)


def test_ties_weighted_election_by_hand():
    # Weights [1, 2, 1]: τ2's trimmed values double → [[0, 1.2, 0], [.6, -1.0, 0]].
    # Weighted election: (0,1) 1.2-.7 = +.5 → +, so only τ2 agrees: 1.2.
    #                    (1,0) -.4+.6-.6 = -.4 → −: (-.4-.6)/2 = -.5;  (1,1) -1.0.
    weighted = torch.tensor([[0.5, 1.2, 0.3], [-0.5, -1.0, 0.4]])
    torch.testing.assert_close(merge_ties(TASKS, weights=[1, 2, 1], density=0.5, elect_weighted=True),
                               weighted)
    # PEFT (the default) elects on the unweighted values: (0,1) stays −, so only τ3: -.7.
    unweighted = torch.tensor([[0.5, -0.7, 0.3], [-0.5, -1.0, 0.4]])
    ours = merge_ties(TASKS, weights=[1, 2, 1], density=0.5)
    torch.testing.assert_close(ours, unweighted)
    torch.testing.assert_close(ours, mu.ties(TASKS, torch.tensor([1.0, 2.0, 1.0]), 0.5))


def test_task_arithmetic_linear_and_magnitude_prune_by_hand():
    torch.testing.assert_close(merge_task_arithmetic([T1, T2], weights=[1.0, 2.0], lam=0.5), 0.5 * (T1 + 2 * T2))
    torch.testing.assert_close(merge_linear([T1, T2], weights=[1.0, 3.0]), (T1 + 3 * T2) / 4)
    torch.testing.assert_close(merge_linear([T1, T2]), (T1 + T2) / 2)
    # Trimmed τ1 + τ2 (density .5): [[.5, .6, .3], [-.1, -.5, 0]].
    expected = torch.tensor([[0.5, 0.6, 0.3], [-0.1, -0.5, 0.0]])
    torch.testing.assert_close(merge_magnitude_prune([T1, T2], density=0.5), expected)


@pytest.fixture()
def random_tasks():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(8, 12, generator=g) for _ in range(4)], torch.tensor([0.5, 1.0, 1.5, 0.7])


@pytest.mark.parametrize("density", [0.1, 0.3, 0.75, 1.0])
def test_ties_agrees_with_peft(random_tasks, density):
    tasks, weights = random_tasks
    ones = torch.ones(len(tasks))
    # Equal weights: our weighted election is PEFT's election.
    torch.testing.assert_close(merge_ties(tasks, density=density), mu.ties(tasks, ones, density))
    ours = merge_ties(tasks, weights, density, elect_weighted=False)
    torch.testing.assert_close(ours, mu.ties(tasks, weights, density))
    freq = merge_ties(tasks, weights, density, elect_weighted=False, sign_method="frequency")
    torch.testing.assert_close(freq, mu.ties(tasks, weights, density, majority_sign_method="frequency"))


def test_task_arithmetic_and_magnitude_prune_agree_with_peft(random_tasks):
    tasks, weights = random_tasks
    torch.testing.assert_close(merge_task_arithmetic(tasks, weights), mu.task_arithmetic(tasks, weights))
    torch.testing.assert_close(merge_magnitude_prune(tasks, weights, 0.3), mu.magnitude_prune(tasks, weights, 0.3))
    torch.testing.assert_close(merge_linear(tasks, weights), mu.task_arithmetic(tasks, weights / weights.sum()))


@pytest.mark.parametrize("then, peft_fn", [("linear", "dare_linear"), ("ties", "dare_ties")])
def test_dare_agrees_with_peft_on_the_same_draws(random_tasks, then, peft_fn):
    tasks, weights = random_tasks
    torch.manual_seed(11)  # PEFT draws from the global generator
    expected = getattr(mu, peft_fn)(tasks, weights, 0.4)
    ours = merge_dare(tasks, weights, 0.4, then=then, generator=torch.Generator().manual_seed(11), elect_weighted=False)
    torch.testing.assert_close(ours, expected)


def test_dare_is_seeded_and_rescales():
    delta = torch.ones(200, 200)
    a = drop_at_random(delta, 0.25, generator=torch.Generator().manual_seed(0))
    b = drop_at_random(delta, 0.25, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    kept = (a != 0).float().mean().item()
    assert abs(kept - 0.25) < 0.01
    assert set(a.unique().tolist()) == {0.0, 4.0}  # kept values rescaled by 1/density
    assert abs(a.mean().item() - 1.0) < 0.05  # the expectation is preserved
    plain = drop_at_random(delta, 0.25, rescale=False, generator=torch.Generator().manual_seed(0))
    assert set(plain.unique().tolist()) == {0.0, 1.0}
    # density 1 drops nothing: DARE-linear is then task arithmetic.
    torch.testing.assert_close(merge_dare(TASKS, density=1.0), merge_task_arithmetic(TASKS))


def test_one_task_at_full_density_is_that_task():
    for method in ("ties", "dare_ties", "dare_linear", "task_arithmetic", "magnitude_prune", "linear"):
        kw = {} if method in ("task_arithmetic", "linear") else {"density": 1.0}
        torch.testing.assert_close(merge_deltas(method, [T3], **kw), T3)


def test_dispatcher_and_bad_settings():
    torch.testing.assert_close(merge_deltas("ties", TASKS, density=0.5), merge_ties(TASKS, density=0.5))
    with pytest.raises(ConfigError, match="unknown merge method 'soup'"):
        merge_deltas("soup", TASKS)
    with pytest.raises(ConfigError, match="takes no \\['density'\\]"):
        merge_deltas("linear", TASKS, density=0.5)
    with pytest.raises(ConfigError, match="density must be in"):
        merge_ties(TASKS, density=0.0)
    with pytest.raises(ConfigError, match="3 weights for 2"):
        merge_ties([T1, T2], weights=[1, 1, 1])
    with pytest.raises(ConfigError, match="shape"):
        merge_ties([T1, torch.zeros(3, 2)])
    with pytest.raises(ConfigError, match="sum to 0"):
        merge_linear([T1, T2], weights=[1.0, -1.0])
    with pytest.raises(ConfigError, match="then must be"):
        merge_dare(TASKS, then="mean")
