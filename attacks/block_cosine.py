"""1 - global cosine per problem of parameter-gradient blocks with targets: the grouped engine's objective."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from functools import reduce

import torch

ROW_DOT_LOOP = 65536  # on CPU, rows at least this long are dotted one by one (see _row_dots)


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The dot product of each row of a (P, n) with the same row of b.

    ``vecdot`` writes the whole elementwise product and then sums it. On CPU, one BLAS ``dot``
    per row writes nothing. It is faster for long rows: 2.5 vs 5.3 ms for (16, 589,824) on our
    CPU, 0.50 vs 0.87 ms for (16, 147,456), and slower below ~40,000 (benchmarks/RESULTS.md).
    """
    if a.device.type == "cpu" and a.shape[1] >= ROW_DOT_LOOP and a.dtype == b.dtype:
        return torch.stack([torch.dot(x, y) for x, y in zip(a, b, strict=True)])
    return torch.linalg.vecdot(a, b)


class _BlockCosine(torch.autograd.Function):
    """1 - global cosine per problem of gradient blocks (P, n_i) with targets, and its first derivative.

    Plain autograd on the concatenated (P, N) gradients copies them once (``cat``) and runs ``pow``'s
    generic kernel forward and backward: at P = 16 on ResNet20-4 (N = 4.3M, 275 MB per pass) that
    was half of a step. Here the forward is a row-wise dot and a norm per block (neither writes a
    product) and the backward one ``t * a + g * b`` per block (a product and an in-place
    ``addcmul_``). Only the first derivative exists (the objective's gradient with respect to the
    parameter gradients; the second never is needed).
    """

    @staticmethod
    def forward(ctx, target_norm, blocks, *tensors):  # type: ignore[no-untyped-def]
        grads, targets = tensors[:blocks], tensors[blocks:]
        dot = reduce(operator.add, [_row_dots(g, t) for g, t in zip(grads, targets, strict=True)])
        squared = reduce(operator.add, [torch.linalg.vector_norm(g, dim=1).square() for g in grads])
        product = squared.sqrt() * target_norm
        denominator = product.clamp_min(1e-8)
        ctx.save_for_backward(dot, squared, denominator, product > 1e-8, *grads, *targets)
        ctx.blocks = blocks
        return 1 - dot / denominator

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):  # type: ignore[no-untyped-def]
        dot, squared, denominator, unclamped, *tensors = ctx.saved_tensors
        grads, targets = tensors[:ctx.blocks], tensors[ctx.blocks:]
        along_target = (-grad_loss / denominator)[:, None]
        along_grad = torch.where(unclamped, grad_loss * dot / (denominator * squared), 0)[:, None]
        out = [torch.mul(t, along_target).addcmul_(g, along_grad) for g, t in zip(grads, targets, strict=True)]
        return None, None, *out, *[None] * len(targets)


def block_cosine_loss(grads: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                      target_norm: torch.Tensor) -> torch.Tensor:
    """1 - global cosine per problem of parameter gradients (P, ...) with targets (P, n_i) of norms (P,).

    Differentiable once (with respect to ``grads``), which is all the matching objective needs.
    """
    return _BlockCosine.apply(target_norm, len(grads), *[g.flatten(1) for g in grads], *targets)
