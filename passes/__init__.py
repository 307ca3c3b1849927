"""Transformations of a model, one module per method; importing registers them as passes."""

from passes.magnitude_prune import MagnitudePrune

__all__ = ["MagnitudePrune"]
