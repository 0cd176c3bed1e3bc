"""Inverting Gradients (Geiping et al., NeurIPS 2020) at the ATS "inversed" settings.

Objective 1 - cos(grad(x), grad*) over all parameter tensors at once (global cosine) plus
TV(x) * tv (option ``tv``, default 1e-4); Adam (lr 0.1) on the sign of the image gradient; the image boxed to [0,1] in
pixel space after every step; lr x0.1 at iterations//2.667, //1.6, //1.142 (1799, 2999, 4203
of 4800); N(0,1) initialisation in normalised space; known labels (or, when the protocol hides
them, :mod:`fedpriv.attacks.label_inference`'s); the last iterate returned, after the whole budget
or where the stopping rule (options ``patience``, ``tolerance``, off by default; see
:mod:`fedpriv.attacks.lr_schedule`) ends it; with several restarts the one with the lowest final
objective is kept. All targets and restarts are solved together by
:mod:`fedpriv.attacks.gradient_matching` (options ``engine``: ``auto``, ``loop``,
``loop-channels-last``, ``grouped``, ``vmap``; ``max-batch``: most problems per optimisation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedpriv.attacks.base import (
    ATTACKS,
    Attack,
    AttackSettings,
    AttackTarget,
    Knowledge,
    Reconstruction,
    check_settings,
    check_tv,
    own_options,
    settings_for,
    tv_errors,
    tv_weight,
)
from fedpriv.attacks.gradient_matching import (
    ENGINES,
    ExtraParameters,
    MatchingProblem,
    ProblemSolution,
    solve,
    total_variation,
)
from fedpriv.attacks.label_inference import infer_labels
from fedpriv.attacks.lr_schedule import StopOptions, lr_milestones
from fedpriv.data.specs import DatasetSpec
from fedpriv.errors import ConfigError
from fedpriv.leaks import GradientLeak
from fedpriv.options import option

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

__all__ = [
    "GradientMatchingAttack", "InvertingGradients", "MatchingOptions", "box_bounds", "lr_milestones", "solve_targets",
    "total_variation",
]

DEFAULT_MAX_BATCH = 64
MATCHING_TV = 1e-4  # ATS's "inversed" weight


@dataclass(frozen=True)
class MatchingOptions(StopOptions):
    """The options of every gradient-matching attack: the engine, its batch, the stopping rule."""

    engine: str = option("auto", "how problems are solved together", choices=ENGINES)
    max_batch: int = option(DEFAULT_MAX_BATCH, "most problems per optimisation", low=1, high=1_000_000)
    tv: float = option(MATCHING_TV, "total-variation weight (ATS's inversed setting); attack-tv >= 0 replaces it",
                       low=0)


def box_bounds(dataset: DatasetSpec, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel bounds of [0,1] pixels in normalised space, shaped (C, 1, 1)."""
    zeros = torch.zeros(dataset.channels, 1, 1, dtype=like.dtype, device=like.device)
    return dataset.normalize(zeros), dataset.normalize(zeros + 1)


def precision_errors(options: MatchingOptions, precision: str, name: str) -> list[str]:
    """The engine that cannot run at ``precision`` (``vmap`` with ``bf16``), or none."""
    if options.engine == "vmap" and precision == "bf16":
        return [f"attack.{name}.engine='vmap' does not run with attack-precision 'bf16'; "
                "use engine grouped, loop or auto"]
    return []


def check_precision_fit(options: MatchingOptions, settings: AttackSettings, name: str) -> None:
    """Raise :func:`precision_errors`' error, if any."""
    if errors := precision_errors(options, settings.precision, name):
        raise ConfigError(errors[0])


def solve_targets(
    model: nn.Module,
    dataset: DatasetSpec,
    targets: Sequence[AttackTarget],
    settings: AttackSettings,
    options: MatchingOptions,
    label: str,
    extra_bounds: Sequence[torch.Tensor] | None = None,
    extra_apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[ProblemSolution]:
    """Solve every target and restart in batches; keep each target's lowest final objective.

    Parameters
    ----------
    model, dataset
        The victim (put in eval mode on ``settings.device``) and its input space.
    targets
        Gradient leaks with seeds; restarts draw their starts in turn from the target's seed.
    settings
        Iterations, restarts, lr, TV weight, device, progress.
    options
        Engine, problems per optimisation, stopping rule.
    label
        Prefix of progress lines.
    extra_bounds, extra_apply
        Optional per-problem extra parameters: per target the clamp bound (its shape is the
        parameters' shape, they start at zero), and the map to the model input.

    Returns
    -------
    list[ProblemSolution]
        Per target, its best restart: images in input space (k, C, H, W), extra values or ``None``,
        final objective, iterations run, and the engine that solved it (what ``auto`` chose).
    """
    device = torch.device(settings.device)
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    problems: list[MatchingProblem] = []
    for target in targets:
        leak = target.leak
        if not isinstance(leak, GradientLeak):
            raise TypeError(f"{label} consumes gradient leaks, got {type(leak).__name__}")
        labels = leak.labels if leak.labels is not None else infer_labels(model, dataset, leak, seed=target.seed)
        labels = labels.to(device)
        grads = tuple(g.to(device, dtype) for g in leak.gradients)
        generator = torch.Generator().manual_seed(target.seed)
        for _ in range(settings.restarts):
            init = torch.randn((leak.batch_size, *dataset.shape), generator=generator, dtype=dtype)
            problems.append(MatchingProblem(init.to(device), labels, grads))
    low, high = box_bounds(dataset, problems[0].init)
    restarts = settings.restarts
    solved: dict[int, ProblemSolution] = {}
    for k in sorted({p.init.shape[0] for p in problems}):  # one solve per batch size
        index = [i for i, p in enumerate(problems) if p.init.shape[0] == k]
        extra = None
        if extra_bounds is not None and extra_apply is not None:
            bound = torch.stack([extra_bounds[i // restarts] for i in index]).to(device, dtype)
            extra = ExtraParameters(torch.zeros_like(bound), bound, extra_apply)
        result = solve(
            model, [problems[i] for i in index], low, high, iterations=settings.iterations, lr=settings.lr,
            tv=tv_weight(settings, options), extra=extra, engine=options.engine, max_batch=options.max_batch,
            precision=settings.precision, rule=options.rule, progress=settings.progress, label=label,
        )
        solved.update(zip(index, result.solutions(), strict=True))
    runs = [[solved[i] for i in range(t * restarts, (t + 1) * restarts)] for t in range(len(targets))]
    return [min(run, key=lambda r: r.loss) for run in runs]  # the first of equals, as the loop kept


class GradientMatchingAttack(Attack):
    """Base of the attacks that match a gradient leak by optimising images (eval-mode batch norm).

    Reads the settings and its options (``Options``, a :class:`MatchingOptions`), and refuses an
    engine that cannot run at the run's ``attack-precision``.
    """

    leak_kinds: ClassVar[tuple[str, ...]] = ("gradient",)
    model_modes: ClassVar[tuple[str, ...]] = ("eval",)
    optimises: ClassVar[bool] = True
    Options: ClassVar[type] = MatchingOptions

    def __init__(self, settings: AttackSettings) -> None:
        check_settings(settings)
        self.options: Any = own_options(self.Options, settings, self.name)
        check_precision_fit(self.options, settings, self.name)
        check_tv(settings, self.options, self.name)
        self.settings = settings

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """The engine must run at the run's ``attack-precision``; one TV weight is set."""
        return (precision_errors(options, config.attack_precision, cls.name)
                + tv_errors(settings_for(config, cls.name).tv, options, cls.name))


class InvertingGradients(GradientMatchingAttack):
    """The Inverting Gradients attack; all targets and restarts in batches.

    Parameters
    ----------
    settings
        Iterations, restarts, lr, TV weight, device, progress interval; its options
        (:class:`MatchingOptions`): ``engine``, ``max-batch``, and the stopping rule's
        ``patience`` (default 0: off) and ``tolerance`` (:mod:`~fedpriv.attacks.lr_schedule`).
    """

    name: ClassVar[str] = "inverting-gradients"
    knowledge: ClassVar[Knowledge] = Knowledge(defense=False)

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """Reconstruct each target's images from its gradient.

        Returns
        -------
        list[Reconstruction]
            Per target: images in pixel space [0,1], the final objective ``loss``, the iterations
            run ``iterations_run`` and, when the protocol hid the labels, the labels it inferred.
        """
        if not targets:
            return []
        solved = solve_targets(model, dataset, targets, self.settings, self.options, self.name)
        return [
            Reconstruction(images=dataset.denormalize(s.images).cpu(), labels=_inferred(model, dataset, t),
                           fields={"loss": s.loss, "iterations_run": float(s.iterations_run)}, engine=s.engine)
            for t, s in zip(targets, solved, strict=True)
        ]


def _inferred(model: nn.Module, dataset: DatasetSpec, target: AttackTarget) -> torch.Tensor | None:
    """The labels the attack inferred (and used), when the protocol hid them; else ``None``."""
    leak = target.leak
    if not isinstance(leak, GradientLeak) or leak.labels is not None:
        return None
    return infer_labels(model, dataset, leak, seed=target.seed).cpu()


ATTACKS.add(InvertingGradients.name, InvertingGradients)
