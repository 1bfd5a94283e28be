"""EIR chest X-ray report generation: data sets, training, evaluation and the `eir` command.

Importing this package registers the EIR config, model, image processor, tokenizer and processor
with the transformers Auto classes.
"""

import configuration_eir  # noqa: F401
import modeling_eir  # noqa: F401
import processing_eir  # noqa: F401
from configuration_eir import EIRConfig
from modeling_eir import EIRForReportGeneration
from processing_eir import EIRImageProcessor, EIRProcessor, EIRTokenizer

__all__ = ["EIRConfig", "EIRForReportGeneration", "EIRImageProcessor", "EIRProcessor", "EIRTokenizer"]
