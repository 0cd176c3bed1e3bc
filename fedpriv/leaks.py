"""Typed observations (leaks) and evaluation-only ground truth, with their record encodings.

A leak is exactly what the server receives under the declared protocol, plus metadata the
server really has. Ground truth travels separately and only reaches the scorer. Both encode to
a flat ``dict[str, numpy.ndarray]`` plus a ``dict[str, scalar]`` so that the Flower glue can
carry them in an ArrayRecord and a ConfigRecord without knowing their kind. Feature and
prediction leaks register a kind in ``LEAK_KINDS`` the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
import torch

from fedpriv.errors import ConfigError
from fedpriv.registry import Registry

Scalar = int | float | str | bool
Arrays = dict[str, np.ndarray]
Meta = dict[str, Scalar]


class Leak(Protocol):
    """Anything the server observes from one client in one round."""

    kind: ClassVar[str]

    def to_records(self) -> tuple[Arrays, Meta]:
        """Encode as arrays and scalar metadata (the metadata carries ``kind``)."""
        ...


LEAK_KINDS: Registry[Callable[[Arrays, Meta], Leak]] = Registry("leak kind")


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
        ``"fedsgd"``.
    """

    kind: ClassVar[str] = "gradient"
    gradients: tuple[torch.Tensor, ...]
    parameter_names: tuple[str, ...]
    batch_size: int
    model_mode: str
    labels: torch.Tensor | None = None
    protocol: str = "fedsgd"

    def to_records(self) -> tuple[Arrays, Meta]:
        """Encode as arrays (``grad/<name>``, ``labels``) and metadata."""
        arrays = {f"grad/{n}": g.detach().cpu().numpy() for n, g in zip(self.parameter_names, self.gradients)}
        if self.labels is not None:
            arrays["labels"] = self.labels.cpu().numpy()
        meta: Meta = {
            "kind": self.kind,
            "batch-size": self.batch_size,
            "model-mode": self.model_mode,
            "protocol": self.protocol,
            "parameter-names": ",".join(self.parameter_names),
        }
        return arrays, meta

    @classmethod
    def from_records(cls, arrays: Arrays, meta: Meta) -> "GradientLeak":
        """Decode what :meth:`to_records` produced."""
        names = tuple(str(meta["parameter-names"]).split(","))
        labels = arrays.get("labels")
        return cls(
            gradients=tuple(torch.from_numpy(np.array(arrays[f"grad/{n}"])) for n in names),
            parameter_names=names,
            batch_size=int(meta["batch-size"]),
            model_mode=str(meta["model-mode"]),
            labels=None if labels is None else torch.from_numpy(np.array(labels)).long(),
            protocol=str(meta["protocol"]),
        )


LEAK_KINDS.add(GradientLeak.kind, GradientLeak.from_records)


def leak_from_records(arrays: Arrays, meta: Meta) -> Leak:
    """Decode a leak of any registered kind."""
    kind = str(meta.get("kind", ""))
    if kind not in LEAK_KINDS:
        raise ConfigError(f"unknown leak kind {kind!r}; valid: {', '.join(LEAK_KINDS.names())}")
    return LEAK_KINDS.get(kind)(arrays, meta)


@dataclass(frozen=True)
class GroundTruth:
    """What the client really had: evaluation only, never handed to an attack.

    Attributes
    ----------
    images
        The original batch x in pixel space [0,1], shape (n, C, H, W).
    defended
        The defended batch T(x) in pixel space, the images the model actually saw.
    labels
        True labels, shape (n,).
    defense
        The defense spec the client ran.
    extras
        Defense parameters drawn for this batch (e.g. translations), by name.
    """

    images: torch.Tensor
    defended: torch.Tensor
    labels: torch.Tensor
    defense: str
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_records(self) -> tuple[Arrays, Meta]:
        """Encode as arrays and metadata."""
        arrays = {
            "images": self.images.cpu().numpy(),
            "defended": self.defended.cpu().numpy(),
            "labels": self.labels.cpu().numpy(),
        }
        arrays.update({f"extra/{k}": v.cpu().numpy() for k, v in self.extras.items()})
        return arrays, {"defense": self.defense}

    @classmethod
    def from_records(cls, arrays: Arrays, meta: Meta) -> "GroundTruth":
        """Decode what :meth:`to_records` produced."""

        def tensor(key: str) -> torch.Tensor:
            return torch.from_numpy(np.array(arrays[key]))

        extras = {k.removeprefix("extra/"): tensor(k) for k in arrays if k.startswith("extra/")}
        return cls(
            images=tensor("images"),
            defended=tensor("defended"),
            labels=tensor("labels").long(),
            defense=str(meta["defense"]),
            extras=extras,
        )
