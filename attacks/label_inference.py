"""Label inference from a gradient or an update: iDLG for one image, bias-gradient counts for batches.

- One image: iDLG (Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020).
  With softmax cross-entropy the last layer's bias gradient is p - onehot(y): its only negative
  entry is the label.
- A batch of n: LLG (Wainakh et al., "User-Level Label Leakage from Gradients in Federated
  Learning", PETS 2022) reads label counts off the last layer's gradient, with the model's
  predictions on dummy (or auxiliary) inputs standing in for the unknown softmax outputs (their
  LLG* variant). For the mean cross-entropy the bias gradient is exactly b = mean_i p_i - counts / n,
  so counts = n (p_bar - b), where p_bar is estimated by the model's mean softmax on the
  server's auxiliary images when it has some, else on N(0,1) inputs in normalised space. The
  counts are rounded by largest remainder so that they sum to n. What is sent may be a scaled
  gradient (clipping, a server learning rate): for the classes absent from the batch b = p_bar,
  so the scale is estimated as sum(b) / sum(p_bar) over the positive entries of b (LLG's
  "impact" read off the gradient itself) and divided out first.
- A FedAvg update: the bias moved by -lr * sum over steps of (momentum-amplified) batch-mean
  bias gradients, so b is estimated as -delta_b / (lr * steps * f), with f the mean momentum
  factor (1 - momentum^k) / (1 - momentum) over the steps; counts = n (p_bar - b) with n the
  client's examples. This ignores how the model and p drift during local training (an
  approximation whose error ``label_accuracy`` measures).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.attacks.base import (
    ATTACKS,
    Attack,
    AttackSettings,
    AttackTarget,
    AuxiliaryData,
    Knowledge,
    NoOptions,
    Reconstruction,
)
from fedpriv.data.specs import DatasetSpec
from fedpriv.errors import ConfigError
from fedpriv.leaks import GradientLeak, Leak, UpdateLeak, parameter_change, single_update

DUMMY_SAMPLES = 64


def bias_gradient(leak: Leak) -> tuple[torch.Tensor, int]:
    """The (estimated) mean bias gradient of the last layer and the number of samples behind it."""
    tensors, n = parameter_change(leak)
    biases = [t for name, t in tensors.items() if name.endswith("bias") and t.dim() == 1]
    if not biases:
        raise ValueError("label inference needs the last layer's bias; this model has none")
    bias = biases[-1].double()
    if isinstance(leak, UpdateLeak):
        k = torch.arange(1, leak.steps + 1, dtype=torch.float64)
        factor = 1.0 if leak.momentum == 0 else float(((1 - leak.momentum**k) / (1 - leak.momentum)).mean())
        bias = -bias / (leak.lr * leak.steps * factor)
    return bias, n


@torch.no_grad()
def mean_prediction(model: nn.Module, dataset: DatasetSpec, mode: str, aux: AuxiliaryData | None,
                    generator: torch.Generator) -> torch.Tensor:
    """The model's mean softmax on auxiliary images, or on N(0,1) inputs when there are none."""
    device = next(model.parameters()).device
    if aux is not None and len(aux.labels):
        inputs = dataset.normalize(aux.images[:DUMMY_SAMPLES].float() / 255.0)
    else:
        inputs = torch.randn((DUMMY_SAMPLES, *dataset.shape), generator=generator)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train(mode == "train")
    probabilities = F.softmax(model(inputs.to(device)).double(), dim=1).mean(0).cpu()
    model.load_state_dict(buffers)
    model.train(was_training)
    return probabilities


def counts_to_labels(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Non-negative real counts to a sorted multiset of n labels (largest remainder)."""
    counts = counts.clamp(min=0)
    counts = counts * (n / counts.sum()) if counts.sum() > 0 else torch.full_like(counts, n / len(counts))
    whole = counts.floor().long()
    missing = n - int(whole.sum())
    if missing > 0:
        whole[torch.argsort(counts - whole, descending=True)[:missing]] += 1
    return torch.repeat_interleave(torch.arange(len(counts)), whole)


def infer_labels(model: nn.Module, dataset: DatasetSpec, leak: Leak, aux: AuxiliaryData | None = None,
                 seed: int = 0) -> torch.Tensor:
    """The sorted label multiset behind a gradient or update leak (module docstring).

    Parameters
    ----------
    model
        The broadcast model (for the prediction estimate of batches).
    dataset
        Input shape and normalisation.
    leak
        A :class:`GradientLeak`, an :class:`UpdateLeak`, or an aggregate (the label multiset of the
        union of its clients' images, read as the union's update).
    aux
        The server's auxiliary images, if any.
    seed
        Seeds the dummy inputs.
    """
    leak = single_update(leak)
    bias, n = bias_gradient(leak)
    if n == 1 and isinstance(leak, GradientLeak):
        return torch.argmin(bias).reshape(1)
    mode = "train" if isinstance(leak, UpdateLeak) else leak.model_mode if isinstance(leak, GradientLeak) else "eval"
    p_bar = mean_prediction(model, dataset, mode, aux, torch.Generator().manual_seed(seed))
    absent = bias > 0
    scale = float(bias[absent].sum() / p_bar[absent].sum()) if absent.any() else 1.0
    return counts_to_labels(n * (p_bar - bias / scale), n)


class LabelInference(Attack):
    """Infers each attacked client's labels; uses the auxiliary split for p_bar when there is one."""

    name: ClassVar[str] = "label-inference"
    leak_kinds: ClassVar[tuple[str, ...]] = ("gradient", "update", "aggregate")
    model_modes: ClassVar[tuple[str, ...]] = ("eval", "train")
    optimises: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions
    knowledge: ClassVar[Knowledge] = Knowledge(aux="server")

    def __init__(self, settings: AttackSettings) -> None:
        try:
            self.device = torch.device(settings.device)
        except RuntimeError:
            raise ConfigError(f"attack-device {settings.device!r} is not a torch device") from None
        self.aux: AuxiliaryData | None = None

    def prepare(self, dataset: DatasetSpec, aux: AuxiliaryData | None) -> None:
        """Keep the auxiliary split (may be ``None``: then dummy inputs stand in)."""
        self.aux = aux

    def reconstruct(
        self, model: nn.Module, dataset: DatasetSpec, targets: Sequence[AttackTarget]
    ) -> list[Reconstruction]:
        """Infer the labels behind every target's leak."""
        model = model.to(self.device)
        return [Reconstruction(labels=infer_labels(model, dataset, t.leak, self.aux, t.seed)) for t in targets]


ATTACKS.add(LabelInference.name, LabelInference)
