"""EIR configuration; importing it registers `EIRConfig` with `AutoConfig`."""

from transformers import AutoConfig

from .configuration_eir import EIRConfig

AutoConfig.register(EIRConfig.model_type, EIRConfig, exist_ok=True)

__all__ = ["EIRConfig"]
