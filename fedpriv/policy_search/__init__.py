"""ATS's augmentation-policy search (Gao et al., CVPR 2021): privacy and accuracy scores, ranking."""

from fedpriv.policy_search.scores import (
    accuracy_score,
    grad_similarity_curves,
    input_jacobian,
    noise_start,
    privacy_scores,
    trapezoid_score,
)
from fedpriv.policy_search.search import (
    PolicyScorer,
    PolicyScores,
    RankedPolicy,
    initial_models,
    random_policies,
    rank_policies,
    run_search,
    train_search_model,
)

__all__ = [
    "PolicyScorer",
    "PolicyScores",
    "RankedPolicy",
    "accuracy_score",
    "grad_similarity_curves",
    "initial_models",
    "input_jacobian",
    "noise_start",
    "privacy_scores",
    "random_policies",
    "rank_policies",
    "run_search",
    "train_search_model",
    "trapezoid_score",
]
