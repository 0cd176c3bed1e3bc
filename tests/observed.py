"""A shared test fixture: one attacked client's observation (a one-image gradient of a smooth image)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedpriv.data.specs import resolve_spec
from fedpriv.leaks import GradientLeak, GroundTruth
from fedpriv.models import build_model
from fedpriv.round_attacks import ObservedClient

SPEC = resolve_spec("cifar100")


def victim(seed: int = 0) -> torch.nn.Module:
    """The ConvNet (100 classes) whose gradient leaks, seeded."""
    torch.manual_seed(seed)
    return build_model("convnet", 100).eval()


def observed_client(pid: int, attacks: tuple[str, ...], seed: int = 0) -> ObservedClient:
    """Client ``pid``'s leak (label 3, undefended) at ``victim(seed)``, with its truth."""
    model = victim(seed)
    x = F.interpolate(torch.rand(1, 3, 8, 8), size=32, mode="bilinear")
    y = torch.tensor([3])
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(F.cross_entropy(model(SPEC.normalize(x)), y), list(model.parameters()))
    leak = GradientLeak(tuple(grads), tuple(names), 1, "eval", y)
    return ObservedClient(pid, leak, GroundTruth(x, x, y, "none"), attacks, "none")
