"""fedpriv: federated-learning privacy simulation (defenses, leaks, attacks, scoring)."""

__version__ = "0.1.0"
