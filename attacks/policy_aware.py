"""Policy-aware gradient inversion: an attacker that knows the client's ATS policy (beyond the sources).

Extends the translation-aware attack of the ATS reproduction (Taboada Warmerdam et al., ReScience C
2022), which learns one translation, to the whole policy of Gao et al. (CVPR 2021): the model input
is T(x), T the policy made differentiable (:mod:`fedpriv.defenses.ats_differentiable`) and applied
in pixel space, optimised jointly with x by Inverting Gradients (Geiping et al., NeurIPS 2020).

Per image, a discrete hypothesis fixes the sub-policy (hybrids) and, per axis, which interval of
total translation the random signs put the content in; continuous parameters, each scaled to
[-1, 1] of its range, cover the rest: the merged translation of each axis (the policy's signed
shifts plus RandomCrop's up to 4 px; see :func:`apply_sub_policy`), enhancement factors 1 + m v
and shear coefficients m v. A sign is a hypothesis only where the crop cannot bridge the two
shifts (3-1-7: the +-15 px translateX; its +-3 px translateY merges with the crop into one range).
The flip is not a hypothesis: it is the pipeline's first step and a bijection, so the gradient
cannot tell it and x is estimated up to a horizontal flip. A batch of k images has the product of
its images' hypotheses. All hypotheses and restarts of all targets are problems of one
:func:`~fedpriv.attacks.gradient_matching.solve` call; per target the lowest final loss wins.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedpriv.attacks.base import (
    ATTACKS,
    AttackSettings,
    AttackTarget,
    Knowledge,
    Reconstruction,
    tv_weight,
)
from fedpriv.attacks.gradient_matching import ExtraParameters, MatchingProblem, ProblemSolution, solve
from fedpriv.attacks.inverting_gradients import GradientMatchingAttack, MatchingOptions, box_bounds
from fedpriv.attacks.label_inference import infer_labels
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses.ats import CROP_PADDING, MAX_PRIMITIVES, AtsPolicy, parse_ats_policy
from fedpriv.defenses.ats_differentiable import SHEAR_OPS, apply_sub_policy, continuous_slots
from fedpriv.defenses.ats_primitives import Primitive, sampled_shift
from fedpriv.leaks import GradientLeak
from fedpriv.options import option

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

MAX_HYPOTHESES = 16
# Columns of the extra parameters of each image: its problem's row in the plan table (constant,
# see _Plans), the x and y translation, then one per primitive slot.
_ROW, _SHIFT, _SLOTS = 0, 1, 3
WIDTH = _SLOTS + MAX_PRIMITIVES


@dataclass(frozen=True)
class Hypothesis:
    """One discrete guess about how one image was augmented.

    Attributes
    ----------
    sub_policy
        Index of the sub-policy (0 unless the policy is a hybrid).
    centre
        Centre of the merged x and y translation range, as sampling offsets in px (output
        pixel (u, v) samples (u + tx, v + ty); content moves by minus these).
    reach
        Half-width of each range in px (0: the translation is known exactly).
    """

    sub_policy: int
    centre: tuple[float, float]
    reach: tuple[float, float]


def _axis_ranges(ops: Sequence[Primitive], size: int, pad: int) -> list[tuple[float, float]]:
    """(centre, reach) of each disjoint interval of total shift that ``ops`` and the crop allow."""
    choices = [(sampled_shift(-p.magnitude * size), sampled_shift(p.magnitude * size)) for p in ops]
    intervals: list[list[float]] = []
    for c in sorted({float(sum(combo)) for combo in product(*choices)}):
        if intervals and c - pad <= intervals[-1][1]:
            intervals[-1][1] = c + pad
        else:
            intervals.append([c - pad, c + pad])
    return [((lo + hi) / 2, (hi - lo) / 2) for lo, hi in intervals]


def enumerate_hypotheses(policy: AtsPolicy, size: int) -> list[Hypothesis]:
    """All discrete hypotheses for one image, in a fixed order.

    Parameters
    ----------
    policy
        The client's ATS policy.
    size
        Image side in px (translations are fractions of it).

    Returns
    -------
    list[Hypothesis]
        Sub-policy major, then x range, then y range.
    """
    pad = CROP_PADDING if policy.crop_flip else 0
    found = []
    for s, sub in enumerate(policy.primitives):
        ranges = [_axis_ranges([p for p in sub if p.op == op], size, pad) for op in ("translateX", "translateY")]
        found += [Hypothesis(s, (cx, cy), (rx, ry)) for (cx, rx), (cy, ry) in product(*ranges)]
    return found


def select_hypotheses(count: int, cap: int, seed: int) -> list[int]:
    """Indices of the hypotheses to solve, sorted: all ``count``, or ``cap`` of them drawn
    without replacement with Python's ``random.Random(seed)`` when there are more."""
    if count <= cap:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), cap))


def decode(index: int, base: int, images: int) -> tuple[int, ...]:
    """Per-image hypothesis indices of a batch hypothesis ``index`` (image 0 the leading digit)."""
    digits = []
    for _ in range(images):
        index, digit = divmod(index, base)
        digits.append(digit)
    return tuple(reversed(digits))


@dataclass(frozen=True)
class _Plan:
    """What one image assumes: no policy (both ``None``) or a policy and a hypothesis."""

    policy: AtsPolicy | None
    hypothesis: Hypothesis | None

    def transform(self, pixels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """T(pixels) under this plan for extra-parameter rows ``values`` (N, WIDTH)."""
        if self.policy is None or self.hypothesis is None:
            return pixels
        h = self.hypothesis
        centre = torch.tensor(h.centre, dtype=pixels.dtype, device=pixels.device)
        reach = torch.tensor(h.reach, dtype=pixels.dtype, device=pixels.device)
        shift = centre + reach * values[:, _SHIFT:_SLOTS]
        sub = self.policy.primitives[h.sub_policy]
        return apply_sub_policy(pixels, sub, self.policy.crop_flip, shift, values[:, _SLOTS:])

    def bound(self) -> list[float]:
        """Clamp of the continuous columns: 1 where the plan has that parameter, else 0."""
        bound = [0.0] * (WIDTH - _SHIFT)
        if self.policy is not None and self.hypothesis is not None:
            bound[0], bound[1] = (float(r > 0) for r in self.hypothesis.reach)
            for k in continuous_slots(self.policy.primitives[self.hypothesis.sub_policy]):
                bound[_SLOTS - _SHIFT + k] = 1.0
        return bound


class _Plans:
    """Maps model-input candidates through each image's plan (the ``ExtraParameters.apply``).

    ``solve`` hands ``apply`` only the rows of the problems it is optimising (chunks, or one at a
    time in the loop engine), so column ``_ROW`` carries each problem's row in ``plans``. It is
    read detached: its gradient is zero, so Adam never moves it, and its bound is its own value.
    """

    def __init__(self, plans: Sequence[tuple[_Plan, ...]], dataset: DatasetSpec) -> None:
        self.plans, self.dataset = list(plans), dataset

    def parameters(self, rows: Sequence[int], like: torch.Tensor) -> ExtraParameters:
        """Initial values (0: centre, factor 1, no shear) and bounds, (len(rows), k, WIDTH).

        The initial values are integers and stay an int64 tensor, so the engine's conversions to
        the candidates' dtype always copy them (its timing probe has enabled gradients on
        ``init.to(x)`` in place, which for an alias breaks the later optimisation).
        """
        k = len(self.plans[rows[0]])
        init = torch.zeros(len(rows), k, WIDTH, dtype=torch.int64, device=like.device)
        init[..., _ROW] = torch.tensor(rows, device=like.device)[:, None]
        bound = [[[float(r), *plan.bound()] for plan in self.plans[r]] for r in rows]
        return ExtraParameters(init, torch.tensor(bound, dtype=like.dtype, device=like.device), self.apply)

    def apply(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Model inputs (P, k, C, H, W) for candidates x in input space and values (P, k, WIDTH)."""
        k = x.shape[1]
        flat_x, flat_values = x.flatten(0, 1), values.flatten(0, 1)
        groups: dict[_Plan, list[int]] = {}
        for i, row in enumerate(values[:, 0, _ROW].detach().round().long().tolist()):
            for j, plan in enumerate(self.plans[row]):
                groups.setdefault(plan, []).append(i * k + j)
        parts, order = [], []
        for plan, members in groups.items():
            index = torch.tensor(members, device=x.device)
            chosen = flat_x[index]
            if plan.policy is not None:
                pixels = plan.transform(self.dataset.denormalize(chosen), flat_values[index])
                chosen = self.dataset.normalize(pixels)
            parts.append(chosen)
            order += members
        out = torch.cat(parts)[torch.argsort(torch.tensor(order, device=x.device))].view_as(x)
        # Plans without continuous parameters leave the values out of the graph, which
        # autograd.grad rejects; adding 0 * values keeps them in with a zero gradient.
        return out + 0 * values.sum()


def _package(dataset: DatasetSpec, solution: ProblemSolution, plans: tuple[_Plan, ...], index: int,
             counts: tuple[int, int]) -> Reconstruction:
    """The winning problem of one target as a reconstruction with its fields."""
    images = dataset.denormalize(solution.images).cpu()
    fields = {"loss": solution.loss, "iterations_run": float(solution.iterations_run), "hypotheses": float(counts[0]),
              "hypotheses_total": float(counts[1]), "hypotheses_sampled": float(counts[0] < counts[1]),
              "hypothesis": float(index)}
    if solution.extra is None or plans[0].policy is None:
        return Reconstruction(images=images, fields=fields, engine=solution.engine)
    values = solution.extra.cpu()
    defended = []
    for j, plan in enumerate(plans):
        assert plan.policy is not None and plan.hypothesis is not None
        with torch.no_grad():
            defended.append(plan.transform(images[j : j + 1], values[j : j + 1]))
        h, v = plan.hypothesis, values[j].tolist()
        suffix = "" if len(plans) == 1 else f"-{j}"
        fields[f"sub_policy{suffix}"] = float(h.sub_policy)
        for axis, centre, reach, u in zip("xy", h.centre, h.reach, v[_SHIFT:_SLOTS], strict=True):
            fields[f"t{axis}{suffix}"] = centre + reach * u
        sub = plan.policy.primitives[h.sub_policy]
        for k in continuous_slots(sub):
            found = sub[k].magnitude * v[_SLOTS + k]
            fields[f"slot{k}{suffix}"] = found if sub[k].op in SHEAR_OPS else 1 + found
    return Reconstruction(images=images, defended=torch.cat(defended), fields=fields, engine=solution.engine)


@dataclass(frozen=True)
class PolicyOptions(MatchingOptions):
    """Gradient matching's options and the hypotheses tried per target."""

    max_hypotheses: int = option(MAX_HYPOTHESES, "hypotheses per target (more are sampled from its seed)",
                                 low=1, high=1_000_000)


def target_policy(spec: str | None) -> AtsPolicy | None:
    """The ATS policy of a defense spec, or ``None`` for any other defense (then: plain IG)."""
    return parse_ats_policy(spec) if spec is not None and spec.strip().startswith("ats:") else None


class PolicyAware(GradientMatchingAttack):
    """Inverting Gradients through a differentiable copy of the client's known ATS policy.

    Parameters
    ----------
    settings
        Iterations, restarts, lr, TV weight, device and progress; its options
        (:class:`PolicyOptions`): ``max-hypotheses`` (default 16, per target; more are sampled from
        the target's seed), ``engine``, ``max-batch``, ``patience`` and ``tolerance`` (as for
        Inverting Gradients).
    """

    name: ClassVar[str] = "policy-aware"
    knowledge: ClassVar[Knowledge] = Knowledge(defense=True, defense_required=True)
    Options: ClassVar[type] = PolicyOptions

    def __init__(self, settings: AttackSettings) -> None:
        super().__init__(settings)
        self.max_hypotheses = self.options.max_hypotheses

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """The engine must run at ``attack-precision``; no client's policy may use the reference geometry."""
        errors = super().fit_errors(config, options)
        for spec in sorted({config.defense, *config.defense_overrides_map().values()}):
            policy = target_policy(spec)
            if policy is not None and policy.geometry == "reference":
                errors.append(f"defense {spec!r}: attack 'policy-aware' models the resized geometry only; "
                              "use inverting-gradients or translation-aware with geometry=reference")
        return errors

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """Reconstruct every target's x and T(x): all hypotheses and restarts in one ``solve``.

        Targets with different batch sizes (which ``solve`` cannot stack) get one call per size.

        Returns
        -------
        list[Reconstruction]
            Per target: ``images`` (x, pixel space), ``defended`` (the winning hypothesis
            applied to it; ``None`` without a policy) and fields ``loss``, ``iterations_run``, ``hypotheses``
            (solved), ``hypotheses_total``, ``hypotheses_sampled`` (1 when capped) and
            ``hypothesis`` (the batch hypothesis, see :func:`decode`), and per image (suffix
            ``-i`` when k > 1) ``sub_policy``, ``tx``, ``ty`` (merged sampling offsets, px)
            and ``slot<k>`` (the enhancement factor or shear coefficient found).
        """
        if not targets:
            return []
        s = self.settings
        device = torch.device(s.device)
        model = model.to(device).eval()
        dtype = next(model.parameters()).dtype
        problems: list[MatchingProblem] = []
        plans: list[tuple[_Plan, ...]] = []
        owners: list[tuple[int, int]] = []  # (target, batch hypothesis) per problem
        counts: list[tuple[int, int]] = []
        for t, target in enumerate(targets):
            leak = target.leak
            if not isinstance(leak, GradientLeak):
                raise TypeError(f"{self.name} consumes gradient leaks, got {type(leak).__name__}")
            labels = leak.labels if leak.labels is not None else infer_labels(model, dataset, leak, seed=target.seed)
            labels = labels.to(device)
            grads = tuple(g.to(device, dtype) for g in leak.gradients)
            policy = target_policy(target.defense_spec)
            per_image = [_Plan(None, None)]
            if policy is not None:
                per_image = [_Plan(policy, h) for h in enumerate_hypotheses(policy, dataset.size)]
            total = len(per_image) ** leak.batch_size
            chosen = select_hypotheses(total, self.max_hypotheses, target.seed)
            counts.append((len(chosen), total))
            generator = torch.Generator().manual_seed(target.seed)
            inits = [torch.randn((leak.batch_size, *dataset.shape), generator=generator, dtype=dtype)
                     for _ in range(s.restarts)]
            for index in chosen:
                combo = tuple(per_image[d] for d in decode(index, len(per_image), leak.batch_size))
                for init in inits:
                    problems.append(MatchingProblem(init.to(device), labels, grads))
                    plans.append(combo)
                    owners.append((t, index))
        solved = self._solve(model, dataset, problems, _Plans(plans, dataset))
        out = []
        for t in range(len(targets)):
            best = min((i for i, (owner, _) in enumerate(owners) if owner == t), key=lambda i: solved[i].loss)
            out.append(_package(dataset, solved[best], plans[best], owners[best][1], counts[t]))
        return out

    def _solve(self, model: nn.Module, dataset: DatasetSpec, problems: Sequence[MatchingProblem],
               table: _Plans) -> list[ProblemSolution]:
        """The solution of each problem: one ``solve`` per batch size."""
        s = self.settings
        low, high = box_bounds(dataset, problems[0].init)
        solved: dict[int, ProblemSolution] = {}
        for k in sorted({p.init.shape[0] for p in problems}):
            rows = [i for i, p in enumerate(problems) if p.init.shape[0] == k]
            modelled = any(plan.policy is not None for r in rows for plan in table.plans[r])
            extra = table.parameters(rows, problems[0].init) if modelled else None
            result = solve(model, [problems[r] for r in rows], low, high, iterations=s.iterations, lr=s.lr,
                           tv=tv_weight(s, self.options), extra=extra, engine=self.options.engine,
                           max_batch=self.options.max_batch,
                           precision=s.precision, rule=self.options.rule, progress=s.progress, label=self.name)
            solved.update(zip(rows, result.solutions(), strict=True))
        return [solved[r] for r in range(len(problems))]


ATTACKS.add(PolicyAware.name, PolicyAware)
