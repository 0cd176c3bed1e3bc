"""FedAvg update inversion: simulate the client's local SGD and match the observed update.

Dimitrov, Balunovic, Konstantinov, Vechev, "Data Leakage in Federated Averaging", TMLR 2022;
breaching's multi-step setting (Geiping et al.). The attacker knows the broadcast model and the
protocol's local SGD (lr, momentum, weight decay, batch size, number of steps and examples, as
:class:`~fedpriv.leaks.UpdateLeak` carries them) and optimises N images x so that simulating
those steps from the broadcast weights reproduces the observed update:

    objective = 1 - cos(theta_S(x) - theta_0, delta) + tv * TV(x)    (tv: option ``tv``, default 0.2)

with theta_S(x) the weights after S simulated SGD steps (differentiated through all of them,
``create_graph``), batch norm in train mode (batch statistics, as the client trained), the
global cosine over all trainable tensors, signed Adam with IG's lr schedule and the [0,1] box, and
the stopping rule of :mod:`~fedpriv.attacks.lr_schedule` (off by default).
The client's batch order is private: the simulation cuts x into consecutive batches in the same
order every epoch, so the recovered images come in no particular order and are scored after
matching. Labels are the revealed ones or :mod:`fedpriv.attacks.label_inference`'s estimate.
A secure aggregate (protocol ``secagg``) is attacked as one update over the union of its clients'
images (:meth:`~fedpriv.leaks.AggregateLeak.union_update`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

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
from fedpriv.attacks.gradient_matching import total_variation
from fedpriv.attacks.heap_reuse import reused_heap
from fedpriv.attacks.inverting_gradients import box_bounds
from fedpriv.attacks.label_inference import infer_labels
from fedpriv.attacks.lr_schedule import ScheduledAdam, StopOptions
from fedpriv.data.specs import DatasetSpec
from fedpriv.leaks import UpdateLeak, single_update
from fedpriv.options import option

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

DEFAULT_MAX_IMAGES = 32
# breaching's local_updates weight: at ATS's 1e-4 the attack stays near a grey image on FedAvg updates
# (benchmarks/RESULTS.md, "Update inversion against breaching's multi-step attack")
UPDATE_TV = 0.2
ENGINES = ("auto", "loop", "vmap")  # auto: vmap when there is more than one problem


@dataclass(frozen=True)
class UpdateOptions(StopOptions):
    """The stopping rule, the engine and the most images one update may hold."""

    max_images: int = option(DEFAULT_MAX_IMAGES, "most images one update may depend on (more: a failed cell)",
                             low=1, high=1_000_000)
    engine: str = option("auto", "loop: one problem at a time; vmap: batched; auto: vmap for several",
                         choices=ENGINES)
    tv: float = option(UPDATE_TV, "total-variation weight (breaching's local_updates setting); attack-tv >= 0 "
                       "replaces it", low=0)


def simulated_update(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, leak: UpdateLeak, create_graph: bool
) -> tuple[torch.Tensor, ...]:
    """theta_S - theta_0 after the leak's local SGD on (x, labels), in ``leak.parameter_names`` order.

    SGD as ``torch.optim.SGD`` computes it: d = g + weight_decay * theta; buf = d on the first
    step, else momentum * buf + d; theta -= lr * buf.
    """
    params = dict(model.named_parameters())
    theta: dict[str, torch.Tensor] = {n: params[n] for n in leak.parameter_names}
    start = dict(theta)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    momentum: dict[str, torch.Tensor] = {}
    batches = [torch.arange(i, min(i + leak.batch_size, len(x))) for i in range(0, len(x), leak.batch_size)]
    for step in range(leak.steps):
        index = batches[step % len(batches)]
        logits = functional_call(model, (theta | buffers), (x[index],))
        loss = F.cross_entropy(logits, labels[index])
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=create_graph)
        for (name, value), grad in zip(list(theta.items()), grads, strict=True):
            d = grad + leak.weight_decay * value if leak.weight_decay else grad
            if leak.momentum:
                d = momentum[name] * leak.momentum + d if name in momentum else d
                momentum[name] = d
            theta[name] = value - leak.lr * d
    return tuple(theta[n] - start[n] for n in leak.parameter_names)


def _cosine_distance(simulated: Sequence[torch.Tensor], observed: Sequence[torch.Tensor]) -> torch.Tensor:
    dot = sum((s * o).sum() for s, o in zip(simulated, observed, strict=True))
    norm_s = torch.stack([s.pow(2).sum() for s in simulated]).sum().sqrt()
    norm_o = torch.stack([o.pow(2).sum() for o in observed]).sum().sqrt()
    return 1 - dot / (norm_s * norm_o + 1e-12)


@dataclass(frozen=True)
class _Problem:
    """One start of one target: what to reconstruct, from which update."""

    target: int
    leak: UpdateLeak
    labels: torch.Tensor
    observed: tuple[torch.Tensor, ...]
    init: torch.Tensor

    @property
    def shape_key(self) -> tuple[object, ...]:
        """Problems with equal keys run the same simulation shape and can share one batched solve."""
        leak = self.leak
        return (tuple(self.init.shape), leak.steps, leak.batch_size, leak.lr, leak.momentum, leak.weight_decay)


def _vmap_objective(
    model: nn.Module, leak: UpdateLeak, tv: float
) -> Callable[[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor]:
    """objective(x, labels, observed) of one problem, written with torch.func for ``vmap``.

    ``model`` must have had its batch norms made stateless (``replace_all_batch_norm_modules_``):
    train-mode batch statistics are what the client's steps used; running statistics never
    change the simulated update.
    """
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    names = leak.parameter_names
    n = leak.num_images
    batches = [torch.arange(i, min(i + leak.batch_size, n)) for i in range(0, n, leak.batch_size)]

    def objective(x: torch.Tensor, labels: torch.Tensor, observed: tuple[torch.Tensor, ...]) -> torch.Tensor:
        theta = {k: params[k] for k in names}
        momentum: dict[str, torch.Tensor] = {}
        for step in range(leak.steps):
            index = batches[step % len(batches)]

            def batch_loss(th: dict[str, torch.Tensor], index: torch.Tensor = index) -> torch.Tensor:
                logits = functional_call(model, (params | th, buffers), (x[index],))
                return F.cross_entropy(logits, labels[index])

            grads = torch.func.grad(batch_loss)(theta)
            for name in names:
                d = grads[name] + leak.weight_decay * theta[name] if leak.weight_decay else grads[name]
                if leak.momentum:
                    d = momentum[name] * leak.momentum + d if name in momentum else d
                    momentum[name] = d
                theta[name] = theta[name] - leak.lr * d
        simulated = tuple(theta[k] - params[k] for k in names)
        return _cosine_distance(simulated, observed) + tv * total_variation(x.unsqueeze(0))[0]

    return objective


class UpdateInversion(Attack):
    """Reconstructs a FedAvg client's local data from its update (module docstring).

    Parameters
    ----------
    settings
        Iterations, restarts, lr, TV weight, device, progress; its options (:class:`UpdateOptions`):
        ``max-images`` caps the examples one update may hold (default 32; more is a failed cell
        naming the cap); ``engine``: ``loop`` (autograd, one problem at a time), ``vmap`` (problems
        of one shape batched with torch.func) or ``auto`` (vmap for more than one problem);
        ``patience``, ``tolerance``: the stopping rule (default off); ``tv``: the total-variation
        weight (default 0.2, breaching's; ``attack-tv`` >= 0 replaces it).
    """

    name: ClassVar[str] = "update-inversion"
    leak_kinds: ClassVar[tuple[str, ...]] = ("update", "aggregate")
    model_modes: ClassVar[tuple[str, ...]] = ("train",)
    optimises: ClassVar[bool] = True
    Options: ClassVar[type] = UpdateOptions
    knowledge: ClassVar[Knowledge] = Knowledge()

    def __init__(self, settings: AttackSettings) -> None:
        check_settings(settings)
        options = own_options(UpdateOptions, settings, self.name)
        check_tv(settings, options, self.name)
        self.settings, self.max_images, self.engine = settings, options.max_images, options.engine
        self.rule, self.tv = options.rule, tv_weight(settings, options)

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """``attack-tv`` and ``attack.update-inversion.tv`` are not both set."""
        return tv_errors(settings_for(config, cls.name).tv, options, cls.name)

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """Invert every target's update; problems of one shape share a batched solve (``vmap``).

        Returns
        -------
        list[Reconstruction]
            Per target: N images in pixel space [0,1] (in no particular order), the final
            objective ``loss``, the iterations run ``iterations_run``, the inferred labels when the
            protocol hid them, the engine.
        """
        s = self.settings
        device = torch.device(s.device)
        model = model.to(device).train()
        dtype = next(model.parameters()).dtype
        problems: list[_Problem] = []
        inferred: list[torch.Tensor | None] = []
        for t, target in enumerate(targets):
            leak = single_update(target.leak)  # a secure aggregate: the union's update
            if not isinstance(leak, UpdateLeak):
                raise TypeError(f"{self.name} consumes update or aggregate leaks, got {type(leak).__name__}")
            if leak.num_images > self.max_images:
                raise ValueError(f"the update depends on {leak.num_images} images; {self.name} reconstructs at most "
                                 f"{self.max_images} (attack.update-inversion.max-images; local-steps x batch-size or "
                                 "local-samples bound the images)")
            guess = None if leak.labels is not None else infer_labels(model, dataset, leak, seed=target.seed).cpu()
            inferred.append(guess)
            known = leak.labels if leak.labels is not None else guess
            assert known is not None  # the leak's labels, or those inferred above
            labels = known.to(device)
            observed = tuple(d.to(device, dtype) for d in leak.deltas)
            generator = torch.Generator().manual_seed(target.seed)
            for _ in range(s.restarts):
                init = torch.randn((leak.num_images, *dataset.shape), generator=generator, dtype=dtype).to(device)
                problems.append(_Problem(t, leak, labels, observed, init))
        solved: dict[int, tuple[torch.Tensor, float, int]] = {}
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, problem in enumerate(problems):
            groups.setdefault(problem.shape_key, []).append(i)
        engine = "vmap" if self.engine == "vmap" or (self.engine == "auto" and len(problems) > 1) else "loop"
        with reused_heap():  # the batched per-problem gradients: no page faults per iteration
            for index in groups.values():
                group = [problems[i] for i in index]
                results = self._solve_vmap(model, dataset, group) if engine == "vmap" else [
                    self._solve_loop(model, dataset, p) for p in group]
                solved.update(zip(index, results, strict=True))
        out = []
        for t in range(len(targets)):
            x, loss, run = min((solved[i] for i, p in enumerate(problems) if p.target == t), key=lambda r: r[1])
            out.append(Reconstruction(images=dataset.denormalize(x).cpu(), labels=inferred[t],
                                      fields={"loss": loss, "iterations_run": float(run)}, engine=engine))
        return out

    def _optimise(self, x: torch.Tensor, dataset: DatasetSpec, problems: int,
                  gradient: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """IG's signed Adam on ``x`` with its lr schedule, the stopping rule and the [0,1] box.

        ``x`` holds ``problems`` problems along dimension 0 (or is one problem's images,
        ``problems=1``); ``gradient(x)`` gives (d objective / d x, objectives). Returns the last
        iterate and the iterations each problem ran (``problems``,).
        """
        s = self.settings
        x = x.clone().requires_grad_(True)
        low, high = box_bounds(dataset, x)
        adam = ScheduledAdam([x], s.lr, s.iterations, self.rule, problems)
        for iteration in range(s.iterations):
            grad, loss = gradient(x)
            adam.observe(iteration, loss)
            if adam.finished:
                break
            x.grad = grad.sign()
            adam.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
            if s.progress and (iteration + 1) % s.progress == 0:
                print(f"{self.name}: iteration {iteration + 1}/{s.iterations} loss {float(loss.mean()):.4f}",
                      flush=True)
        return x.detach(), adam.iterations_run

    def _solve_loop(self, model: nn.Module, dataset: DatasetSpec,
                    problem: _Problem) -> tuple[torch.Tensor, float, int]:
        """One problem with autograd (the reference); returns the last iterate, its objective and
        the iterations run."""
        leak = problem.leak
        for p in model.parameters():
            p.requires_grad_(True)

        def gradient(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            loss = _cosine_distance(simulated_update(model, x, problem.labels, leak, True), problem.observed)
            loss = loss + self.tv * total_variation(x.unsqueeze(0))[0]
            (grad,) = torch.autograd.grad(loss, [x])
            return grad, loss.detach()

        x, run = self._optimise(problem.init, dataset, 1, gradient)
        final = _cosine_distance(simulated_update(model, x, problem.labels, leak, False), problem.observed)
        return x, float(final.detach() + self.tv * total_variation(x.unsqueeze(0))[0]), int(run[0])

    def _solve_vmap(self, model: nn.Module, dataset: DatasetSpec,
                    group: list[_Problem]) -> list[tuple[torch.Tensor, float, int]]:
        """Problems of one shape in one optimisation: per-problem gradients by ``vmap``.

        Adam, its schedule, the stopping rule, the sign and the box act problem by problem, so
        solving the stacked images jointly equals solving each problem alone (tested in float64).
        """
        stateless = copy.deepcopy(model)
        torch.func.replace_all_batch_norm_modules_(stateless)
        objective = _vmap_objective(stateless, group[0].leak, self.tv)
        step = torch.func.vmap(torch.func.grad_and_value(objective))
        labels = torch.stack([p.labels for p in group])
        observed = tuple(torch.stack(parts) for parts in zip(*(p.observed for p in group), strict=True))
        x, runs = self._optimise(torch.stack([p.init for p in group]), dataset, len(group),
                                 lambda x: step(x.detach(), labels, observed))
        final = torch.func.vmap(objective)(x, labels, observed)
        return [(x[j], float(final[j]), int(runs[j])) for j in range(len(group))]


ATTACKS.add(UpdateInversion.name, UpdateInversion)
