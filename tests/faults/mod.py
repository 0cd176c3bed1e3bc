"""Test-only fault injection: a ClientApp mod that makes chosen partitions fail or hang in training.

Keys (declared only by the tests' app): ``inject-client-failure`` (partitions that raise in
training) and ``inject-client-hang`` (partitions that sleep past ``round-timeout``), each a
selection like ``attack-clients`` (``none``, ``all`` or ids ``0,2``). The mod is the outermost,
so a fault replaces the whole client round; the handlers and the mods inside it see the run config
without these keys, as a product app's would.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedpriv.config_values import selection
from fedpriv.validation import parse_run_config

FAILURE, HANG = "inject-client-failure", "inject-client-hang"
FAULT_KEYS = (FAILURE, HANG)


def fault_plan(run_config: Mapping[str, Any]) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """The partitions told to fail and to hang (None: all), from the run config.

    Raises
    ------
    fedpriv.errors.ConfigError
        Naming the key whose selection is malformed.
    """
    failing, hanging = (selection(str(run_config.get(key, "none")), key) for key in FAULT_KEYS)
    return failing, hanging


def without_faults(context: Context) -> Context:
    """``context`` with the fault keys left out of its run config (same state: what the handler keeps stays)."""
    return dataclasses.replace(context, run_config={k: v for k, v in context.run_config.items()
                                                    if k not in FAULT_KEYS})


def fault_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Raise, or sleep past the round's timeout, in the chosen partitions' training; else pass on."""
    clean = without_faults(context)
    if msg.metadata.message_type == MessageType.TRAIN:
        failing, hanging = fault_plan(context.run_config)
        partition_id = int(context.node_config["partition-id"])
        if failing is None or partition_id in failing:
            raise RuntimeError(f"injected failure (inject-client-failure) in partition {partition_id}")
        if hanging is None or partition_id in hanging:
            time.sleep(parse_run_config(clean.run_config).round_timeout + 5)  # past the round's timeout
    return call_next(msg, clean)
