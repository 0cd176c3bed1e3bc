"""Client mods chosen by run config: Flower's own DP mods, and update pruning in the same style.

Flower fixes a ClientApp's mods when the app is built, before any run config is known, so
:func:`privacy_mod` reads ``dp`` from the run config and hands the message to Flower's own
``fixedclipping_mod`` (``dp='client-fixed'``, with the server's
``DifferentialPrivacyClientSideFixedClipping``) or ``LocalDpMod`` (``dp='local'``), unchanged.
:func:`pruning_mod` zeroes the smallest-magnitude entries of each tensor of the update
(``update-pruning``, the gradient-pruning baseline ATS compares with). Both act on train
replies only, after the handler, so what they change is what the server receives.
:func:`model_check_mod` looks at the model a train message carries before the handler trains
it (``model-check``): it refuses one with a malicious layer (the client's round fails with the
reason) or reports what it found in the reply's metrics.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from fedpriv.model_checks import inspect_model
from fedpriv.validation import parse_run_config


def local_dp_epsilon(noise_multiplier: float, delta: float) -> float:
    """The epsilon that makes ``LocalDpMod``'s noise std equal noise_multiplier * clipping norm.

    LocalDpMod adds N(0, s^2) with s = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon (the
    Gaussian mechanism); with sensitivity = clipping norm, epsilon = sqrt(2 ln(1.25 / delta)) /
    noise_multiplier.
    """
    return math.sqrt(2 * math.log(1.25 / delta)) / noise_multiplier


def privacy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Dispatch train messages to Flower's DP mod for the run's ``dp`` mode (or none)."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    config = parse_run_config(context.run_config)
    if config.dp == "client-fixed" and config.protocol != "secagg":  # secagg: clipped outside, on the legacy FitRes
        return fixedclipping_mod(msg, context, call_next)
    if config.dp == "local":
        epsilon = local_dp_epsilon(config.dp_noise_multiplier, config.dp_delta)
        mod = LocalDpMod(config.dp_clipping_norm, config.dp_clipping_norm, epsilon, config.dp_delta)
        return mod(msg, context, call_next)
    return call_next(msg, context)


MODEL_CHECK_METRIC = "model-check-findings"


def model_check_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Check the received model before training (``model-check``: off, report or refuse).

    Raises
    ------
    RuntimeError
        Under ``refuse``, when :func:`fedpriv.model_checks.inspect_model` finds a suspicious layer
        (the client's round fails with this reason, which the server records).
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    mode = parse_run_config(context.run_config).model_check
    if mode == "off":
        return call_next(msg, context)
    findings = inspect_model(cast(ArrayRecord, msg.content["arrays"]).to_torch_state_dict())
    if findings and mode == "refuse":
        raise RuntimeError(f"model check: refused the received model: {findings[0].parameter}: {findings[0].reason}"
                           + (f" (and {len(findings) - 1} more layers)" if len(findings) > 1 else ""))
    reply = call_next(msg, context)
    if not reply.has_error():
        cast(MetricRecord, reply.content["metrics"])[MODEL_CHECK_METRIC] = len(findings)
    return reply


def prune_update(reply: list[np.ndarray], sent: list[np.ndarray], fraction: float) -> list[np.ndarray]:
    """sent + update with the ``fraction`` smallest-|entry| of each tensor's update set to zero."""
    pruned = []
    for new, old in zip(reply, sent, strict=True):
        update = new - old
        keep = np.abs(update) >= np.quantile(np.abs(update), fraction) if update.size else np.ones_like(update, bool)
        pruned.append((old + np.where(keep, update, 0)).astype(new.dtype))
    return pruned


def pruning_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Prune the update of a train reply by magnitude, per tensor (``update-pruning`` > 0)."""
    reply = call_next(msg, context)
    if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
        return reply
    fraction = parse_run_config(context.run_config).update_pruning
    if fraction == 0:
        return reply
    sent = cast(ArrayRecord, msg.content["arrays"])
    key, arrays = next(iter(reply.content.array_records.items()))
    pruned = prune_update(arrays.to_numpy_ndarrays(), sent.to_numpy_ndarrays(), fraction)
    reply.content[key] = ArrayRecord({k: Array(v) for k, v in zip(arrays.keys(), pruned, strict=True)})
    return reply
