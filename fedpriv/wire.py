"""What travels beside a reply's one ArrayRecord: what the protocol sends beside it, and the evaluation-only truth.

Flower's DP mods and strategy wrappers accept exactly one ArrayRecord per reply, so a reply
carries only the model (or the one-step model of FedSGD) as arrays. Beside it, in
ConfigRecords under fixed keys, go what the protocol really sends beside its arrays
(``LEAK_KEY``: each protocol's own ``Sent`` dataclass, e.g. revealed labels or released
prediction vectors) and the ground truth for the scorer (``TRUTH_KEY``). Both are encoded field
by field: tensors in one ``.npz`` blob (no pickle), strings and numbers as they are. Both sides
of the simulation use this one codec; the server strips both records before any inner strategy
sees a reply and hands truth to the scorer only.
This module is Flower-free: the glue wraps its dicts in ConfigRecords.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from fedpriv.leaks import GroundTruth

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

LEAK_KEY = "fedpriv.leak"
TRUTH_KEY = "fedpriv.truth"
ROUND_KEY = "server-round"
NAMES_KEY = "fedpriv.parameter-names"  # legacy Parameters are a list: the server names them in FitIns' config
NAMES_SEPARATOR = "\n"  # one string: a legacy FitIns config (common.Scalar) holds no lists
Scalar = int | float | str | bool | bytes
ARRAYS = "arrays"  # the record key of the .npz blob
Sent = TypeVar("Sent", bound="DataclassInstance")


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


def encode_fields(record: DataclassInstance) -> dict[str, Scalar]:
    """A dataclass of tensors, ``None``s, strings and numbers as ConfigRecord values.

    Tensors go into one ``.npz`` blob under ``"arrays"``; ``None`` fields are left out (a
    decoder restores their default); the others are stored as they are.
    """
    values: dict[str, Scalar] = {}
    arrays: dict[str, torch.Tensor] = {}
    for item in dataclasses.fields(record):
        value = getattr(record, item.name)
        if isinstance(value, torch.Tensor):
            arrays[item.name] = value.detach()
        elif isinstance(value, int | float | str | bool):
            values[item.name] = value
        elif value is not None:
            raise TypeError(f"{type(record).__name__}.{item.name}: cannot send a {type(value).__name__}")
    if ARRAYS in values:
        raise ValueError(f"{type(record).__name__} has a field named {ARRAYS!r}, the codec's own key")
    if arrays:
        values[ARRAYS] = _npz(arrays)
    return values


def decode_fields(kind: type[Sent], values: Mapping[str, object]) -> Sent:
    """Decode :func:`encode_fields` into a ``kind`` instance (absent fields take their defaults)."""
    arrays = _unnpz(values[ARRAYS]) if ARRAYS in values else {}
    names = {item.name for item in dataclasses.fields(kind)}
    given: dict[str, Any] = {k: v for k, v in (*values.items(), *arrays.items()) if k in names}
    return kind(**given)


def encode_truth(truth: GroundTruth) -> dict[str, Scalar]:
    """Ground truth as ConfigRecord values: one ``.npz`` blob (no pickle) and the defense spec."""
    arrays = {"images": truth.images, "defended": truth.defended, "labels": truth.labels}
    arrays |= {f"target/{k}": v for k, v in truth.targets.items()}
    return {ARRAYS: _npz(arrays), "defense": truth.defense}


def decode_truth(values: Mapping[str, object]) -> GroundTruth:
    """Decode what :func:`encode_truth` produced (``allow_pickle=False``)."""
    arrays = _unnpz(values[ARRAYS])
    return GroundTruth(
        images=arrays.pop("images"),
        defended=arrays.pop("defended"),
        labels=arrays.pop("labels").long(),
        defense=str(values["defense"]),
        targets={k.removeprefix("target/"): v for k, v in arrays.items()},
    )
