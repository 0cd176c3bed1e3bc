"""Typed observations (leaks) the server derives from client replies, and evaluation-only truth.

A leak is exactly what the server receives under the declared protocol (see
:mod:`fedpriv.protocols`), plus metadata the server really has. Ground truth travels apart
(:mod:`fedpriv.wire`) and only reaches the scorer. Each protocol's leak class has its own ``kind``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

from fedpriv.outputs import check_kinds


class Leak(Protocol):
    """Anything the server observes from one client in one round."""

    kind: ClassVar[str]

    @property
    def protocol(self) -> str:
        """The protocol that sent it (read-only: the leaks are frozen dataclasses)."""
        ...


@dataclass(frozen=True)
class GradientLeak:
    """The gradient of one client batch at the broadcast model, as a FedSGD client sends it.

    Attributes
    ----------
    gradients
        One tensor per trainable parameter, in ``model.named_parameters()`` order.
    parameter_names
        Names of those parameters.
    batch_size
        Number of images behind the gradient (the server knows it under FedSGD).
    model_mode
        ``"eval"`` or ``"train"``: the batch-norm mode the client used.
    labels
        The batch's labels when the protocol reveals them, else ``None``.
    protocol
        The protocol that produced it (``"fedsgd"``).
    """

    kind: ClassVar[str] = "gradient"
    gradients: tuple[torch.Tensor, ...]
    parameter_names: tuple[str, ...]
    batch_size: int
    model_mode: str
    labels: torch.Tensor | None = None
    protocol: str = "fedsgd"


@dataclass(frozen=True)
class UpdateLeak:
    """A FedAvg weight update (reply minus broadcast) with the protocol's known hyper-parameters.

    Attributes
    ----------
    deltas
        reply - broadcast, one tensor per trainable parameter (``parameter_names`` order).
    parameter_names
        Names of those parameters.
    num_examples
        Samples the client holds (it reports them for FedAvg's weighting); the update depends
        on :attr:`num_images` of them.
    batch_size, steps, lr, momentum, weight_decay
        The local SGD the protocol prescribes (``steps`` local steps in total).
    labels
        The labels of the images the update depends on, in the client's order (which says
        nothing of its batches), when revealed, else ``None``.
    model_mode
        ``"train"``: local training uses batch statistics.
    protocol
        ``"fedavg"``.
    """

    kind: ClassVar[str] = "update"
    deltas: tuple[torch.Tensor, ...]
    parameter_names: tuple[str, ...]
    num_examples: int
    batch_size: int
    steps: int
    lr: float
    momentum: float
    weight_decay: float
    labels: torch.Tensor | None = None
    model_mode: str = "train"
    protocol: str = "fedavg"

    @property
    def num_images(self) -> int:
        """Images the update depends on, as the server infers them from the protocol.

        ``steps`` x ``batch_size`` distinct images of one shuffle when that is fewer than the
        client's ``num_examples``, else all of them.
        """
        return min(self.steps * self.batch_size, self.num_examples)


@dataclass(frozen=True)
class AggregateLeak:
    """What a secure-aggregation server learns in one round: the weighted mean of K clients' updates.

    SecAgg+ hides every single reply; the server unmasks only their weighted mean (weights: the
    clients' plaintext ``num_examples``), quantized as the protocol does it.

    Attributes
    ----------
    deltas
        The aggregate minus the broadcast, one tensor per trainable parameter (``parameter_names`` order).
    parameter_names
        Names of those parameters.
    client_examples
        Each aggregated client's ``num_examples`` (plaintext under SecAgg+), in partition order.
    batch_size, lr, momentum, weight_decay
        The local SGD the protocol prescribes to every client.
    steps
        Each client's local steps, in the order of ``client_examples``.
    protocol
        ``"secagg"``.
    """

    kind: ClassVar[str] = "aggregate"
    deltas: tuple[torch.Tensor, ...]
    parameter_names: tuple[str, ...]
    client_examples: tuple[int, ...]
    steps: tuple[int, ...]
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    protocol: str = "secagg"

    @property
    def clients(self) -> int:
        """K, the number of clients in the aggregate."""
        return len(self.client_examples)

    @property
    def num_images(self) -> int:
        """Images the aggregate depends on: each client's ``steps`` x ``batch_size``, bounded by its data."""
        return sum(min(s * self.batch_size, n) for s, n in zip(self.steps, self.client_examples, strict=True))

    def union_update(self) -> UpdateLeak:
        """The aggregate read as one client's update over the union of the K clients' images.

        One client taking ``max(steps)`` steps of batches of ceil(images / steps) images from the
        union. With one local step and equal weights this is exact: the mean of K one-step updates
        is one step on the mean gradient of the union. With several steps it is the first-order
        approximation of the K separate trajectories (the multi-user setting of breaching, whose
        attack also reads the aggregate this way).
        """
        steps = max(self.steps)
        return UpdateLeak(
            deltas=self.deltas, parameter_names=self.parameter_names, num_examples=self.num_images,
            batch_size=-(-self.num_images // steps), steps=steps, lr=self.lr, momentum=self.momentum,
            weight_decay=self.weight_decay, labels=None, model_mode="train", protocol=self.protocol,
        )


def single_update(leak: Leak) -> Leak:
    """An aggregate as the union's update (:meth:`AggregateLeak.union_update`); any other leak unchanged."""
    return leak.union_update() if isinstance(leak, AggregateLeak) else leak


def parameter_change(leak: Leak) -> tuple[dict[str, torch.Tensor], int]:
    """A gradient's, an update's or an aggregate's tensors by parameter name, and the images behind them.

    Raises
    ------
    TypeError
        For any other kind of leak.
    """
    if isinstance(leak, GradientLeak):
        return dict(zip(leak.parameter_names, leak.gradients, strict=True)), leak.batch_size
    if isinstance(leak, UpdateLeak | AggregateLeak):
        return dict(zip(leak.parameter_names, leak.deltas, strict=True)), leak.num_images
    raise TypeError(f"expected a gradient, update or aggregate leak, got {type(leak).__name__}")


PARAMETER_LEAK_KINDS = (GradientLeak.kind, UpdateLeak.kind, AggregateLeak.kind)  # leaks that carry parameters


def descent_direction(leak: Leak) -> dict[str, torch.Tensor]:
    """The direction the client's data moved the model, as a gradient points: a FedSGD gradient as it
    is, minus a FedAvg update or a SecAgg+ aggregate (local SGD steps against the gradient).

    Raises
    ------
    TypeError
        For a leak that carries no parameters.
    """
    change, _ = parameter_change(leak)
    return change if isinstance(leak, GradientLeak) else {name: -tensor for name, tensor in change.items()}


@dataclass(frozen=True)
class PredictionLeak:
    """Prediction vectors of a client's private inputs, as released (after any truncation).

    Attributes
    ----------
    predictions
        (n, K) softmax vectors of the broadcast model on n private samples; under ``truncate:M``
        all but the top M entries of each row are zero.
    protocol
        ``"predictions"``.
    """

    kind: ClassVar[str] = "prediction"
    predictions: torch.Tensor
    protocol: str = "predictions"


@dataclass(frozen=True)
class FeatureLeak:
    """What a split-inference server receives: the features x of a client's private queries.

    Attributes
    ----------
    features
        (n, C, H, W) features sent to the processing module: complex x = e^{i theta}(a + i b)
        under the ``complex`` defense, a (+ noise) otherwise (complex with zero imaginary part
        for complex networks).
    gradients
        dL/dh for the same queries in U-shaped split training (``split-training``), else ``None``.
    protocol
        ``"split-inference"``.
    """

    kind: ClassVar[str] = "features"
    features: torch.Tensor
    gradients: torch.Tensor | None = None
    protocol: str = "split-inference"


@dataclass(frozen=True)
class GroundTruth:
    """What the client really had: evaluation only, never handed to an attack.

    Attributes
    ----------
    images
        The original batch x in pixel space [0,1], shape (n, C, H, W).
    defended
        The defended batch T(x) in pixel space, the images the model actually saw (for local
        training over several steps: as the client first used them).
    labels
        True labels, shape (n,).
    defense
        The defense spec the client ran.
    targets
        True values of the other output kinds the protocol or defense knows (registered in
        :data:`fedpriv.outputs.OUTPUT_KINDS`, e.g. ``angles``: the rotation defense's decoding
        angle; ``properties``: the samples' private property), each (n,) in sample order.
    """

    images: torch.Tensor
    defended: torch.Tensor
    labels: torch.Tensor
    defense: str
    targets: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_kinds(self.targets, "GroundTruth.targets")
