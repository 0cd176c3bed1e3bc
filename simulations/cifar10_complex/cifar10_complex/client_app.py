"""ClientApp of the cifar10_complex app: fedpriv's client."""

from fedpriv.clients.client_app import app

__all__ = ["app"]
