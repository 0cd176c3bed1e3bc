"""Numerical precision of gradient-matching attacks: PyTorch's default, strict fp32 or bf16."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fedpriv.errors import ConfigError

PRECISIONS = ("default", "strict-fp32", "bf16")


def check_precision(precision: str) -> None:
    """Reject an unknown precision name, listing the valid ones."""
    if precision not in PRECISIONS:
        raise ConfigError(f"attack-precision {precision!r} is unknown; valid: {', '.join(PRECISIONS)}")


@contextmanager
def precision_scope(precision: str, device: torch.device) -> Iterator[None]:
    """Run the enclosed attack computation at ``precision`` on ``device``.

    Parameters
    ----------
    precision
        ``default``: PyTorch's settings as they are (on NVIDIA GPUs cuDNN convolutions already
        run in TF32, ``torch.backends.cudnn.allow_tf32``); ``strict-fp32``: TF32 off for cuDNN
        and cuBLAS for the duration (on a CPU this is the default); ``bf16``: autocast to
        bfloat16 (convolutions and matrix products in bf16, reductions and the optimiser in fp32).
    device
        The attack's device; autocast is set for its type.
    """
    check_precision(precision)
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    if precision == "default":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
