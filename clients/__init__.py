"""Flower ClientApps: thin glue between Flower messages and fedpriv's client task."""
