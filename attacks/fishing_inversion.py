"""Fishing inversion: one image of the fished class inverted from a whole batch's gradient (after Wen et al., 2022).

Behind ``server-behaviour='fishing'`` (:mod:`fedpriv.fishing`) the gradient below the model's
head, and in the target class's row, is that of the leak's target-class images alone. The attack
reads the target class off the model the server sent (its final layer's only non-zero row),
keeps those parts of the leak (a FedSGD gradient; minus a FedAvg update or a SecAgg+ aggregate,
read as one gradient), and runs Inverting Gradients (:mod:`attacks.inverting_gradients`: cosine
objective, total variation, restarts, the same options) for one image of that class on the
fished model seen from such an image (:func:`fedpriv.fishing.target_victim`). It returns one
image; the scorer matches it to the batch's image it is nearest to, and gives the baselines the
same choice (``targeted`` in the row). With two or more target-class images in the batch the
gradient is their mean's and the image a blend of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedpriv.attacks.base import ATTACKS, AttackTarget, Knowledge, Reconstruction
from fedpriv.attacks.inverting_gradients import InvertingGradients, solve_targets
from fedpriv.data.specs import DatasetSpec
from fedpriv.fishing import target_victim
from fedpriv.leaks import GradientLeak, descent_direction

if TYPE_CHECKING:
    from fedpriv.config import RunConfig


class FishingInversion(InvertingGradients):
    """Inverts the fished class's image out of a batch's gradient (the server fished the broadcast model)."""

    name: ClassVar[str] = "fishing-inversion"
    leak_kinds: ClassVar[tuple[str, ...]] = ("gradient", "update", "aggregate")
    model_modes: ClassVar[tuple[str, ...]] = ("eval", "train")  # matched in eval mode: prefer GroupNorm models
    knowledge: ClassVar[Knowledge] = Knowledge(model="weights", defense=False)
    behaviour: ClassVar[str] = "fishing"  # the server behaviour that fishes the model it reads

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """The server must fish the model it sends; the engine must run at the run's precision."""
        errors = super().fit_errors(config, options)
        if config.server_behaviour != cls.behaviour:
            errors.append(f"attack {cls.name!r} reads the gradient that server-behaviour='{cls.behaviour}' fishes; "
                          f"this run has server-behaviour={config.server_behaviour!r} (set "
                          f"server-behaviour='{cls.behaviour}')")
        return errors

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """One image per leak: the fished class's, by gradient matching on the target victim."""
        if not targets:
            return []
        victim, head, target_class = target_victim(model)
        names = [name for name, _ in victim.named_parameters()]
        fished = [AttackTarget(self._fished_leak(t, names, head, target_class), t.seed) for t in targets]
        solved = solve_targets(victim, dataset, fished, self.settings, self.options, self.name)
        return [
            Reconstruction(images=dataset.denormalize(s.images).cpu(),
                           fields={"loss": s.loss, "iterations_run": float(s.iterations_run),
                                   "target_class": float(target_class)}, engine=s.engine)
            for s in solved
        ]

    @staticmethod
    def _fished_leak(target: AttackTarget, names: list[str], head: str, target_class: int) -> GradientLeak:
        """The leak's gradient below the head and in the target's row, as one image of label 0 sends it."""
        direction = descent_direction(target.leak)
        rows = {f"{head}.weight", f"{head}.bias"}
        gradients = tuple(direction[n][target_class : target_class + 1] if n in rows else direction[n] for n in names)
        return GradientLeak(gradients=gradients, parameter_names=tuple(names), batch_size=1, model_mode="eval",
                            labels=torch.tensor([0]), protocol=target.leak.protocol)


ATTACKS.add(FishingInversion.name, FishingInversion)
