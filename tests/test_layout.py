"""The Flower-free core imports neither Flower nor Ray, also at run time.

The core is the import-linter contract ``flower-free-core`` in pyproject.toml: ``lint-imports``
(``.ci/lint``) checks it statically, lazy imports and chains through other fedpriv modules
included. This test imports every module of that contract and looks at ``sys.modules``, which
also catches a third-party library that pulls Flower or Ray in.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def core_modules() -> list[str]:
    """The source modules of the ``flower-free-core`` contract (packages stand for all their modules)."""
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["id"] == "flower-free-core"]
    assert sorted(contract["forbidden_modules"]) == ["flwr", "ray"]
    return list(contract["source_modules"])


def test_core_modules_import_without_flower_or_ray() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        f"for name in {core_modules()!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    for found in pkgutil.walk_packages(getattr(module, '__path__', []), name + '.'):\n"
        "        if not found.name.endswith('.__main__'):\n"
        "            importlib.import_module(found.name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'flwr', 'ray'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_package_folder_is_installed() -> None:
    """setuptools lists packages explicitly: a package folder missing there is absent from a wheel."""
    setuptools = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
    folders = {"fedpriv": "fedpriv", **setuptools["package-dir"]}
    found = set()
    for package, folder in folders.items():
        for init in (PYPROJECT.parent / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(PYPROJECT.parent / folder).parts
            found.add(".".join((package, *relative)))
    assert found == set(setuptools["packages"])
