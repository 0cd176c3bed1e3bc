"""What the Flower benchmarks share: the app's folder and config, line counts."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from fedpriv.config import RunConfig
from fedpriv.launcher import app_defaults
from fedpriv.validation import validated_config

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "simulations" / "cifar100_ats"


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


def execute(command: list[str], log: Path) -> float:
    """Run a ``fedpriv`` command, its output appended to ``log``; returns its wall seconds.

    Raises
    ------
    RuntimeError
        When the command exits non-zero (the log's last lines are in the message).
    """
    print(f"$ {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"\n$ {shlex.join(command)}\n")
        handle.flush()
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, check=False).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"exit {code} after {seconds:.0f} s: {shlex.join(command)}\n{tail}")
    print(f"  ({seconds:.0f} s)", flush=True)
    return seconds
