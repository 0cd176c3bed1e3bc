"""Server behaviours (``server-behaviour``): honest, or what a malicious server does to the model it sends.

Every module of this package is imported here; a behaviour module registers its behaviour when
imported, so a new behaviour is one new module (with its tests and documentation).
"""

import importlib
import pkgutil

from fedpriv.behaviours.base import BEHAVIOURS, Honest, ServerBehaviour, build_behaviour, run_model

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BEHAVIOURS", "Honest", "ServerBehaviour", "build_behaviour", "run_model"]
