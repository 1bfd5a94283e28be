"""EIR configuration."""

from .configuration_eir import EIRConfig

__all__ = ["EIRConfig"]
