"""`EIRProcessor`: images, clinical history and reports to the inputs of `EIRForReportGeneration`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)


def patient_group_id(patient_id: str) -> int:
    """Hash a patient id to a stable non-negative 63-bit integer (the model's `group_ids`)."""
    digest = hashlib.blake2b(str(patient_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class EIRProcessor(ProcessorMixin):
    r"""
    Combine an [`EIRImageProcessor`] and an [`EIRTokenizer`] into one processor.

    `__call__` turns the images of each study, its clinical history and (for training) its report
    into `pixel_values`, `pixel_mask`, `history_input_ids`, `history_attention_mask`, `labels` and
    `group_ids`.

    Args:
        image_processor ([`EIRImageProcessor`]): loads and normalises the views.
        tokenizer ([`EIRTokenizer`]): SentencePiece tokenizer shared by history and report.
        max_history_length (`int`): history tokens kept, EOS included.
        max_report_length (`int`): report tokens kept as training labels, EOS included.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_history_length: int = 128, max_report_length: int = 256, **kwargs):
        self.max_history_length = max_history_length
        self.max_report_length = max_report_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        images: Any = None,
        history: str | Sequence[str] | None = None,
        reports: str | Sequence[str] | None = None,
        patient_ids: str | Sequence[str] | None = None,
        return_tensors: str = "pt",
        errors: str = "raise",
        **kwargs,
    ) -> BatchFeature:
        """Prepare a batch of studies.

        Args:
            images: one image, a list of the views of one study, or a list of such lists (a batch);
                each image is a path (PNG, JPEG or DICOM), a PIL image or an array.
            history: the clinical history of each study ("" when unknown).
            reports: target reports, only for training or scoring; become `labels` with EOS and
                -100 on padding.
            patient_ids: patient of each study; hashed into `group_ids` so retrieval skips the
                patient's own reports.
            errors: "raise" stops at the first unreadable image; "skip" logs it and masks that view.
        """
        data: dict[str, Any] = {}
        batch_size = None
        if images is not None:
            image_inputs = self.image_processor(images, return_tensors=return_tensors, errors=errors)
            data.update(image_inputs)
            batch_size = image_inputs["pixel_values"].shape[0]

        if history is not None:
            history_list = [history] if isinstance(history, str) else list(history)
            self._check_batch_size("history", len(history_list), batch_size)
            batch_size = len(history_list)
            encoded = self.tokenizer(
                history_list,
                padding=True,
                truncation=True,
                max_length=self.max_history_length,
                return_tensors=return_tensors,
            )
            data["history_input_ids"] = encoded["input_ids"]
            data["history_attention_mask"] = encoded["attention_mask"]

        if reports is not None:
            report_list = [reports] if isinstance(reports, str) else list(reports)
            self._check_batch_size("reports", len(report_list), batch_size)
            batch_size = len(report_list)
            data["labels"] = self._report_labels(report_list)

        if patient_ids is not None:
            patient_list = [patient_ids] if isinstance(patient_ids, str) else list(patient_ids)
            self._check_batch_size("patient_ids", len(patient_list), batch_size)
            data["group_ids"] = torch.tensor([patient_group_id(p) for p in patient_list], dtype=torch.long)

        return BatchFeature(data=data, tensor_type=None)

    def _report_labels(self, reports: list[str]) -> torch.Tensor:
        """Tokenise reports into labels (batch, length), padded with -100.

        A report that fits ends with EOS. A longer report is cut to `max_report_length` tokens
        without EOS, so the model is never taught to stop in the middle of a sentence.
        """
        token_ids = self.tokenizer(reports, add_special_tokens=True)["input_ids"]
        eos = self.tokenizer.eos_token_id
        cut = []
        for ids in token_ids:
            if len(ids) > self.max_report_length:
                ids = [token for token in ids if token != eos][: self.max_report_length]
            cut.append(ids)
        length = max(len(ids) for ids in cut)
        labels = torch.full((len(cut), length), -100, dtype=torch.long)
        for row, ids in enumerate(cut):
            labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return labels

    @staticmethod
    def _check_batch_size(field: str, size: int, expected: int | None) -> None:
        if expected is not None and size != expected:
            raise ValueError(
                f"EIRProcessor: expected {expected} entries in `{field}` (one per study), got {size}. "
                "Pass one history, report and patient id per study."
            )

    def batch_decode(self, *args, **kwargs) -> list[str]:
        """Decode generated ids to report text (special tokens skipped by default)."""
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "pixel_mask", "history_input_ids", "history_attention_mask", "group_ids"]


__all__ = ["EIRProcessor", "patient_group_id"]
