"""Federated protocols: what a client sends, and so what the server (the attacker) observes.

A protocol has two halves that meet only in the reply's one ArrayRecord (a state dict) and its
``Sent`` record: :meth:`~fedpriv.protocols.base.FederatedProtocol.client_round` computes what
the client sends, :meth:`~fedpriv.protocols.base.FederatedProtocol.observe` derives the leak
from the reply *as the server received it*, after every client mod (clipping, noise, pruning)
ran. Each protocol is one module of this package, with its own ``Sent`` dataclass:

- ``fedsgd``: one batch gradient per round, sent as the one-step model w - ``server-lr`` * g;
- ``fedavg``: ``local-epochs`` (or ``local-steps``) of local SGD; the leak is the update;
- ``secagg``: FedAvg's local SGD sent through Flower's SecAgg+; the leak is only the aggregate;
- ``predictions``: FedAvg training, plus the released prediction vectors on private inputs;
- ``split-inference``: FedAvg training of a split network, plus private queries' features.

Every module of this package is imported here; a protocol module registers its protocol when
imported, so a new protocol is one new module (with its tests and documentation).
"""

import importlib
import pkgutil

from fedpriv.protocols.base import PROTOCOLS, ClientReply, FederatedProtocol, ground_truth, local_settings

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PROTOCOLS", "ClientReply", "FederatedProtocol", "ground_truth", "local_settings"]
