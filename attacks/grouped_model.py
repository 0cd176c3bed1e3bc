"""A model with one parameter copy per problem, as grouped convolutions: P problems in one pass.

Per-problem weight gradients then come out of one backward pass (the ``grouped`` engine of
:mod:`fedpriv.attacks.gradient_matching`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class _GroupedConv(torch.autograd.Function):
    """conv2d of P problems with per-problem weight copies, cheap to differentiate twice.

    The copies are equal in value (each problem's copy of one model), so the forward and the input
    gradient are ordinary convolutions with the shared weight over all k x P images (the layout
    (k, P * C, H, W) is a view of (k * P, C, H, W)): the CPU's ungrouped kernels, 1.2-4x faster
    than grouped ones at 128-256 channels. Only the weight gradient, the one per-problem term, is
    grouped. Input and weight gradients are separate differentiable ops (a transposed convolution,
    a weight-only ``convolution_backward``), so the second derivative never reaches aten's loop over
    groups in ``_convolution_double_backward``; the input gradient's own weight derivative is left
    out (only derivatives with respect to the inputs pass through it). Weight gradients are only
    formed while a graph is built.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, groups, problems):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups, problems)
        shared = weight[: len(weight) // problems]
        y = F.conv2d(x.reshape(len(x) * problems, -1, *x.shape[2:]), shared, None, stride, padding, dilation, groups)
        return y.reshape(len(x), -1, *y.shape[2:])

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[no-untyped-def]
        x, weight = ctx.saved_tensors
        dtypes = x.dtype, weight.dtype
        x, weight = x.to(grad_out.dtype), weight.to(grad_out.dtype)  # bf16 under autocast
        stride, padding, dilation, groups, problems = ctx.conf
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            extra = [x.shape[i + 2] - ((grad_out.shape[i + 2] - 1) * stride[i] - 2 * padding[i]
                                       + dilation[i] * (weight.shape[i + 2] - 1) + 1) for i in range(2)]
            shared = weight[: len(weight) // problems].detach()
            per_image = grad_out.reshape(len(x) * problems, -1, *grad_out.shape[2:])
            grad_x = F.conv_transpose2d(per_image, shared, None, stride, padding, extra, groups, dilation)
            grad_x = grad_x.reshape(x.shape)
        if ctx.needs_input_grad[1] and torch.is_grad_enabled():
            grad_w = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, stride, padding, dilation, False, [0, 0], groups * problems,
                [False, True, False]
            )[1]
        grad_x = None if grad_x is None else grad_x.to(dtypes[0])
        grad_w = None if grad_w is None else grad_w.to(dtypes[1])
        return grad_x, grad_w, None, None, None, None, None


class _Copies(nn.Module):
    """A Conv2d, eval BatchNorm2d or Linear with one parameter copy per problem (channel blocks)."""

    def __init__(self, module: nn.Module, problems: int) -> None:
        super().__init__()
        self.module, self.problems = module, problems
        self.copies = {
            name: p.detach().repeat(problems, *[1] * (p.dim() - 1)).requires_grad_(p.requires_grad)
            for name, p in module.named_parameters(recurse=False)
        }
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            scale = torch.rsqrt(module.running_var + module.eps)
            self.scale = scale.repeat(problems)[:, None, None]
            self.shift = (-module.running_mean * scale).repeat(problems)[:, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, n = self.module, self.problems
        c = {name: t if t.dim() > 1 else t[:, None, None] for name, t in self.copies.items()}
        if isinstance(m, nn.Conv2d):
            y: torch.Tensor = _GroupedConv.apply(x, c["weight"], m.stride, m.padding, m.dilation, m.groups, n)
            return y + c["bias"] if "bias" in c else y
        if isinstance(m, nn.BatchNorm2d):  # affine (covered BatchNorm2d has parameters)
            return torch.addcmul(c["bias"], torch.addcmul(self.shift, x, self.scale), c["weight"])
        weight = self.copies["weight"].view(n, -1, x.shape[1] // n)  # Linear on (k, P * features)
        y = torch.bmm(x.view(len(x), n, -1).transpose(0, 1), weight.transpose(1, 2))
        y = y + self.copies["bias"].view(n, 1, -1) if "bias" in c else y
        return y.transpose(0, 1).reshape(len(x), -1)


def _covered(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    if isinstance(module, nn.BatchNorm2d):
        return not module.training and module.running_mean is not None and module.running_var is not None
    return isinstance(module, nn.Linear)


def grouped_copy(model: nn.Module, problems: int) -> tuple[nn.Module, list[torch.Tensor]] | None:
    """The model with :class:`_Copies` swapped in, and the trainable copies; ``None`` if not covered."""
    owners: dict[int, torch.Tensor] = {}

    def rebuilt(module: nn.Module) -> nn.Module | None:
        if any(True for _ in module.parameters(recurse=False)):
            if not _covered(module):
                return None
            replica = _Copies(module, problems)
            owners.update({id(p): replica.copies[n] for n, p in module.named_parameters(recurse=False)})
            return replica
        clone = copy.copy(module)
        clone._modules = {}
        for name, child in module._modules.items():
            new = None if child is None else rebuilt(child)
            if child is not None and new is None:
                return None
            clone._modules[name] = new
        return clone

    replica = rebuilt(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if replica is None or any(id(p) not in owners for p in trainable):
        return None
    return replica, [owners[id(p)] for p in trainable]
