"""Membership inference statistics and the one-run DP audit (Flower-free).

- :func:`roc_scores`: ROC AUC with its 95 % interval (Hanley and McNeil's standard error) and
  the true-positive rate at fixed low false-positive rates of a membership score (higher: more
  likely a member), the metrics LiRA and RMIA report; :func:`roc_corners`: the curve itself.
- LiRA (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022): the
  target model's logit-scaled confidence in the true label (:func:`logit_confidence`) against
  Gaussians fitted per sample to shadow models trained with it (IN) and without it (OUT):
  :func:`lira_online` (likelihood ratio of the two) and :func:`lira_offline` (OUT only).
- RMIA (Zarifzadeh et al., "Low-Cost High-Power Membership Inference Attacks", ICML 2024):
  :func:`rmia`, the fraction of population samples z that x dominates in likelihood ratio
  Pr(x | target) / Pr(x) against Pr(z | target) / Pr(z).
- The audit of Steinke, Nasr and Jagielski ("Privacy Auditing with One (1) Training Run",
  NeurIPS 2023): m canaries each included independently with probability 1/2; an auditor that
  guesses "in" for the k highest scores and "out" for the k lowest makes v correct guesses of
  r; under (eps, delta)-DP the chance of v or more is at most :func:`audit_p_value`, so
  :func:`epsilon_lower_bound` is the largest eps that the observation rejects at the
  confidence asked, and :func:`audit` sweeps k with a Bonferroni correction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torchmetrics.functional.classification import binary_auroc, binary_roc

LOW_FPRS = (0.001, 0.01)  # the false-positive rates every membership result reports TPR at
AUDIT = "canary-audit"  # the ``attack`` of a results row that holds the one-run audit's bound


def roc_scores(scores: torch.Tensor, members: torch.Tensor, fprs: Sequence[float] = LOW_FPRS) -> dict[str, float]:
    """ROC AUC and TPR at each false-positive rate in ``fprs`` (the largest TPR whose FPR is at most it).

    Parameters
    ----------
    scores
        (n,) membership scores, higher for "member".
    members
        (n,) bool: the truth; both classes present.

    Returns
    -------
    dict[str, float]
        ``auc``, ``auc_low`` and ``auc_high`` (95 % interval), and ``tpr_at_fpr_<rate>`` (e.g.
        ``tpr_at_fpr_0.001``).
    """
    target = members.long()
    if int(target.min()) == int(target.max()):
        raise ValueError("membership scores need both members and non-members")
    fpr, tpr, _ = binary_roc(scores.double(), target)
    auc = float(binary_auroc(scores.double(), target))
    spread = 1.96 * auc_standard_error(auc, int(target.sum()), int((1 - target).sum()))
    row = {"auc": auc, "auc_low": max(auc - spread, 0.0), "auc_high": min(auc + spread, 1.0)}
    for rate in fprs:
        row[f"tpr_at_fpr_{rate:g}"] = float(tpr[fpr <= rate].max())
    return row


def roc_corners(scores: torch.Tensor, members: torch.Tensor) -> dict[str, list[float]]:
    """The ROC curve's corners: per distinct FPR the highest TPR, as ``roc_fpr`` and ``roc_tpr`` (4 decimals).

    At most one point per non-member (plus the origin), enough to redraw the curve at any scale.
    """
    fpr, tpr, _ = binary_roc(scores.double(), members.long())
    corners: dict[float, float] = {}
    for rate, hit in zip(fpr.tolist(), tpr.tolist(), strict=True):
        corners[round(rate, 4)] = max(corners.get(round(rate, 4), 0.0), round(hit, 4))
    return {"roc_fpr": list(corners), "roc_tpr": list(corners.values())}


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUC from ``positives`` and ``negatives`` samples."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc))
    return math.sqrt(max(variance, 0.0) / (positives * negatives))


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """phi = log(p_y / (1 - p_y)) of the softmax, computed stably as logit_y - logsumexp of the others."""
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf"))
    return true - torch.logsumexp(others, dim=1)


def _gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def _fit(shadow: torch.Tensor, fixed_variance: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and std over the shadow models (rows: models); one pooled std when ``fixed_variance``."""
    mean = shadow.mean(0)
    if fixed_variance:
        return mean, (shadow - mean).pow(2).mean().sqrt().clamp_min(1e-12).expand_as(mean)
    return mean, shadow.std(0, unbiased=True).clamp_min(1e-12)


def lira_online(target: torch.Tensor, shadow_in: torch.Tensor, shadow_out: torch.Tensor,
                fixed_variance: bool = True) -> torch.Tensor:
    """LiRA's online score: log N(phi; IN fit) - log N(phi; OUT fit) per sample.

    Parameters
    ----------
    target
        (n,) the target model's :func:`logit_confidence` on the n samples.
    shadow_in, shadow_out
        (k, n) the same statistic under k shadow models trained with / without each sample.
    fixed_variance
        One variance pooled over samples (Carlini et al.'s choice for few shadow models).
    """
    mean_in, std_in = _fit(shadow_in, fixed_variance)
    mean_out, std_out = _fit(shadow_out, fixed_variance)
    return _gaussian_log_density(target, mean_in, std_in) - _gaussian_log_density(target, mean_out, std_out)


def lira_offline(target: torch.Tensor, shadow_out: torch.Tensor, fixed_variance: bool = True) -> torch.Tensor:
    """LiRA's offline score: the OUT fit's CDF at phi (one-sided: high confidence means member)."""
    mean, std = _fit(shadow_out, fixed_variance)
    return torch.special.ndtr((target - mean) / std)


def rmia(target_x: torch.Tensor, reference_x: torch.Tensor, target_z: torch.Tensor, reference_z: torch.Tensor,
         gamma: float = 1.0, offline_a: float | None = None) -> torch.Tensor:
    """RMIA's score: the fraction of population samples z with LR(x) / LR(z) > gamma.

    Parameters
    ----------
    target_x, target_z
        (n,) and (p,): Pr(sample | target model), the probability of the true label.
    reference_x, reference_z
        (k, n) and (k, p): the same under k reference models.
    gamma
        The dominance threshold.
    offline_a
        With OUT-only reference models, Pr(x) is approximated as ((1 + a) / 2) mean + (1 - a) / 2
        (the paper's offline linear interpolation); ``None``: the plain mean over references
        (the online setting, references trained with and without each sample).
    """
    def marginal(reference: torch.Tensor) -> torch.Tensor:
        mean = reference.mean(0)
        return mean if offline_a is None else (1 + offline_a) / 2 * mean + (1 - offline_a) / 2

    ratio_x = target_x / marginal(reference_x).clamp_min(1e-30)
    ratio_z = target_z / marginal(reference_z).clamp_min(1e-30)
    return (ratio_x[:, None] / ratio_z[None, :] > gamma).double().mean(1)


def audit_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[v or more of r guesses correct] under (eps, delta)-DP with m randomised canaries (Steinke et al., Thm 5.2).

    Under eps-DP each guess is right with probability at most q = e^eps / (1 + e^eps)
    (randomised response), so the count is dominated by Binomial(r, q); delta adds
    2 m delta times the largest average, over i <= v, of P[v - i <= Binomial(r, q) < v] / i.
    """
    if not 0 <= v <= r <= m or eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need 0 <= v <= r <= m, eps >= 0 and 0 <= delta <= 1; got m={m}, r={r}, v={v}, "
                         f"eps={eps}, delta={delta}")
    q = 1.0 / (1.0 + math.exp(-eps))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q).cumsum()  # i = 1..v: P[v - i <= B < v]
    spread = float((below / np.arange(1, v + 1)).max())
    return min(tail + spread * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest eps whose :func:`audit_p_value` stays below 1 - ``confidence`` (0 when none does)."""
    level = 1.0 - confidence
    if audit_p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    low, high = 0.0, 1.0
    while audit_p_value(m, r, v, high, delta) < level:
        low, high = high, 2 * high
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if audit_p_value(m, r, v, middle, delta) < level else (low, middle)
    return low


@dataclass(frozen=True)
class AuditResult:
    """The audit's bound and the guesses behind it."""

    epsilon: float
    guesses: int
    correct: int
    canaries: int


def audit(scores: torch.Tensor, included: torch.Tensor, delta: float, confidence: float = 0.95,
          ks: Sequence[int] | None = None) -> AuditResult:
    """Steinke et al.'s one-run audit: "in" for the k highest scores, "out" for the k lowest, best k of ``ks``.

    Each k is tested at level (1 - confidence) / len(ks) (Bonferroni), so the reported bound
    holds at ``confidence`` although the best k is chosen after seeing the scores.

    Parameters
    ----------
    scores
        (m,) the auditor's score per canary (higher: more likely included).
    included
        (m,) bool: which canaries were included (each independently with probability 1/2).
    ks
        Guesses per side to try; default: m/20, m/10, m/4 and m/2 (2k <= m).
    """
    m = len(scores)
    candidates = sorted({k for k in (ks or (m // 20, m // 10, m // 4, m // 2)) if 0 < 2 * k <= m})
    if not candidates:
        raise ValueError(f"no number of guesses fits {m} canaries (need 1 <= k <= m / 2); got ks={ks}")
    order = torch.argsort(scores)
    level = confidence if len(candidates) == 1 else 1 - (1 - confidence) / len(candidates)
    best = AuditResult(0.0, 0, 0, m)
    for k in candidates:
        correct = int(included[order[-k:]].sum()) + int((~included[order[:k]]).sum())
        bound = epsilon_lower_bound(m, 2 * k, correct, delta, level)
        if bound > best.epsilon or best.guesses == 0:
            best = AuditResult(bound, 2 * k, correct, m)
    return best
