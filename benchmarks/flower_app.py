"""What the Flower benchmarks share: the app's folder and config, line counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedpriv.config import RunConfig
from fedpriv.launcher import app_defaults
from fedpriv.validation import validated_config

APP = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"


def app_config(overrides: dict[str, Any]) -> RunConfig:
    """The config the ServerApp and ClientApps see: the app's defaults fused with ``overrides``."""
    return validated_config(app_defaults(APP) | overrides)


def count_lines(path: Path) -> int:
    """Lines in a file (0 if missing)."""
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0
