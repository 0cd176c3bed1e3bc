"""The package of the tests' fault-injection app: cifar100_ats's Flower app with one more client mod.

``tests/fault_app.py`` builds the app (this package, the product app's ``pyproject.toml`` with
the two fault keys declared) for the end-to-end tests; no product app installs the mod, and
fedpriv refuses the fault keys. Imports here are relative: the package runs as ``tests.faults``
in unit tests and under the built app's name in ``flwr run``.
"""
