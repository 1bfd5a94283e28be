"""EIR preprocessing; importing it registers the image processor, tokenizer and processor with the Auto classes."""

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

from configuration_eir import EIRConfig

from .image_processing_eir import EIRImageProcessor, ImageLoadError, load_radiograph
from .processing_eir import EIRProcessor, patient_group_id
from .tokenization_eir import EIRTokenizer, train_eir_tokenizer

AutoImageProcessor.register(EIRConfig, image_processor_classes={"pil": EIRImageProcessor}, exist_ok=True)
AutoTokenizer.register(EIRConfig, tokenizer_class=EIRTokenizer, exist_ok=True)
AutoProcessor.register(EIRConfig, EIRProcessor, exist_ok=True)

__all__ = [
    "EIRImageProcessor",
    "EIRProcessor",
    "EIRTokenizer",
    "ImageLoadError",
    "load_radiograph",
    "patient_group_id",
    "train_eir_tokenizer",
]
