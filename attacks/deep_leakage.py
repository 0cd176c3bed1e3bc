"""Deep Leakage from Gradients (Zhu, Liu, Han, NeurIPS 2019), as breaching's ``deepleakage`` config.

Objective: sum over the parameter tensors of ||grad(x', y') - grad*||^2 (squared L2 distance,
no TV: ``attack-tv`` is ignored), where grad(x', y') is the gradient of the batch-mean
cross-entropy of the model on dummy images x' against soft labels softmax(y'). When the leak
reveals the labels they are used, fixed, and only x' is optimised; otherwise x' and the label
logits y' are optimised jointly, DLG's own setting, and the labels recorded are argmax y'
(option ``labels``: ``auto`` as said, ``joint`` always optimises y' even when labels are revealed,
``infer`` uses :mod:`fedpriv.attacks.label_inference`'s estimate, iDLG's for one image, fixed).

Optimiser: ``torch.optim.LBFGS`` on [x', y'] with its own step size (option ``step-size``, 1.0 as
in the paper and breaching; ``attack-lr`` is the Adam rate of the other attacks and is not used),
``history-size`` and ``max-iter`` (L-BFGS iterations per step, the
closure evaluated up to 1.25 times as often) as torch's defaults (100, 20), no line search unless
``line-search=strong-wolfe``. One attack iteration is one ``LBFGS.step`` (DLG's loop runs 300,
breaching 1200): ``attack-iterations`` of them, or fewer where a step leaves x' and y' unchanged
(L-BFGS has converged; ``iterations_run`` records the steps taken). Initialisation N(0,1) in
normalised space for x' and y' (in that order) from the target's seed; restarts draw in turn.
As breaching does, each restart returns its lowest-objective iterate (L-BFGS without a line search
does not decrease monotonically); a non-finite objective ends the restart (``diverged`` = 1 in the
row when the kept restart ended so), and a restart whose objective was never finite loses to any
other; if none was, the first init is returned. The restart with the lowest objective is kept.

x' is not box-constrained during the optimisation (DLG's setting, breaching's ``boxed: False``);
the images returned are ``denormalize(x').clamp(0, 1)``. Batch norm runs in the leak's mode
(``eval``: running statistics; ``train``: batch statistics, with every other module, e.g. dropout,
in eval mode) on the attack's own copy of the model. Problems are solved one at a time: L-BFGS's
curvature pairs and step sizes are per problem.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.attacks.base import (
    ATTACKS,
    Attack,
    AttackSettings,
    AttackTarget,
    Knowledge,
    Reconstruction,
    check_settings,
    own_options,
)
from fedpriv.attacks.label_inference import infer_labels
from fedpriv.attacks.precision import precision_scope
from fedpriv.data.specs import DatasetSpec
from fedpriv.leaks import GradientLeak
from fedpriv.options import option

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

LABEL_MODES = ("auto", "joint", "infer")
LINE_SEARCHES = ("none", "strong-wolfe")
DEFAULT_MAX_IMAGES = 8  # the paper's largest batch


@dataclass(frozen=True)
class DeepLeakageOptions:
    """How labels are handled, L-BFGS's own settings and the largest batch attacked."""

    labels: str = option("auto", "auto: revealed labels else optimised jointly; joint: always; infer: estimated, fixed",
                         choices=LABEL_MODES)
    history_size: int = option(100, "L-BFGS curvature pairs kept", low=1, high=10_000)
    max_iter: int = option(20, "L-BFGS iterations per attack iteration (one LBFGS.step)", low=1, high=10_000)
    step_size: float = option(1.0, "L-BFGS step size (DLG and breaching: 1; attack-lr is not used)", above=0,
                              high=1000)
    line_search: str = option("none", "L-BFGS line search (none: DLG's fixed step size)", choices=LINE_SEARCHES)
    max_images: int = option(DEFAULT_MAX_IMAGES, "most images one gradient may hold (more: a failed cell)",
                             low=1, high=1_000_000)


def batch_norm_mode(model: nn.Module, mode: str) -> nn.Module:
    """``model`` in eval mode with its batch-norm layers in ``mode`` (``"eval"`` or ``"train"``)."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(mode == "train")
    return model


def gradient_distance(
    model: nn.Module, parameters: Sequence[torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
    observed: Sequence[torch.Tensor], create_graph: bool = True,
) -> torch.Tensor:
    """sum_l ||d CE(model(x), targets) / d theta_l - observed_l||^2 over the parameter tensors.

    ``targets`` are class indices (n,) or probabilities (n, K); the cross-entropy is the batch
    mean, as the client's.
    """
    loss = F.cross_entropy(model(x), targets)
    grads = torch.autograd.grad(loss, list(parameters), create_graph=create_graph)
    return sum(((g - o) ** 2).sum() for g, o in zip(grads, observed, strict=True))  # type: ignore[return-value]


@dataclass
class RestartResult:
    """One restart's lowest-objective iterate.

    Attributes
    ----------
    x
        Images in normalised space (n, C, H, W).
    logits
        Label logits y' (n, K) when optimised, else ``None``.
    loss
        The objective at that iterate (``nan`` if it was never finite).
    iterations_run
        L-BFGS steps taken.
    diverged
        Whether a non-finite objective ended the restart.
    """

    x: torch.Tensor
    logits: torch.Tensor | None
    loss: float
    iterations_run: int
    diverged: bool


def best_restart(results: Sequence[RestartResult]) -> RestartResult:
    """The lowest objective; a non-finite one loses to any finite one; the first of equals."""
    finite = [r for r in results if math.isfinite(r.loss)]
    return min(finite, key=lambda r: r.loss) if finite else results[0]


def run_restart(
    model: nn.Module, parameters: Sequence[torch.Tensor], observed: Sequence[torch.Tensor],
    x0: torch.Tensor, labels: torch.Tensor | None, logits0: torch.Tensor | None,
    settings: AttackSettings, options: DeepLeakageOptions, label: str = "deep-leakage",
) -> RestartResult:
    """L-BFGS from (x0, logits0) for ``settings.iterations`` steps (module docstring).

    Parameters
    ----------
    model, parameters
        The victim in its batch-norm mode and its tensors in the leak's order.
    observed
        The leaked gradient, one tensor per parameter.
    x0
        Initial images (normalised space).
    labels, logits0
        Fixed class indices (then ``logits0`` is ``None``), or ``None`` and the initial label logits.
    """
    if (labels is None) == (logits0 is None):
        raise ValueError("run_restart needs fixed labels or initial label logits, exactly one of them")
    x = x0.clone().requires_grad_(True)
    logits = None if logits0 is None else logits0.clone().requires_grad_(True)
    variables = [x] if logits is None else [x, logits]
    optimizer = torch.optim.LBFGS(
        variables, lr=options.step_size, max_iter=options.max_iter, history_size=options.history_size,
        line_search_fn=None if options.line_search == "none" else "strong_wolfe",
    )
    device = torch.device(settings.device)

    def objective() -> torch.Tensor:
        with precision_scope(settings.precision, device):
            targets = F.softmax(logits, dim=-1) if logits is not None else cast(torch.Tensor, labels)
            return gradient_distance(model, parameters, x, targets, observed).float()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = objective()
        if torch.isfinite(value):
            value.backward(inputs=variables)
        else:  # a zero gradient ends LBFGS.step at once; the non-finite value ends the restart
            for v in variables:
                v.grad = torch.zeros_like(v)
        return value.detach()

    best = (float("nan"), x.detach().clone(), None if logits is None else logits.detach().clone())
    diverged, run = False, 0
    for step in range(settings.iterations + 1):
        before = [v.detach().clone() for v in variables]
        if step == settings.iterations:  # the last iterate's objective
            value = float(objective().detach())
        else:
            value = float(optimizer.step(closure))  # the objective where this step started
        if not math.isfinite(value):
            diverged = True
            break
        if math.isnan(best[0]) or value < best[0]:
            best = (value, before[0], before[1] if logits is not None else None)
        if step == settings.iterations:
            break
        run = step + 1
        if settings.progress and run % settings.progress == 0:
            print(f"{label}: iteration {run}/{settings.iterations} loss {value:.6g}", flush=True)
        if all(torch.equal(a, b) for a, b in zip(before, variables, strict=True)):
            break  # converged: the step did not move
    return RestartResult(best[1], best[2], best[0], run, diverged)


class DeepLeakage(Attack):
    """Deep Leakage from Gradients: L-BFGS (step size 1) on the squared gradient distance, no TV.

    Parameters
    ----------
    settings
        Iterations (L-BFGS steps), restarts, device, progress, precision; ``lr`` and ``tv`` are not
        used. Its options (:class:`DeepLeakageOptions`): ``labels``, ``history-size``, ``max-iter``,
        ``step-size``, ``line-search``, ``max-images``.
    """

    name: ClassVar[str] = "deep-leakage"
    leak_kinds: ClassVar[tuple[str, ...]] = ("gradient",)
    model_modes: ClassVar[tuple[str, ...]] = ("eval", "train")
    optimises: ClassVar[bool] = True
    knowledge: ClassVar[Knowledge] = Knowledge()
    Options: ClassVar[type] = DeepLeakageOptions

    def __init__(self, settings: AttackSettings) -> None:
        check_settings(settings)
        self.options = own_options(DeepLeakageOptions, settings, self.name)
        self.settings = settings

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """A fedsgd batch must not exceed ``max-images`` (every attacked cell would fail)."""
        if config.protocol == "fedsgd" and config.batch_size > options.max_images:
            return [f"batch-size={config.batch_size} exceeds attack.deep-leakage.max-images={options.max_images}: "
                    "DLG reconstructs at most that many images per gradient; raise max-images or lower batch-size"]
        return []

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """Reconstruct each target's images (and, unless revealed, labels) from its gradient.

        Returns
        -------
        list[Reconstruction]
            Per target: images in pixel space [0,1], the labels it inferred (argmax of y' when
            optimised jointly, the estimate under ``labels=infer``; ``None`` when it used revealed
            labels), and fields ``loss`` (objective of the kept iterate), ``iterations_run`` and
            ``diverged``.
        """
        return [self._reconstruct_one(model, dataset, target) for target in targets]

    def _reconstruct_one(self, model: nn.Module, dataset: DatasetSpec, target: AttackTarget) -> Reconstruction:
        s, o, leak = self.settings, self.options, target.leak
        if not isinstance(leak, GradientLeak):
            raise TypeError(f"{self.name} consumes gradient leaks, got {type(leak).__name__}")
        if leak.batch_size > o.max_images:
            raise ValueError(f"the gradient holds {leak.batch_size} images; {self.name} reconstructs at most "
                             f"{o.max_images} (attack.deep-leakage.max-images)")
        device = torch.device(s.device)
        victim = copy.deepcopy(model).to(device)
        joint = o.labels == "joint" or (o.labels == "auto" and leak.labels is None)
        labels: torch.Tensor | None = None
        inferred: torch.Tensor | None = None
        if not joint:
            if leak.labels is not None and o.labels != "infer":
                labels = leak.labels.to(device)
            else:
                inferred = infer_labels(victim, dataset, leak, seed=target.seed).cpu()
                labels = inferred.to(device)
        victim = batch_norm_mode(victim, leak.model_mode)
        named = dict(victim.named_parameters())
        parameters = [named[n].requires_grad_(True) for n in leak.parameter_names]
        dtype = parameters[0].dtype
        observed = [g.to(device, dtype) for g in leak.gradients]
        generator = torch.Generator().manual_seed(target.seed)
        results = []
        for _ in range(s.restarts):
            x0 = torch.randn((leak.batch_size, *dataset.shape), generator=generator, dtype=dtype).to(device)
            logits0 = None
            if joint:
                logits0 = torch.randn((leak.batch_size, dataset.num_classes), generator=generator, dtype=dtype)
                logits0 = logits0.to(device)
            results.append(run_restart(victim, parameters, observed, x0, labels, logits0, s, o, self.name))
        kept = best_restart(results)
        if kept.logits is not None:
            inferred = kept.logits.argmax(dim=-1).cpu()
        return Reconstruction(
            images=dataset.denormalize(kept.x).clamp(0, 1).cpu(), labels=inferred,
            fields={"loss": kept.loss, "iterations_run": float(kept.iterations_run), "diverged": float(kept.diverged)},
        )


ATTACKS.add(DeepLeakage.name, DeepLeakage)
