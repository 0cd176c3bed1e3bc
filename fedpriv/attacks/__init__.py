"""Attack plugins: pure functions of what the server observed, found by name in ``ATTACKS``."""

from fedpriv.attacks.base import (
    ATTACKS, Attack, AttackSettings, AttackTarget, AuxiliaryData, Knowledge, Reconstruction, build_attack,
)

# Importing the plugin modules registers them.
from fedpriv.attacks import feature_inversion  # noqa: E402,F401
from fedpriv.attacks import inverting_gradients  # noqa: E402,F401
from fedpriv.attacks import label_inference  # noqa: E402,F401
from fedpriv.attacks import policy_aware  # noqa: E402,F401
from fedpriv.attacks import prediction_inversion  # noqa: E402,F401
from fedpriv.attacks import property_inference  # noqa: E402,F401
from fedpriv.attacks import translation_aware  # noqa: E402,F401
from fedpriv.attacks import update_inversion  # noqa: E402,F401

__all__ = [
    "ATTACKS", "Attack", "AttackSettings", "AttackTarget", "AuxiliaryData", "Knowledge", "Reconstruction", "build_attack",
]
