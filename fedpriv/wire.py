"""What travels beside a reply's one ArrayRecord: the leak's metadata and the evaluation-only truth.

Flower's DP mods and strategy wrappers accept exactly one ArrayRecord per reply, so a reply
carries only the model (or the one-step model of FedSGD) as arrays. Beside it, in
ConfigRecords under fixed keys, go the metadata a protocol really sends (``LEAK_KEY``: revealed
labels, batch-norm mode) and the ground truth for the scorer (``TRUTH_KEY``: one ``bytes`` value,
an ``.npz`` archive). Both sides of the simulation use this one codec; the server strips both
records before any inner strategy sees a reply and hands truth to the scorer only.
This module is Flower-free: the glue wraps its dicts in ConfigRecords.
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from fedpriv.leaks import GroundTruth

LEAK_KEY = "fedpriv.leak"
TRUTH_KEY = "fedpriv.truth"
ROUND_KEY = "server-round"
Scalar = int | float | str | bool | bytes


def encode_truth(truth: GroundTruth) -> dict[str, Scalar]:
    """Ground truth as ConfigRecord values: one ``.npz`` blob (no pickle) and the defense spec."""
    arrays = {"images": truth.images, "defended": truth.defended, "labels": truth.labels}
    arrays |= {f"extra/{k}": v for k, v in truth.extras.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v.detach().cpu().numpy() for k, v in arrays.items()})
    return {"arrays": buffer.getvalue(), "defense": truth.defense}


def decode_truth(values: dict[str, Scalar]) -> GroundTruth:
    """Decode what :func:`encode_truth` produced (``allow_pickle=False``)."""
    with np.load(io.BytesIO(bytes(values["arrays"])), allow_pickle=False) as archive:  # type: ignore[arg-type]
        arrays = {k: torch.from_numpy(archive[k]) for k in archive.files}
    return GroundTruth(
        images=arrays.pop("images"),
        defended=arrays.pop("defended"),
        labels=arrays.pop("labels").long(),
        defense=str(values["defense"]),
        extras={k.removeprefix("extra/"): v for k, v in arrays.items()},
    )


def encode_leak_meta(labels: torch.Tensor | None, model_mode: str) -> dict[str, Scalar]:
    """What a client sends beside its arrays: revealed labels (if any) and its batch-norm mode."""
    meta: dict[str, Scalar] = {"model-mode": model_mode}
    if labels is not None:
        meta["labels"] = json.dumps([int(v) for v in labels])
    return meta


def decode_leak_meta(values: dict[str, Scalar]) -> tuple[torch.Tensor | None, str]:
    """Decode :func:`encode_leak_meta`: (labels or ``None``, model mode)."""
    labels = values.get("labels")
    decoded = None if labels is None else torch.tensor(json.loads(str(labels)), dtype=torch.long)
    return decoded, str(values["model-mode"])
