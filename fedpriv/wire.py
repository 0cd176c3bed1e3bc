"""What travels beside a reply's one ArrayRecord: the leak's metadata and the evaluation-only truth.

Flower's DP mods and strategy wrappers accept exactly one ArrayRecord per reply, so a reply
carries only the model (or the one-step model of FedSGD) as arrays. Beside it, in
ConfigRecords under fixed keys, go the metadata a protocol really sends (``LEAK_KEY``: revealed
labels, batch-norm mode, released prediction vectors) and the ground truth for the scorer
(``TRUTH_KEY``: one ``bytes`` value, an ``.npz`` archive). Both sides of the simulation use this
one codec; the server strips both records before any inner strategy sees a reply and hands truth
to the scorer only.
This module is Flower-free: the glue wraps its dicts in ConfigRecords.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedpriv.leaks import GroundTruth

LEAK_KEY = "fedpriv.leak"
TRUTH_KEY = "fedpriv.truth"
ROUND_KEY = "server-round"
Scalar = int | float | str | bool | bytes


@dataclass(frozen=True)
class LeakMeta:
    """What a client sends beside its arrays that the server really sees.

    Attributes
    ----------
    labels
        Labels the protocol reveals (``reveal-labels``), else ``None``.
    model_mode
        Batch-norm mode of the computation behind the arrays.
    predictions
        Released prediction vectors (n, K) under the ``predictions`` protocol, else ``None``.
    features, feature_grads
        Under ``split-inference``: the features x sent to the processing module (complex for
        complex networks) and, in U-shaped split training, the gradient dL/dh sent back.
    """

    labels: torch.Tensor | None = None
    model_mode: str = "eval"
    predictions: torch.Tensor | None = None
    features: torch.Tensor | None = None
    feature_grads: torch.Tensor | None = None


def _npz(arrays: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    named: dict[str, Any] = {k: v.detach().cpu().numpy() for k, v in arrays.items()}
    np.savez(buffer, **named)
    return buffer.getvalue()


def _unnpz(blob: object) -> dict[str, torch.Tensor]:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise TypeError(f"expected an .npz blob (bytes), got {type(blob).__name__}")
    with np.load(io.BytesIO(bytes(blob)), allow_pickle=False) as archive:
        return {k: torch.from_numpy(archive[k]) for k in archive.files}


def scalar(value: object) -> int | float | str:
    """A record value that is one number or string (Flower types record values as unions with lists)."""
    if isinstance(value, int | float | str):
        return value
    raise TypeError(f"expected a number or a string, got {type(value).__name__}")


def encode_truth(truth: GroundTruth) -> dict[str, Scalar]:
    """Ground truth as ConfigRecord values: one ``.npz`` blob (no pickle) and the defense spec."""
    arrays = {"images": truth.images, "defended": truth.defended, "labels": truth.labels}
    arrays |= {f"extra/{k}": v for k, v in truth.extras.items()}
    return {"arrays": _npz(arrays), "defense": truth.defense}


def decode_truth(values: Mapping[str, object]) -> GroundTruth:
    """Decode what :func:`encode_truth` produced (``allow_pickle=False``)."""
    arrays = _unnpz(values["arrays"])
    return GroundTruth(
        images=arrays.pop("images"),
        defended=arrays.pop("defended"),
        labels=arrays.pop("labels").long(),
        defense=str(values["defense"]),
        extras={k.removeprefix("extra/"): v for k, v in arrays.items()},
    )


def encode_leak_meta(meta: LeakMeta) -> dict[str, Scalar]:
    """:class:`LeakMeta` as ConfigRecord values (labels as JSON, tensors in one ``.npz`` blob)."""
    values: dict[str, Scalar] = {"model-mode": meta.model_mode}
    if meta.labels is not None:
        values["labels"] = json.dumps([int(v) for v in meta.labels])
    arrays = {key: value.detach() for key, value in (("predictions", meta.predictions), ("features", meta.features),
                                                     ("feature_grads", meta.feature_grads)) if value is not None}
    if arrays:
        values["arrays"] = _npz(arrays)
    return values


def decode_leak_meta(values: Mapping[str, object]) -> LeakMeta:
    """Decode :func:`encode_leak_meta`."""
    labels = values.get("labels")
    arrays = _unnpz(values["arrays"]) if "arrays" in values else {}
    return LeakMeta(
        labels=None if labels is None else torch.tensor(json.loads(str(labels)), dtype=torch.long),
        model_mode=str(values["model-mode"]), predictions=arrays.get("predictions"),
        features=arrays.get("features"), feature_grads=arrays.get("feature_grads"),
    )
