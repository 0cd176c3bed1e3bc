"""Build the tests' fault-injection app: the cifar100_ats app with ``tests/faults`` as its package.

Its ``pyproject.toml`` is the product app's (every key, so every override of the product's
tests works) with the fault keys (``tests/faults/mod.py``) declared and its own name and
components; it is built afresh from the product's file, so the two never drift apart.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ROOT / "simulations" / "cifar100_ats"
PACKAGE = "faulty_ats"
TABLE = "[tool.flwr.app.config]\n"


def build_fault_app(dest: Path) -> Path:
    """Write the app into ``dest`` (created) and return it, ready for ``flwr run``."""
    from tests.faults.mod import FAULT_KEYS

    text = (PRODUCT / "pyproject.toml").read_text()
    replaced = {'name = "cifar100-ats"': f'name = "{PACKAGE.replace("_", "-")}"',
                'serverapp = "cifar100_ats.server_app:app"': f'serverapp = "{PACKAGE}.server_app:app"',
                'clientapp = "cifar100_ats.client_app:app"': f'clientapp = "{PACKAGE}.client_app:app"',
                TABLE: TABLE + "# test only: fault injection (tests/faults/mod.py)\n"
                       + "".join(f'{key} = "none"\n' for key in FAULT_KEYS)}
    for old, new in replaced.items():
        assert text.count(old) == 1, f"{PRODUCT / 'pyproject.toml'} no longer holds {old!r} once"
        text = text.replace(old, new)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "pyproject.toml").write_text(text)
    shutil.copytree(ROOT / "tests" / "faults", dest / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    return dest
