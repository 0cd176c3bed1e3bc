"""FedAvg update inversion: simulate the client's local SGD and match the observed update.

Dimitrov, Balunovic, Konstantinov, Vechev, "Data Leakage in Federated Averaging", TMLR 2022;
breaching's multi-step setting (Geiping et al.). The attacker knows the broadcast model and the
protocol's local SGD (lr, momentum, weight decay, batch size, number of steps and examples, as
:class:`~fedpriv.leaks.UpdateLeak` carries them) and optimises N images x so that simulating
those steps from the broadcast weights reproduces the observed update:

    objective = 1 - cos(theta_S(x) - theta_0, delta) + tv * TV(x)

with theta_S(x) the weights after S simulated SGD steps (differentiated through all of them,
``create_graph``), batch norm in train mode (batch statistics, as the client trained), the
global cosine over all trainable tensors, signed Adam with IG's lr schedule and the [0,1] box.
The client's batch order is private: the simulation cuts x into consecutive batches in the same
order every epoch, so the recovered images come in no particular order and are scored after
matching. Labels are the revealed ones or :mod:`fedpriv.attacks.label_inference`'s estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedpriv.attacks.base import ATTACKS, Attack, AttackSettings, AttackTarget, Knowledge, Reconstruction, check_settings
from fedpriv.attacks.gradient_matching import lr_milestones, total_variation
from fedpriv.attacks.inverting_gradients import box_bounds
from fedpriv.attacks.label_inference import infer_labels
from fedpriv.data.specs import DatasetSpec
from fedpriv.errors import ConfigError
from fedpriv.leaks import UpdateLeak

DEFAULT_MAX_IMAGES = 32


def simulated_update(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, leak: UpdateLeak, create_graph: bool
) -> tuple[torch.Tensor, ...]:
    """theta_S - theta_0 after the leak's local SGD on (x, labels), in ``leak.parameter_names`` order.

    SGD as ``torch.optim.SGD`` computes it: d = g + weight_decay * theta; buf = d on the first
    step, else momentum * buf + d; theta -= lr * buf.
    """
    params = dict(model.named_parameters())
    theta = {n: params[n] for n in leak.parameter_names}
    start = dict(theta)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    momentum: dict[str, torch.Tensor] = {}
    batches = [torch.arange(i, min(i + leak.batch_size, len(x))) for i in range(0, len(x), leak.batch_size)]
    for step in range(leak.steps):
        index = batches[step % len(batches)]
        logits = functional_call(model, (theta | buffers), (x[index],))
        loss = F.cross_entropy(logits, labels[index])
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=create_graph)
        for (name, value), grad in zip(list(theta.items()), grads):
            d = grad + leak.weight_decay * value if leak.weight_decay else grad
            if leak.momentum:
                d = momentum[name] * leak.momentum + d if name in momentum else d
                momentum[name] = d
            theta[name] = value - leak.lr * d
    return tuple(theta[n] - start[n] for n in leak.parameter_names)


def _cosine_distance(simulated: Sequence[torch.Tensor], observed: Sequence[torch.Tensor]) -> torch.Tensor:
    dot = sum((s * o).sum() for s, o in zip(simulated, observed))
    norm_s = torch.sqrt(sum(s.pow(2).sum() for s in simulated))
    norm_o = torch.sqrt(sum(o.pow(2).sum() for o in observed))
    return 1 - dot / (norm_s * norm_o + 1e-12)


class UpdateInversion(Attack):
    """Reconstructs a FedAvg client's local data from its update (module docstring).

    Parameters
    ----------
    settings
        Iterations, restarts, lr, TV weight, device, progress; ``extra["max-images"]`` caps the
        examples one update may hold (default 32; more is a failed cell naming the cap).
    """

    name: ClassVar[str] = "update-inversion"
    leak_kinds: ClassVar[tuple[str, ...]] = ("update",)
    model_modes: ClassVar[tuple[str, ...]] = ("train",)
    optimises: ClassVar[bool] = True
    options: ClassVar[tuple[str, ...]] = ("max-images",)
    knowledge: ClassVar[Knowledge] = Knowledge()

    def __init__(self, settings: AttackSettings) -> None:
        check_settings(settings)
        text = settings.extra.get("max-images", str(DEFAULT_MAX_IMAGES))
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"attack option max-images must be an integer >= 1, got {text!r}")
        self.settings, self.max_images = settings, int(text)

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """Invert each target's update, one target at a time.

        Returns
        -------
        list[Reconstruction]
            Per target: N images in pixel space [0,1] (in no particular order), the final
            objective ``loss``, and the inferred labels when the protocol hid them.
        """
        return [self._invert(model, dataset, target) for target in targets]

    def _invert(self, model: nn.Module, dataset: DatasetSpec, target: AttackTarget) -> Reconstruction:
        leak = target.leak
        if not isinstance(leak, UpdateLeak):
            raise TypeError(f"{self.name} consumes update leaks, got {type(leak).__name__}")
        if leak.num_examples > self.max_images:
            raise ValueError(f"the update holds {leak.num_examples} examples; {self.name} reconstructs at most "
                             f"{self.max_images} (attack option max-images; local-samples caps a client's data)")
        s = self.settings
        device = torch.device(s.device)
        model = model.to(device).train()
        for p in model.parameters():
            p.requires_grad_(True)
        inferred = None if leak.labels is not None else infer_labels(model, dataset, leak, seed=target.seed).cpu()
        labels = (leak.labels if leak.labels is not None else inferred).to(device)
        observed = tuple(d.to(device) for d in leak.deltas)
        generator = torch.Generator().manual_seed(target.seed)
        best: tuple[float, torch.Tensor] | None = None
        for _ in range(s.restarts):
            x = torch.randn((leak.num_examples, *dataset.shape), generator=generator).to(device).requires_grad_(True)
            low, high = box_bounds(dataset, x)
            optimizer = torch.optim.Adam([x], lr=s.lr)
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, lr_milestones(s.iterations), gamma=0.1)
            for iteration in range(s.iterations):
                optimizer.zero_grad()
                loss = _cosine_distance(simulated_update(model, x, labels, leak, True), observed)
                loss = loss + s.tv * total_variation(x.unsqueeze(0))[0]
                (grad,) = torch.autograd.grad(loss, [x])
                x.grad = grad.sign()
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, high), low))
                if s.progress and (iteration + 1) % s.progress == 0:
                    print(f"{self.name}: iteration {iteration + 1}/{s.iterations} loss {float(loss):.4f}", flush=True)
            final = float(_cosine_distance(simulated_update(model, x.detach(), labels, leak, False), observed))
            if best is None or final < best[0]:
                best = (final, x.detach())
        assert best is not None
        return Reconstruction(images=dataset.denormalize(best[1]).cpu(), labels=inferred, fields={"loss": best[0]})


ATTACKS.add(UpdateInversion.name, UpdateInversion)
