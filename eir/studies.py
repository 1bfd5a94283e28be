"""Torch datasets and batching of studies for training, evaluation and generation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from processing_eir import EIRProcessor, patient_group_id

logger = logging.getLogger(__name__)


class StudyDataset(Dataset):
    """Studies as model-ready image tensors plus their text.

    Each item is a dict with `index`, `pixel_values` (V, C, H, W), `pixel_mask` (V,), `history`,
    `report` and `patient_id`. It is None when no image of the study could be read: the study is
    logged and `StudyCollator` drops it, so one broken file never stops a run.

    Args:
        records: study records as produced by the loaders in `eir.data`.
        processor: the processor whose image processor prepares the views.
        cache_images: keep preprocessed views in memory (as float16) after the first read.
        feature_cache: a `eir.feature_cache.BackboneFeatureCache` of a frozen backbone. When set,
            items carry `backbone_features` (V, C, h, w) instead of `pixel_values`.
    """

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        processor: EIRProcessor,
        cache_images: bool = False,
        feature_cache: Any | None = None,
    ):
        self.records = list(records)
        self.processor = processor
        self.cache_images = cache_images
        self.feature_cache = feature_cache
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}

    def __len__(self) -> int:
        return len(self.records)

    def _load_views(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if index in self._cache:
            return self._cache[index]
        record = self.records[index]
        paths = list(record["image_paths"])
        views = None
        if not paths:
            logger.warning("Study %s has no image file; it is left out.", record["study_id"])
        else:
            encoded = self.processor.image_processor(paths, return_tensors="pt", errors="skip")
            pixel_mask = encoded["pixel_mask"][0]
            if pixel_mask.sum() == 0:
                logger.warning("No image of study %s could be read (%s); it is left out.", record["study_id"], paths)
            else:
                views = (encoded["pixel_values"][0], pixel_mask)
        if self.cache_images:
            self._cache[index] = None if views is None else (views[0].to(torch.float16), views[1])
        return views

    def drop_unreadable(self, num_workers: int = 0) -> list[str]:
        """Remove the studies without any readable image; return their study ids (each is logged).

        With `cache_images` the views read here stay cached, so the check costs no extra decoding.
        Otherwise each image is decoded once more, in `num_workers` loader processes.
        """
        if self.cache_images or num_workers == 0:
            readable = [self._load_views(index) is not None for index in range(len(self))]
        else:
            loader = DataLoader(
                range(len(self)), batch_size=32, num_workers=num_workers,
                collate_fn=lambda indices: [self._load_views(index) is not None for index in indices],
            )
            readable = [flag for flags in loader for flag in flags]
        dropped = [record["study_id"] for record, ok in zip(self.records, readable) if not ok]
        kept = [index for index, ok in enumerate(readable) if ok]
        self._cache = {new: self._cache[old] for new, old in enumerate(kept) if old in self._cache}
        self.records = [self.records[index] for index in kept]
        if dropped:
            logger.warning("%d studies without a readable image were left out: %s", len(dropped), dropped[:20])
        return dropped

    def _load_features(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        record = self.records[index]
        features = self.feature_cache.study_features(list(record["image_paths"]))
        if features is None:
            logger.warning("No image of study %s could be read (%s); it is left out.", record["study_id"], record["image_paths"])
        return features

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        use_features = self.feature_cache is not None
        views = self._load_features(index) if use_features else self._load_views(index)
        if views is None:
            return None
        record = self.records[index]
        return {
            "index": index,
            "backbone_features" if use_features else "pixel_values": views[0].float(),
            "pixel_mask": views[1],
            "history": record["history"],
            "report": record["report"],
            "patient_id": record["patient_id"],
        }


class StudyCollator:
    """Pad the views of a batch and tokenise history and reports; `None` items (unreadable studies) are dropped."""

    def __init__(self, processor: EIRProcessor, with_labels: bool = True):
        self.processor = processor
        self.with_labels = with_labels

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        items = [item for item in items if item is not None]
        if not items:
            return {}
        # Cached backbone features (V, C, h, w) are padded like pixels (V, C, H, W).
        view_key = "backbone_features" if "backbone_features" in items[0] else "pixel_values"
        max_views = max(item[view_key].shape[0] for item in items)
        channels, height, width = items[0][view_key].shape[1:]
        pixel_values = torch.zeros(len(items), max_views, channels, height, width)
        pixel_mask = torch.zeros(len(items), max_views, dtype=torch.long)
        for row, item in enumerate(items):
            num_views = item[view_key].shape[0]
            pixel_values[row, :num_views] = item[view_key]
            pixel_mask[row, :num_views] = item["pixel_mask"]

        text = self.processor(
            history=[item["history"] for item in items],
            reports=[item["report"] for item in items] if self.with_labels else None,
        )
        batch = {
            "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
            view_key: pixel_values,
            "pixel_mask": pixel_mask,
            "group_ids": torch.tensor([patient_group_id(item["patient_id"]) for item in items], dtype=torch.long),
        }
        batch.update(text)
        return batch


MODEL_INPUT_KEYS = (
    "pixel_values", "backbone_features", "pixel_mask", "history_input_ids", "history_attention_mask", "group_ids", "labels",
)


def model_inputs(batch: dict[str, torch.Tensor], with_labels: bool = True) -> dict[str, torch.Tensor]:
    """Select the keys of a collated batch that the model's forward takes."""
    keys = MODEL_INPUT_KEYS if with_labels else MODEL_INPUT_KEYS[:-1]
    return {key: batch[key] for key in keys if key in batch}
