"""Flower app preset: CIFAR-100, ResNet-20, ATS defenses, gradient-inversion attacks."""
