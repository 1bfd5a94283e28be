"""EIR model; importing it registers `EIRForReportGeneration` with `AutoModel` and `AutoModelForImageTextToText`."""

from transformers import AutoModel, AutoModelForImageTextToText

from configuration_eir import EIRConfig

from .modeling_eir import (
    EIREncoderOutput,
    EIRForReportGeneration,
    EIRPreTrainedModel,
    EIRReportGenerationOutput,
)

AutoModel.register(EIRConfig, EIRForReportGeneration, exist_ok=True)
AutoModelForImageTextToText.register(EIRConfig, EIRForReportGeneration, exist_ok=True)

__all__ = ["EIRForReportGeneration", "EIRPreTrainedModel", "EIREncoderOutput", "EIRReportGenerationOutput"]
