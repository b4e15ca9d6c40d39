"""Warnings deker emits."""

__all__ = ["DekerWarning"]


class DekerWarning(Warning):
    """Base class of deker's warnings."""
