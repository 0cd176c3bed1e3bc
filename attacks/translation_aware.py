"""Translation-aware enhanced attack (ATS reproduction, ReScience C 2022, ``ATSRefactored``).

Inverting Gradients with a learned translation t = (t_x, t_y) per image, optimised jointly with
x in the same Adam (lr 0.1, same decay), its gradient used raw (x's is signed), clamped to
|t_x| <= tx-max, |t_y| <= ty-max after every step. The model sees Translate(x) in normalised
space (``affine_grid``/``grid_sample``, bilinear, zero padding, ``align_corners=False``; t in
half-image units, content moves by -t * size / 2); TV is taken on the untranslated x. Only the
translations of the client's ATS policy are modelled (not rotation, contrast, crop or flip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.attacks.base import (
    ATTACKS,
    AttackTarget,
    Knowledge,
    Reconstruction,
)
from fedpriv.attacks.inverting_gradients import GradientMatchingAttack, MatchingOptions, solve_targets
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses.ats import parse_ats_policy, translation_bounds
from fedpriv.options import option

if TYPE_CHECKING:
    pass

FROM_POLICY = -1.0  # a clamp option's default: take the clamp from the client's policy

# The reproduction's clamps (benchmark_attack.py reaugment_modes), by the policy's sub-policies.
REFERENCE_CLAMPS: dict[frozenset[tuple[int, ...]], tuple[float, float]] = {
    frozenset({(3, 1, 7)}): (1.1, 0.2),
    frozenset({(43, 18, 18)}): (0.4, 0.4),
    frozenset({(3, 1, 7), (43, 18, 18)}): (1.1, 0.4),
}


def translate(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Sample each image at (u + t_x, v + t_y): bilinear, zero fill, ``align_corners=False``.

    Parameters
    ----------
    images
        Shape (n, C, H, W).
    shifts
        Shape (n, 2): (t_x, t_y) in half-image units (1.0 = W/2 or H/2 pixels).
    """
    n = len(images)
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta = theta + F.pad(shifts.view(n, 2, 1), (2, 0))
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def translate_problems(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """:func:`translate` on stacked problems: x (P, k, C, H, W), shifts (P, k, 2)."""
    return translate(x.flatten(0, 1), shifts.flatten(0, 1)).view_as(x)


@dataclass(frozen=True)
class TranslationOptions(MatchingOptions):
    """Gradient matching's options and the translation clamps (both set, or both from the policy)."""

    tx_max: float = option(FROM_POLICY, "clamp of |t_x| in half-image units; -1: from the client's policy",
                           low=FROM_POLICY)
    ty_max: float = option(FROM_POLICY, "clamp of |t_y| in half-image units; -1: from the client's policy",
                           low=FROM_POLICY)

    def errors(self, prefix: str) -> list[str]:
        """Both clamps are given (>= 0) or neither is (-1)."""
        given = [value != FROM_POLICY for value in (self.tx_max, self.ty_max)]
        errors = [f"{prefix}{key}={value!r}: a clamp is >= 0, or -1 for the policy's"
                  for key, value in (("tx-max", self.tx_max), ("ty-max", self.ty_max)) if FROM_POLICY < value < 0]
        if any(given) and not all(given):
            errors.append(f"{prefix}tx-max and {prefix}ty-max are set together; "
                          f"{prefix}{'ty-max' if given[0] else 'tx-max'} is missing")
        return errors


def translation_clamps(defense_spec: str | None, options: TranslationOptions, size: int = 32) -> tuple[float, float]:
    """The clamps (tx-max, ty-max) for a client's defense, in half-image units.

    The reproduction's table for 3-1-7 (1.1, 0.2), 43-18-18 (0.4, 0.4) and their hybrid
    (1.1, 0.4); otherwise the options ``tx-max`` and ``ty-max``; otherwise the policy's
    largest summed translations as PIL really shifts ``size`` x ``size`` images
    (:func:`fedpriv.defenses.ats.translation_bounds`). A defense with no translation (``none``,
    a policy without translateX/Y) gives (0, 0): the attack is then Inverting Gradients, so it
    can be run on every client of a mixed federation and compared cell by cell.
    """
    explicit = None if options.tx_max == FROM_POLICY else (options.tx_max, options.ty_max)
    policy = None
    if defense_spec is not None and defense_spec.strip().startswith("ats:"):
        policy = parse_ats_policy(defense_spec)
        table = REFERENCE_CLAMPS.get(frozenset(policy.sub_policies))
        if table is not None:
            return table
    if explicit is not None:
        return explicit
    if policy is not None:
        return translation_bounds(policy, size)
    return 0.0, 0.0


class TranslationAware(GradientMatchingAttack):
    """The translation-aware enhanced attack; knows the client's defense spec.

    Parameters
    ----------
    settings
        As for Inverting Gradients; its options (:class:`TranslationOptions`) add ``tx-max`` and
        ``ty-max``.
    """

    name: ClassVar[str] = "translation-aware"
    knowledge: ClassVar[Knowledge] = Knowledge(defense=True)
    Options: ClassVar[type] = TranslationOptions

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """Reconstruct each target's images and translations.

        Returns
        -------
        list[Reconstruction]
            Per target: ``images`` the untranslated estimate of x in pixel space, ``defended``
            the learned translation re-applied in pixel space (zero fill = black, as the real
            augmentation), fields ``loss``, ``iterations_run`` and, per image, ``tx``, ``ty`` (one image) or
            ``tx-i``, ``ty-i`` (several), in half-image units.
        """
        if not targets:
            return []
        bounds = []
        for target in targets:
            tx, ty = translation_clamps(target.defense_spec, self.options, dataset.size)
            k = getattr(target.leak, "batch_size", 1)
            bounds.append(torch.tensor([tx, ty], dtype=torch.float64).expand(k, 2))
        solved = solve_targets(model, dataset, targets, self.settings, self.options, self.name, bounds,
                               translate_problems)
        out = []
        for solution in solved:
            shifts = solution.extra
            assert shifts is not None
            pixels = dataset.denormalize(solution.images)
            fields = {"loss": solution.loss, "iterations_run": float(solution.iterations_run)}
            for i, (tx, ty) in enumerate(shifts.tolist()):
                suffix = "" if len(shifts) == 1 else f"-{i}"
                fields |= {f"tx{suffix}": tx, f"ty{suffix}": ty}
            out.append(Reconstruction(images=pixels.cpu(), defended=translate(pixels, shifts).cpu(), fields=fields,
                                      engine=solution.engine))
        return out


ATTACKS.add(TranslationAware.name, TranslationAware)
