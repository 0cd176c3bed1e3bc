"""Training of the learned attacks' decoders (inversion networks, U-Nets) with held-out model selection."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FitReport:
    """How one decoder training went: the held-out loss of the kept epoch, which epoch, and the speed."""

    val_mse: float
    best_epoch: int
    images_per_second: float


def fit_decoder(
    decoder: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, epochs: int, batch: int,
    optimizer: torch.optim.Optimizer, val_fraction: float, generator: torch.Generator, loss: Loss = F.mse_loss,
) -> FitReport:
    """Train ``decoder`` on (input, target) pairs and keep the epoch with the lowest held-out loss.

    Model selection uses a held-out part of the attacker's own pairs, never the victims' data.

    Parameters
    ----------
    decoder
        The network, trained in place (its best state is loaded at the end, in eval mode).
    inputs, targets
        N inputs (prediction vectors, features) and their N targets (images in [0,1]).
    epochs, batch
        Passes over the fitting part and the batch size.
    optimizer
        The optimiser over ``decoder``'s parameters.
    val_fraction
        Share of the pairs held out for model selection (at least one pair).
    generator
        Seeds the held-out split and the shuffling.
    loss
        loss(output, target), MSE by default.
    """
    device = next(decoder.parameters()).device
    order = torch.randperm(len(targets), generator=generator)
    held = max(1, round(val_fraction * len(targets)))
    val, fit = order[:held], order[held:]
    best = (float("inf"), 0, copy.deepcopy(decoder.state_dict()))
    start, seen = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        decoder.train()
        shuffled = fit[torch.randperm(len(fit), generator=generator)]
        for i in range(0, len(shuffled), batch):
            index = shuffled[i : i + batch]
            if len(index) < 2:  # batch norm needs two samples in train mode
                continue
            value = loss(decoder(inputs[index].to(device)), targets[index].to(device))
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            seen += len(index)
        decoder.eval()
        with torch.no_grad():
            val_loss = float(sum(float(loss(decoder(inputs[part].to(device)), targets[part].to(device))) * len(part)
                                 for part in val.split(256)) / len(val))
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(decoder.state_dict()))
    decoder.load_state_dict(best[2])
    decoder.eval()
    return FitReport(best[0], best[1], seen / max(time.perf_counter() - start, 1e-9))
