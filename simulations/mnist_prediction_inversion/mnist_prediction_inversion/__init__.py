"""Flower app: digit classifiers trained with FedAvg whose released prediction vectors are inverted."""
