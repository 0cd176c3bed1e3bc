"""Flower server strategies that aggregate updates and hand leaks to attacks."""
