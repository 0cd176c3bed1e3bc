"""Attack plugins: pure functions of what the server observed, found by name in ``ATTACKS``.

Every module of this package is imported here; a plugin module registers its attack when imported,
so a new attack is one new module (with its tests and documentation), nothing else.
"""

import importlib
import pkgutil

from fedpriv.attacks.base import (
    ATTACKS,
    Attack,
    AttackSettings,
    AttackTarget,
    AuxiliaryData,
    Knowledge,
    Reconstruction,
    build_attack,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ATTACKS", "Attack", "AttackSettings", "AttackTarget", "AuxiliaryData", "Knowledge", "Reconstruction",
    "build_attack",
]
