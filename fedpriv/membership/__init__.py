"""Membership inference: does a sample belong to the clients' training data? Attacks, statistics, the audit.

Every module of this package is imported here; an attack module registers its attack in
:data:`MEMBERSHIP_ATTACKS` when imported, so a new attack is one new module (with its tests and
documentation).
"""

import importlib
import pkgutil

from fedpriv.membership.base import MEMBERSHIP_ATTACKS, MembershipAttack, build_membership_attack

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MEMBERSHIP_ATTACKS", "MembershipAttack", "build_membership_attack"]
