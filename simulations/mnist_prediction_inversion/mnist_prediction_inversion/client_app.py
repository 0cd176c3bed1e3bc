"""ClientApp of the mnist_prediction_inversion app: fedpriv's client."""

from fedpriv.clients.client_app import app

__all__ = ["app"]
