"""ATS's policy search (Gao et al., CVPR 2021): random candidates, both scores, ranking."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.data.loading import LabeledImages
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses.ats import CROP_PADDING, MAX_PRIMITIVES, AtsDefense, AtsPolicy
from fedpriv.defenses.ats_primitives import NUM_PRIMITIVES
from fedpriv.errors import ConfigError
from fedpriv.models import build_model
from fedpriv.policy_search.scores import (
    accuracy_score,
    first_of_each_label,
    input_jacobian,
    noise_start,
    privacy_scores,
)
from fedpriv.training import to_pixels

Policy = tuple[int, ...]
RANKINGS = ("mean", "head")
ATS_THRESHOLD = -85.0
HEAD_ALPHA = 0.7  # ATS HEAD: alpha * norm(mean S_pri) + (1 - alpha) * norm(var S_pri)
PRIVACY_FIRST, PRIVACY_STRIDE = 200, 5  # 2021 ATS: S_pri on validation images 200, 205, ...
ACCURACY_FIRST, ACCURACY_WINDOW = 200, 100  # S_acc run r: validation images 200+100r .. 299+100r
DISTINCT_POLICIES = sum(NUM_PRIMITIVES**k for k in range(1, MAX_PRIMITIVES + 1))


def policy_text(policy: Policy) -> str:
    """The ``i-j-k`` form of a policy."""
    return "-".join(str(i) for i in policy)


def random_policies(count: int, seed: int) -> list[Policy]:
    """ATS's random candidates: three slots, each uniform over -1..49, the -1 (no op) slots dropped.

    Unlike ATS's ``randint(-1, 50)`` the invalid index 50 is never drawn; empty policies (all
    slots -1) and repeats of a policy already drawn are skipped, so ``count`` distinct
    non-empty policies come back, the same for the same seed.

    Parameters
    ----------
    count
        Number of candidates, at most the 127,550 distinct policies.
    seed
        Seeds the draws.
    """
    if not 0 < count <= DISTINCT_POLICIES:
        raise ConfigError(f"candidates must be in 1..{DISTINCT_POLICIES}, got {count}")
    rng = np.random.default_rng(seed)
    found: dict[Policy, None] = {}
    while len(found) < count:
        slots = rng.integers(-1, NUM_PRIMITIVES, size=MAX_PRIMITIVES)
        policy = tuple(int(i) for i in slots if i >= 0)
        if policy:
            found.setdefault(policy)
    return list(found)


@dataclass(frozen=True)
class PolicyScores:
    """Both scores of one policy.

    Attributes
    ----------
    policy
        Primitive indices.
    s_pri, s_pri_var
        Mean and variance (ddof 0) over images of S_pri.
    s_acc, s_acc_runs, n_per_run
        Mean S_acc over runs, per-run S_acc and each run's number of images N.
    seconds
        Wall time of both scores.
    """

    policy: Policy
    s_pri: float
    s_pri_var: float
    s_acc: float
    s_acc_runs: tuple[float, ...]
    n_per_run: tuple[int, ...]
    seconds: float


@dataclass(frozen=True)
class RankedPolicy:
    """A scored policy with its ranking key, whether S_acc passed the threshold, and its rank."""

    scores: PolicyScores
    score: float
    accepted: bool
    rank: int | None


class PolicyScorer:
    """Score policies on fixed images with fixed models and common random numbers.

    Every policy sees the same validation images, noise starts x0 and crop/flip draws (each
    image's augmentation generator is seeded by (seed, image index)), so score differences come
    from the policies.

    Parameters
    ----------
    privacy_model
        The S_pri model (ATS: the tiny-data checkpoint), used in eval mode.
    accuracy_model
        The randomly initialised S_acc model, used in eval mode.
    dataset
        Normalisation constants.
    validation
        The validation (test) split.
    images
        Number of S_pri images: validation indices 200, 205, ... (ATS 2021).
    acc_runs
        Number of S_acc runs: run r keeps the first image of each label among 200+100r..299+100r.
    seed
        Seeds augmentation and noise.
    """

    def __init__(
        self,
        privacy_model: nn.Module,
        accuracy_model: nn.Module,
        dataset: DatasetSpec,
        validation: LabeledImages,
        images: int,
        acc_runs: int,
        seed: int,
    ) -> None:
        check_validation_size(len(validation), dataset.name, images, acc_runs)
        self.privacy_model, self.accuracy_model = privacy_model.eval(), accuracy_model.eval()
        self.dataset, self.seed = dataset, seed
        self.privacy_index = [PRIVACY_FIRST + PRIVACY_STRIDE * i for i in range(images)]
        self.accuracy_index = []
        for run in range(acc_runs):
            first = ACCURACY_FIRST + ACCURACY_WINDOW * run
            window = list(range(first, first + ACCURACY_WINDOW))
            keep = first_of_each_label(validation.labels[window].tolist())
            self.accuracy_index.append([window[k] for k in keep])
        self.validation = validation
        shape = (images, *validation.images.shape[1:])
        self.starts = noise_start(shape, dataset, _generator(seed, 0, 0))

    def _defended(self, policy: Policy, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised T(x) (crop, flip, policy) and labels of validation images ``index``."""
        defense = AtsDefense(AtsPolicy((policy,), crop_flip=True))
        pixels = to_pixels(self.validation.images[index])
        defended = [
            defense.transform(pixels[k : k + 1], _generator(self.seed, 1, i))[0] for k, i in enumerate(index)
        ]
        return self.dataset.normalize(torch.cat(defended)), self.validation.labels[index]

    def score(self, policy: Policy) -> PolicyScores:
        """S_pri over the privacy images and S_acc over the accuracy runs for ``policy``."""
        start = time.perf_counter()
        images, labels = self._defended(policy, self.privacy_index)
        per_image = privacy_scores(self.privacy_model, images, labels, self.starts).double().numpy()
        runs = []
        for index in self.accuracy_index:
            images, _ = self._defended(policy, index)
            runs.append(accuracy_score(input_jacobian(self.accuracy_model, images)))
        sizes = tuple(len(index) for index in self.accuracy_index)
        return PolicyScores(
            policy, float(per_image.mean()), float(per_image.var()), float(np.mean(runs)), tuple(runs),
            sizes, time.perf_counter() - start,
        )


def check_validation_size(size: int, name: str, images: int, acc_runs: int) -> None:
    """Fail if a validation split of ``size`` images is too small for the requested sample.

    Raises
    ------
    ConfigError
        Naming the largest index needed and how it is formed.
    """
    last = max(PRIVACY_FIRST + PRIVACY_STRIDE * (images - 1), ACCURACY_FIRST + ACCURACY_WINDOW * acc_runs - 1)
    if last >= size:
        raise ConfigError(
            f"the validation split of {name} has {size} images, but --images {images} and "
            f"--acc-runs {acc_runs} need index {last} (S_pri image i: {PRIVACY_FIRST} + "
            f"{PRIVACY_STRIDE}*i; S_acc run r: {ACCURACY_FIRST} + {ACCURACY_WINDOW}*r + 0..99)"
        )


def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A torch generator seeded from (seed, stream, index)."""
    state = np.random.SeedSequence([seed, stream, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def rank_policies(
    scores: Sequence[PolicyScores], threshold: float, ranking: str = "mean"
) -> list[RankedPolicy]:
    """Rank candidates as ATS does: by S_pri ascending among those with S_acc >= threshold.

    Parameters
    ----------
    scores
        Scored candidates.
    threshold
        Minimum S_acc (ATS: -85, meaningful only at its N of about 63 per run).
    ranking
        ``"mean"`` (ATS 2021: mean S_pri) or ``"head"`` (ATS HEAD: 0.7 norm(mean) + 0.3
        norm(var), min-max normalised over all candidates).

    Returns
    -------
    list[RankedPolicy]
        Accepted candidates by rank (1 = best), then the rejected ones by score.
    """
    means = np.array([s.s_pri for s in scores])
    keys = means
    if ranking == "head":
        variances = np.array([s.s_pri_var for s in scores])
        keys = HEAD_ALPHA * _min_max(means) + (1 - HEAD_ALPHA) * _min_max(variances)
    accepted = [s.s_acc >= threshold for s in scores]
    order = sorted(
        range(len(scores)), key=lambda i: (not accepted[i], keys[i], policy_text(scores[i].policy))
    )
    return [
        RankedPolicy(scores[i], float(keys[i]), accepted[i], position + 1 if accepted[i] else None)
        for position, i in enumerate(order)
    ]


def _min_max(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min() if len(values) else 0.0
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def crop_flip(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding=4, zero fill) and a horizontal flip with p = 0.5 per image."""
    n, _, height, width = pixels.shape
    padded = F.pad(pixels, (CROP_PADDING,) * 4)
    tops = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=generator).tolist()
    lefts = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=generator).tolist()
    flips = torch.rand(n, generator=generator) < 0.5
    cropped = torch.stack(
        [padded[k, :, t : t + height, x : x + width] for k, (t, x) in enumerate(zip(tops, lefts, strict=True))]
    )
    return torch.where(flips.view(-1, 1, 1, 1), cropped.flip(-1), cropped)


def train_search_model(
    model: nn.Module,
    train: LabeledImages,
    dataset: DatasetSpec,
    epochs: int,
    fraction: float,
    seed: int,
    log: Callable[[str], None] = print,
) -> None:
    """Train ATS's "tiny" search model in place on a seeded random ``fraction`` of ``train``.

    ATS's 'conservative' recipe: SGD (lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4),
    batch 128, lr x0.1 at epochs // 2.667, // 1.6, // 1.142, loss 0.5 * cross-entropy, crop and
    flip augmentation. The model is left in eval mode.

    Parameters
    ----------
    model
        The freshly initialised model.
    train
        The training split.
    dataset
        Normalisation constants.
    epochs, fraction
        ATS: 10% of the training data for 100 epochs (its scripts) or 50 (the ReScience text).
    seed
        Seeds the subset, shuffling and augmentation.
    log
        Receives one line per epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    subset = torch.randperm(len(train), generator=generator)[: max(1, round(fraction * len(train)))]
    images, labels = train.images[subset], train.labels[subset]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    milestones = [int(epochs // d) for d in (2.667, 1.6, 1.142)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    model.train()
    for epoch in range(epochs):
        order, total = torch.randperm(len(labels), generator=generator), 0.0
        for start in range(0, len(order), 128):
            index = order[start : start + 128]
            inputs = dataset.normalize(crop_flip(to_pixels(images[index]), generator))
            loss = 0.5 * F.cross_entropy(model(inputs), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        scheduler.step()
        log(f"search model epoch {epoch + 1}/{epochs}: loss {total / len(labels):.4f}, {len(labels)} images")
    model.eval()


def load_search_model(model: nn.Module, path: Path) -> None:
    """Load a state dict saved with ``torch.save`` into ``model`` (``weights_only=True``).

    Raises
    ------
    ConfigError
        If the file is missing, not a weights-only state dict, or does not fit the model.
    """
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (OSError, EOFError, RuntimeError, TypeError, AttributeError, pickle.UnpicklingError) as error:
        detail = " ".join(str(error).split())[:500] or type(error).__name__
        raise ConfigError(f"cannot load --checkpoint {path} into this model: {detail}") from error


def initial_models(model: str, dataset: DatasetSpec, seed: int) -> tuple[nn.Module, nn.Module]:
    """Two copies of model ``model``'s random initialisation under ``seed``, in eval mode.

    The first becomes the S_pri model (trained or loaded), the second is the S_acc model: in
    ATS the S_acc network is the state saved before the checkpoint is loaded. The global torch
    RNG is left as it was.
    """
    models = []
    for _ in range(2):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models.append(build_model(model, dataset.num_classes, dataset.channels).eval())
    return models[0], models[1]


def run_search(
    scorer: PolicyScorer,
    candidates: Sequence[Policy],
    threshold: float,
    ranking: str = "mean",
    log: Callable[[str], None] = print,
    on_scored: Callable[[list[RankedPolicy]], None] | None = None,
) -> list[RankedPolicy]:
    """Score every candidate and rank them.

    Parameters
    ----------
    scorer
        Holds the models, images and seeds.
    candidates
        Policies to score, e.g. from :func:`random_policies`.
    threshold, ranking
        See :func:`rank_policies`.
    log
        Receives one progress line per candidate.
    on_scored
        Called with the ranking so far after every candidate (e.g. to rewrite a CSV).

    Returns
    -------
    list[RankedPolicy]
        All candidates, ranked.
    """
    scores: list[PolicyScores] = []
    ranked: list[RankedPolicy] = []
    for number, policy in enumerate(candidates, 1):
        s = scorer.score(policy)
        scores.append(s)
        log(
            f"[{number}/{len(candidates)}] {policy_text(policy)}: S_pri {s.s_pri:.4f}, "
            f"S_acc {s.s_acc:.2f} (N {min(s.n_per_run)}..{max(s.n_per_run)}), {s.seconds:.1f} s"
        )
        ranked = rank_policies(scores, threshold, ranking)
        if on_scored is not None:
            on_scored(ranked)
    return ranked
