"""Flower's SecAgg+ on the client (protocol ``secagg``): its own mod, and the legacy messages it speaks.

Flower 1.41 runs SecAgg+ in its legacy server path (``SecAggPlusWorkflow`` in a ``LegacyContext``):
each stage of the protocol is a train message carrying a ``secaggplus`` ConfigRecord, and the
stage that collects the masked vectors carries a legacy ``FitIns`` (``fitins.parameters``,
``fitins.config``) and wants a legacy ``FitRes`` back. :func:`secure_aggregation_mod` hands exactly
those messages to Flower's own ``secaggplus_mod``, unchanged. :func:`legacy_fit_mod`, inside it,
turns the FitIns into the message every fedpriv handler and mod reads (``arrays`` by name,
``config``) and the handler's reply into a FitRes; the evaluation-only truth stays beside it
(the server's tap takes it off before the workflow reads the reply). A weight outside
``secagg-clipping-range`` fails the round: SecAgg+ would clip it silently.
"""

from __future__ import annotations

from typing import cast

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Scalar, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from fedpriv.protocols.secagg import outside_range
from fedpriv.validation import parse_run_config
from fedpriv.wire import NAMES_KEY, NAMES_SEPARATOR, ROUND_KEY

FITINS_PARAMETERS, FITINS_CONFIG = "fitins.parameters", "fitins.config"


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Hand SecAgg+'s train messages to Flower's ``secaggplus_mod``; pass every other message on."""
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def secure_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Under ``dp='client-fixed'``, clip SecAgg+'s legacy FitRes with Flower's legacy ``fixedclipping_mod``.

    That mod rebuilds the reply from the FitRes alone; the records beside it (the
    evaluation-only truth) are put back unchanged.
    """
    if msg.metadata.message_type != MessageType.TRAIN or FITINS_PARAMETERS not in msg.content.array_records:
        return call_next(msg, context)
    if parse_run_config(context.run_config).dp != "client-fixed":
        return call_next(msg, context)
    beside: dict[str, ConfigRecord] = {}

    def keeping_records(inner: Message, inner_context: Context) -> Message:
        reply = call_next(inner, inner_context)
        if not reply.has_error():
            beside.update(reply.content.config_records)
        return reply

    reply = fixedclipping_mod(msg, context, keeping_records)
    if not reply.has_error():
        for key, record in beside.items():
            reply.content.setdefault(key, record)
    return reply


def legacy_fit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Read a legacy FitIns as fedpriv's train message; answer with a legacy FitRes.

    Raises
    ------
    ValueError
        When a sent weight lies outside ``[-secagg-clipping-range, secagg-clipping-range]``.
    """
    content = msg.content
    if msg.metadata.message_type != MessageType.TRAIN or FITINS_PARAMETERS not in content.array_records:
        return call_next(msg, context)
    legacy = compat.arrayrecord_to_parameters(cast(ArrayRecord, content.pop(FITINS_PARAMETERS)), keep_input=True)
    fit_config = cast(ConfigRecord, content.pop(FITINS_CONFIG))
    names = str(fit_config[NAMES_KEY]).split(NAMES_SEPARATOR)
    received = parameters_to_ndarrays(legacy)
    content["arrays"] = ArrayRecord({name: Array(value) for name, value in zip(names, received, strict=True)})
    content["config"] = ConfigRecord({ROUND_KEY: fit_config[ROUND_KEY]})
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    out = reply.content
    sent = cast(ArrayRecord, out.pop("arrays"))
    values = [sent[name].numpy() for name in names]
    config = parse_run_config(context.run_config)
    clip = config.secagg_clipping_range
    if found := outside_range({name: torch.from_numpy(value) for name, value in zip(names, values, strict=True)}, clip):
        raise ValueError(f"secagg-clipping-range={clip:g}: weight {found[0]} reaches {found[1]:.4g}, "
                         "which SecAgg+ would clip; raise secagg-clipping-range")
    metrics = cast(MetricRecord, out.pop("metrics"))
    scalars = {key: cast(Scalar, value) for key, value in metrics.items()}  # fedpriv's metrics are all scalars
    weight = 1 if config.dp != "none" else int(cast(int, metrics["num-examples"]))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(values), weight, scalars)
    for key, record in compat.fitres_to_recorddict(fitres, keep_input=True).items():
        out[key] = record
    return reply
