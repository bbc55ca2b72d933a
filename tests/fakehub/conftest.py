"""The fake Hub's own tests get the ``fake_hub`` fixture from here."""

from .fixtures import fake_hub

__all__ = ["fake_hub"]
