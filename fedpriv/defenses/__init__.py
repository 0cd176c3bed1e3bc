"""Client-side defenses, built from spec strings (``none``, ``ats:3-1-7``, ``truncate:3``, ...)."""

from fedpriv.defenses import ats as _ats  # noqa: F401  (registers the 'ats' defense)
from fedpriv.defenses import features as _features  # noqa: F401  (registers 'complex', 'plain', 'noise')
from fedpriv.defenses import truncation as _truncation  # noqa: F401  (registers 'truncate')
from fedpriv.defenses.base import DEFENSES, Defense, build_defense, defense_names

__all__ = ["DEFENSES", "Defense", "build_defense", "defense_names"]
