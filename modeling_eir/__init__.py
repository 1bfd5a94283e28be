"""EIR model."""

from .modeling_eir import (
    EIREncoderOutput,
    EIRForReportGeneration,
    EIRPreTrainedModel,
    EIRReportGenerationOutput,
)

__all__ = ["EIRForReportGeneration", "EIRPreTrainedModel", "EIREncoderOutput", "EIRReportGenerationOutput"]
