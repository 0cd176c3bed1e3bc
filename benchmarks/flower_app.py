"""What the Flower benchmarks share: the app's folder and config, free ports, line counts."""

from __future__ import annotations

import random
import socket
import tomllib
from pathlib import Path
from typing import Any

from fedpriv.config import RunConfig

APP = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"


def free_port_pair() -> int:
    """A port ``p`` with ``p`` and ``p + 2`` free on 127.0.0.1 (PrivateSuperLink uses both)."""
    for _ in range(200):
        port = random.randint(41000, 59000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 2))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair found")


def app_config(overrides: dict[str, Any]) -> RunConfig:
    """The config the ServerApp and ClientApps see: the app's defaults fused with ``overrides``."""
    defaults = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    return RunConfig.from_run_config(defaults | overrides)


def count_lines(path: Path) -> int:
    """Lines in a file (0 if missing)."""
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0
