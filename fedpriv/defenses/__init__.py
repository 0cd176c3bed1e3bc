"""Client-side defenses, built from spec strings (``none``, ``ats:3-1-7``, ``truncate:3``, ...).

Every module of this package is imported here; a plugin module registers its defense when
imported, so a new defense is one new module (with its tests and documentation).
"""

import importlib
import pkgutil

from fedpriv.defenses.base import (
    DEFENSES,
    Defense,
    InputDefense,
    NoDefense,
    PredictionDefense,
    UpdateDefense,
    build_defense,
    defended_inputs,
    defense_names,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "DEFENSES", "Defense", "InputDefense", "NoDefense", "PredictionDefense", "UpdateDefense", "build_defense",
    "defended_inputs", "defense_names",
]
