"""Class fishing: one class's gradient out of any batch (after Wen et al., ICML 2022, "Fishing for User Data").

The server rewrites the model's final linear layer before it broadcasts it: every row but the
target class's is set to zero and every other class's bias to ``boost`` (the target's row and bias
are kept). An image of another class then meets logits that are all ``boost`` but the target's,
so its probability of the target class is about exp(target logit - boost), and its gradient
reaches neither the target row nor any layer below the head (the other rows are zero). An image
of the target class keeps a full gradient. The gradient of a whole batch below the head, and in
the target row, is therefore that of its target-class images alone: one image's gradient out of
any batch, and out of a secure aggregate of many clients when one image of the class is in it.
(The paper's construction differs in its details; this is the same principle, stated here.)

:func:`target_victim` is what the attacker matches: the fished model seen from one image of the
target class, whose head has two logits, the target's and the log-sum-exp of the others
(constant, since their rows are zero), so its gradient below the head and in the target row is
the fished model's, with no parameter that other images move.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def final_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` of ``model`` (module order) and its name.

    Raises
    ------
    ValueError
        If the model has no linear layer.
    """
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no linear layer to fish with")
    return found[-1]


def fish(layer: nn.Linear, target: int, boost: float) -> None:
    """Rewrite ``layer`` in place: zero every row but ``target``'s, every other bias ``boost``."""
    if layer.bias is None:
        raise ValueError("class fishing needs a final layer with a bias")
    with torch.no_grad():
        row, bias = layer.weight[target].clone(), layer.bias[target].clone()
        layer.weight.zero_()
        layer.weight[target] = row
        layer.bias.fill_(boost)
        layer.bias[target] = bias


def fished_class(layer: nn.Linear) -> int | None:
    """The class a fished layer keeps (its only non-zero row), or ``None`` if it is not fished that way."""
    nonzero = (layer.weight.detach() != 0).any(dim=1).nonzero().flatten()
    return int(nonzero[0]) if len(nonzero) == 1 and layer.out_features > 2 else None


class TargetHead(nn.Module):
    """Two logits: the target class's (``weight``, ``bias``: one row) and the constant ``others``."""

    others: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, others: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.register_buffer("others", torch.tensor(float(others)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(n, 2): the target's logit, then the others' log-sum-exp."""
        target = features @ self.weight.T + self.bias
        return torch.cat([target, self.others.to(target.dtype).expand(len(features), 1)], dim=1)


def target_victim(model: nn.Module) -> tuple[nn.Module, str, int]:
    """A copy of the fished ``model`` whose final layer is the :class:`TargetHead` of its target class.

    Returns the victim (label 0 is the target class), the final layer's name and the target class.

    Raises
    ------
    ValueError
        If the model's final layer is not fished (more or fewer than one non-zero row).
    """
    victim = copy.deepcopy(model)
    name, layer = final_linear(victim)
    target = fished_class(layer)
    if target is None or layer.bias is None:
        raise ValueError(f"the final layer {name} is not fished (it keeps more or fewer than one class's row)")
    others = torch.cat([layer.bias[:target], layer.bias[target + 1 :]]).detach().double().logsumexp(0)
    head = TargetHead(layer.weight[target : target + 1], layer.bias[target : target + 1], float(others))
    parent = victim.get_submodule(name.rpartition(".")[0]) if "." in name else victim
    setattr(parent, name.rpartition(".")[2], head)
    return victim, name, target
