"""Client mods chosen by run config: Flower's own DP mods, and update pruning in the same style.

Flower fixes a ClientApp's mods when the app is built, before any run config is known, so
:func:`privacy_mod` reads ``dp`` from the run config and hands the message to Flower's own
``fixedclipping_mod`` (``dp='client-fixed'``, with the server's
``DifferentialPrivacyClientSideFixedClipping``) or ``LocalDpMod`` (``dp='local'``), unchanged.
:func:`pruning_mod` zeroes the smallest-magnitude entries of each tensor of the update
(``update-pruning``, the gradient-pruning baseline ATS compares with). Both act on train
replies only, after the handler, so what they change is what the server receives.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

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
    if config.dp == "client-fixed":
        return fixedclipping_mod(msg, context, call_next)
    if config.dp == "local":
        epsilon = local_dp_epsilon(config.dp_noise_multiplier, config.dp_delta)
        mod = LocalDpMod(config.dp_clipping_norm, config.dp_clipping_norm, epsilon, config.dp_delta)
        return mod(msg, context, call_next)
    return call_next(msg, context)


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
