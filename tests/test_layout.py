"""The core (data, models, defenses, attacks, scoring, results) imports neither Flower nor Ray."""

from __future__ import annotations

import subprocess
import sys

CORE = (
    "fedpriv.config", "fedpriv.config_sections", "fedpriv.options", "fedpriv.validation", "fedpriv.rotation.networks", "fedpriv.data.loading", "fedpriv.data.partition", "fedpriv.models", "fedpriv.defenses",
    "fedpriv.attacks", "fedpriv.leaks", "fedpriv.metrics", "fedpriv.round_attacks", "fedpriv.results",
    "fedpriv.client_task", "fedpriv.policy_search.search", "fedpriv.protocols", "fedpriv.wire",
    "fedpriv.data.custom", "fedpriv.run_page", "fedpriv.pretrain", "fedpriv.supervisor", "fedpriv.in_process",
    "fedpriv.reports.trajectory",
)


def test_core_modules_import_without_flower_or_ray() -> None:
    code = (
        f"import importlib, sys\nfor name in {CORE!r}:\n    importlib.import_module(name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'flwr', 'ray'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
