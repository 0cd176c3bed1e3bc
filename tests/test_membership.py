"""Membership inference statistics and the one-run DP audit: known values, LiRA's point, the audit's soundness."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from fedpriv.membership.statistics import (
    audit,
    audit_p_value,
    epsilon_lower_bound,
    lira_offline,
    lira_online,
    logit_confidence,
    rmia,
    roc_scores,
)


def test_roc_scores_on_a_known_example() -> None:
    row = roc_scores(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True]))
    assert row["auc"] == pytest.approx(0.75)
    assert row["tpr_at_fpr_0.001"] == pytest.approx(0.5)  # only the threshold above 0.4 has no false positive
    assert roc_scores(torch.arange(10.0), torch.arange(10) >= 5)["tpr_at_fpr_0.01"] == 1.0
    with pytest.raises(ValueError, match="both members and non-members"):
        roc_scores(torch.ones(3), torch.ones(3, dtype=torch.bool))


def test_logit_confidence_is_the_log_odds_of_the_true_label_and_stays_finite() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    p = logits.softmax(1).gather(1, labels.view(-1, 1)).squeeze(1)
    assert torch.allclose(logit_confidence(logits, labels), torch.log(p / (1 - p)))
    confident = logit_confidence(torch.tensor([[200.0, 0.0, 0.0]]), torch.tensor([0]))
    assert float(confident) == pytest.approx(200 - math.log(2))  # softmax would round p_y to 1


def _difficult_population(seed: int, n: int = 2000, shadows: int = 16) -> tuple[torch.Tensor, ...]:
    """Per-sample difficulty d ~ N(0, 3); a member's confidence is d + 1, a non-member's d, noise 0.5."""
    g = torch.Generator().manual_seed(seed)
    difficulty = 3 * torch.randn(n, generator=g, dtype=torch.float64)
    members = torch.rand(n, generator=g) < 0.5
    target = difficulty + members.double() + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    shadow_in = difficulty + 1 + 0.5 * torch.randn(shadows, n, generator=g, dtype=torch.float64)
    shadow_out = difficulty + 0.5 * torch.randn(shadows, n, generator=g, dtype=torch.float64)
    return target, members, shadow_in, shadow_out


def test_lira_calibrates_per_sample_difficulty_that_a_global_threshold_cannot() -> None:
    target, members, shadow_in, shadow_out = _difficult_population(0)
    global_threshold = roc_scores(target, members)["auc"]
    online = roc_scores(lira_online(target, shadow_in, shadow_out), members)
    offline = roc_scores(lira_offline(target, shadow_out), members)
    ideal = float(stats.norm.cdf(1 / (math.sqrt(2) * 0.5)))  # AUC of N(1, 0.5^2) against N(0, 0.5^2)
    assert global_threshold < 0.65
    assert online["auc"] == pytest.approx(ideal, abs=0.03) and offline["auc"] == pytest.approx(ideal, abs=0.03)
    assert online["tpr_at_fpr_0.01"] > 0.1 > roc_scores(target, members)["tpr_at_fpr_0.01"]


def test_rmia_ranks_members_above_non_members_by_their_likelihood_ratio() -> None:
    target, members, shadow_in, shadow_out = _difficult_population(1)
    probability = torch.sigmoid  # Pr(true label) from its log-odds
    population = ~members  # the population z: samples known not to be members
    both = torch.cat([shadow_in, shadow_out])  # online: references trained with and without each sample
    online = rmia(probability(target), probability(both), probability(target[population]),
                  probability(both[:, population]))
    offline = rmia(probability(target), probability(shadow_out), probability(target[population]),
                   probability(shadow_out[:, population]), offline_a=1.0)
    assert roc_scores(online, members)["auc"] > 0.85 > roc_scores(offline, members)["auc"] > 0.8
    assert roc_scores(target, members)["auc"] < 0.65


def test_the_audit_p_value_is_the_binomial_tail_without_delta_and_falls_with_epsilon() -> None:
    assert audit_p_value(100, 40, 30, 0.0, 0.0) == pytest.approx(float(stats.binom.sf(29, 40, 0.5)))
    values = [audit_p_value(100, 40, 30, eps, 1e-5) for eps in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] > audit_p_value(100, 40, 30, 0.0, 0.0)
    with pytest.raises(ValueError, match="need 0 <= v <= r <= m"):
        audit_p_value(10, 20, 5, 1.0, 0.0)


def test_the_bound_is_zero_for_chance_guesses_and_grows_with_correct_ones() -> None:
    assert epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0
    bounds = [epsilon_lower_bound(1000, 200, v, 1e-5) for v in (130, 160, 190, 200)]
    assert bounds == sorted(bounds) and bounds[0] > 0
    q = 1 / (1 + math.exp(-bounds[-1]))
    assert stats.binom.sf(199, 200, q) < 0.05  # 200 of 200 right still rejects that eps


def _gaussian_epsilon(sigma: float, delta: float) -> float:
    """The exact eps at ``delta`` of the Gaussian mechanism of sensitivity 1 (Balle and Wang, 2018)."""
    def delta_of(eps: float) -> float:
        return float(stats.norm.cdf(0.5 / sigma - eps * sigma)
                     - math.exp(eps) * stats.norm.cdf(-0.5 / sigma - eps * sigma))
    low, high = 0.0, 100.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if delta_of(middle) > delta else (low, middle)
    return high


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_auditing_the_gaussian_mechanism_never_exceeds_its_epsilon(sigma: float) -> None:
    delta, m = 1e-5, 2000
    for seed in range(5):  # canaries included with probability 1/2; each adds 1 to its own coordinate
        g = torch.Generator().manual_seed(seed)
        included = torch.rand(m, generator=g) < 0.5
        released = included.double() + sigma * torch.randn(m, generator=g, dtype=torch.float64)
        result = audit(released, included, delta)
        assert 0 < result.epsilon <= _gaussian_epsilon(sigma, delta), (seed, result)


def test_without_noise_the_audit_is_far_above_zero_and_limited_by_the_canaries() -> None:
    included = torch.rand(1000, generator=torch.Generator().manual_seed(0)) < 0.5
    result = audit(included.double(), included, 1e-5)
    assert result.correct == result.guesses >= 500 and result.epsilon > 4.5  # every guess right
    assert audit(included.double(), included, 1e-5, ks=[50]).epsilon < result.epsilon  # fewer guesses, less proof
