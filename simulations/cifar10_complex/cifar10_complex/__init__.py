"""Flower app: split networks behind the complex-rotation defense, attacked through split-inference features."""
