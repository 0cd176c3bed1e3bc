"""ClientApp of the cifar100_ats preset: fedpriv's client."""

from fedpriv.clients.client_app import app

__all__ = ["app"]
