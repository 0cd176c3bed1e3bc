"""The optimising attacks' Adam, its lr schedule, and the stopping rule (``patience``, ``tolerance``).

Schedule (ATS "inversed", Inverting Gradients): Adam at ``lr``, x0.1 at the three
:func:`lr_milestones`, the last iterate returned. Stopping rule (off by default, ``patience=0``):
every problem keeps its own place in that schedule. When its objective has not fallen below
``best * (1 - tolerance)`` for ``patience`` consecutive iterations (``best``: its lowest objective
that counted as an improvement, as in ``torch.optim.lr_scheduler.ReduceLROnPlateau``'s relative
threshold), it moves to the next lr at once; a milestone still ends a level at the latest. A
plateau at the last lr stops the problem: from then on its iterate is frozen, it is its result,
and the iterations it took are its ``iterations_run``. So an early stop never returns an iterate
that skipped the schedule's small steps. The rule is checked every iteration on the objective
that the step is taken from; the optimisation ends when every problem it holds has stopped.

Adam's moments do not depend on the lr, so a problem's own lr is its step scaled by the ratio
of its lr to the schedule's (``lerp``; a ratio of 1 leaves the step bit for bit, 0 freezes it):
problems stacked along dimension 0 stop exactly where each would alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedpriv.options import option

DEFAULT_TOLERANCE = 1e-3
MAX_PATIENCE = 10_000_000
DECAY = 0.1


def lr_milestones(iterations: int) -> list[int]:
    """ATS/inversefed decay points: floors of iterations / 2.667, / 1.6, / 1.142."""
    return [int(iterations // 2.667), int(iterations // 1.6), int(iterations // 1.142)]


@dataclass(frozen=True)
class StoppingRule:
    """When a problem's lr decays early and when it stops (module docstring).

    Attributes
    ----------
    patience
        Iterations without a relative improvement of ``tolerance`` before the next lr, or at
        the last lr the stop; 0: off (the fixed schedule, the whole budget).
    tolerance
        Relative fall of the best objective that counts as an improvement.
    """

    patience: int = 0
    tolerance: float = DEFAULT_TOLERANCE


NO_STOPPING = StoppingRule()  # the default: ATS's fixed schedule, the whole budget


@dataclass(frozen=True)
class StopOptions:
    """The stopping rule's options, shared by every optimising attack (``attack.NAME.patience`` ...)."""

    patience: int = option(0, "iterations without improvement before the next lr, or the stop; 0: off",
                           low=0, high=MAX_PATIENCE)
    tolerance: float = option(DEFAULT_TOLERANCE, "relative fall of the best objective that counts as an improvement",
                              low=0, high=1)

    @property
    def rule(self) -> StoppingRule:
        """The stopping rule these options set."""
        return StoppingRule(self.patience, self.tolerance)


class ScheduledAdam:
    """Adam with the milestone schedule for ``problems`` problems stacked along dimension 0.

    Per iteration: :meth:`observe` the objectives (P,), stop if :attr:`finished`, else set the
    parameters' gradients and :meth:`step`.

    Parameters
    ----------
    params
        Tensors whose dimension 0 indexes the problems (or one problem's tensors, ``problems=1``).
    lr, iterations
        Initial Adam lr and the budget (the milestones).
    rule
        The stopping rule.
    problems
        How many problems the tensors hold.
    """

    def __init__(self, params: Sequence[torch.Tensor], lr: float, iterations: int, rule: StoppingRule,
                 problems: int) -> None:
        self.params, self.lr, self.rule = list(params), lr, rule
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, lr_milestones(iterations), DECAY)
        self.last_level = len(lr_milestones(iterations))
        device = self.params[0].device
        self.level = torch.zeros(problems, dtype=torch.long, device=device)
        self.since = torch.zeros(problems, dtype=torch.long, device=device)
        self.best = torch.full((problems,), math.inf, dtype=torch.float64, device=device)
        self.running = torch.ones(problems, dtype=torch.bool, device=device)
        self.iterations_run = torch.full((problems,), iterations, dtype=torch.long, device=device)

    def _scheduled_level(self) -> int:
        """How many milestone decays the schedule's current lr has had."""
        return round(math.log(self.lr / self.optimizer.param_groups[0]["lr"]) / math.log(1 / DECAY))

    def observe(self, iteration: int, loss: torch.Tensor) -> None:
        """Apply the rule to the objectives (P,) at ``iteration``, before its step."""
        if self.rule.patience == 0:
            return
        scheduled = self._scheduled_level()
        self.since = torch.where(self.level < scheduled, 0, self.since)
        self.level = self.level.clamp_min(scheduled)
        loss = loss.detach().reshape(-1).to(self.best)
        improved = loss < self.best * (1 - self.rule.tolerance)
        self.best = torch.where(improved, loss, self.best)
        self.since = torch.where(improved, 0, self.since + 1)
        stalled = self.running & (self.since >= self.rule.patience)
        stop = stalled & (self.level == self.last_level)
        self.iterations_run = torch.where(stop, iteration, self.iterations_run)
        self.running = self.running & ~stop
        decay = stalled & ~stop
        self.level = self.level + decay.long()
        self.since = torch.where(decay, 0, self.since)

    @property
    def finished(self) -> bool:
        """Whether every problem has stopped (never, with the rule off)."""
        return self.rule.patience > 0 and not bool(self.running.any())

    def step(self) -> None:
        """One Adam step at each running problem's lr, then the schedule's step."""
        if self.rule.patience == 0:
            self.optimizer.step()
        else:
            ratio = torch.pow(DECAY, (self.level - self._scheduled_level()).double())
            ratio = torch.where(self.running, ratio, 0.0)
            before = [p.detach().clone() for p in self.params]
            self.optimizer.step()
            with torch.no_grad():
                for p, start in zip(self.params, before, strict=True):
                    weight = ratio.to(p.dtype).view(-1, *[1] * (p.dim() - 1))
                    p.copy_(torch.lerp(start, p, weight))
        self.scheduler.step()
