"""``update-alignment``: the server's white-box attack on the replies it receives.

A client's reply moves the model against the gradient of its training loss, and that gradient
is a sum of its samples' gradients; a sample the client trained on therefore has a loss
gradient (at the broadcast model) that points more along the reply's descent direction than a
sample it never saw (the gradient-alignment test of Nasr et al.'s white-box setting and of
Maddock et al.'s CANIFE canaries). The score of a candidate is the largest cosine between its
gradient and any reply's descent direction of the round: the server does not know which client
holds it. Under ``secagg`` the server holds one direction, the aggregate's, to which every
client's samples contribute a K-th.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fedpriv.membership.base import MEMBERSHIP_ATTACKS, SERVER, Observation
from fedpriv.options import NoOptions

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.loading import LabeledImages
    from fedpriv.data.specs import DatasetSpec


def gradient_alignment(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                       directions: Sequence[dict[str, torch.Tensor]], batch_size: int = 64) -> torch.Tensor:
    """(n, len(directions)) cosine between each sample's loss gradient at ``model`` and each direction.

    The gradient is of the cross-entropy of the normalised ``inputs`` with ``labels`` (eval mode:
    batch norm with its running statistics), over the parameters the directions name (all share
    the names of the first); ``batch_size`` samples share one vmap call.
    """
    model.eval()
    names = list(directions[0])
    parameters = dict(model.named_parameters())
    varied = {name: parameters[name].detach() for name in names}
    fixed = {name: p.detach() for name, p in parameters.items() if name not in varied}
    buffers = dict(model.named_buffers())
    device = next(model.parameters()).device

    def loss(weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (weights, fixed, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    flat = torch.stack([torch.cat([d[name].reshape(-1).double() for name in names]) for d in directions]).to(device)
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)
    cosines = []
    for start in range(0, len(inputs), batch_size):
        gradients = per_sample(varied, inputs[start:start + batch_size].to(device),
                               labels[start:start + batch_size].to(device))
        rows = torch.cat([gradients[name].reshape(len(gradients[name]), -1).double() for name in names], dim=1)
        cosines.append((rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-30)) @ unit.T)
    return torch.cat(cosines).cpu()


class UpdateAlignment:
    """Scores each candidate by its gradient's largest cosine with a reply's descent direction."""

    name: ClassVar[str] = "update-alignment"
    Options: ClassVar[type] = NoOptions
    observer: ClassVar[str] = SERVER

    def __init__(self, options: Any, seed: int) -> None:
        self.options = options  # deterministic: the seed is not needed

    @classmethod
    def fit_errors(cls, config: RunConfig, options: Any) -> list[str]:
        """Fits every run whose protocol sends parameters (the server-observer check, in validation)."""
        return []

    def prepare(self, config: RunConfig, dataset: DatasetSpec, aux: LabeledImages | None) -> None:
        """Nothing to prepare."""

    def reply_scores(self, observation: Observation, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """cos(gradient of the candidate, each reply's descent direction): (n, replies)."""
        return gradient_alignment(observation.model, inputs, labels, observation.directions)

    def pool(self, reply_scores: torch.Tensor) -> torch.Tensor:
        """The largest cosine over the round's replies."""
        return reply_scores.max(dim=1).values


MEMBERSHIP_ATTACKS.add(UpdateAlignment.name, UpdateAlignment)
