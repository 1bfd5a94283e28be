"""The study record shared by every dataset loader, and its conversion to a `datasets.DatasetDict`.

A study record is a plain dict with the columns in `STUDY_COLUMNS`: one radiology study (one or
more images of one patient taken together) with its clinical history and its target text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any, TypedDict

import datasets

logger = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")
STUDY_COLUMNS: tuple[str, ...] = (
    "study_id",
    "patient_id",
    "image_paths",
    "views",
    "history",
    "report",
    "split",
    "source",
    "metadata",
)


class StudyRecord(TypedDict):
    """One study, as returned by the record functions of the loaders."""

    study_id: str
    # Group for patient-disjoint splits and for excluding the same patient during retrieval.
    patient_id: str
    # Absolute paths of the image files found on disk, in view order.
    image_paths: list[str]
    # One view label per entry of `image_paths` ("PA", "AP", "L", ...; "" when unknown).
    views: list[str]
    history: str
    report: str
    split: str
    source: str
    # JSON object with dataset-specific attribution and extras (licence, doi, url, ...).
    metadata: str


def study_features() -> datasets.Features:
    """Return the column types shared by every split of every study dataset."""
    text = datasets.Value("string")
    return datasets.Features(
        {
            "study_id": text,
            "patient_id": text,
            "image_paths": datasets.List(text),
            "views": datasets.List(text),
            "history": text,
            "report": text,
            "split": text,
            "source": text,
            "metadata": text,
        }
    )


def encode_metadata(fields: dict[str, Any]) -> str:
    """Encode metadata as a JSON object string with sorted keys, keeping non-ASCII text readable."""
    return json.dumps(fields, ensure_ascii=False, sort_keys=True)


def validate_record(record: dict[str, Any]) -> None:
    """Raise `ValueError` naming the study and the field when `record` does not match `STUDY_COLUMNS`."""
    study_id = record.get("study_id", "<no study_id>")
    missing = [column for column in STUDY_COLUMNS if column not in record]
    if missing:
        raise ValueError(f"Study record {study_id!r} is missing the fields {missing}; expected all of {list(STUDY_COLUMNS)}.")
    extra = sorted(set(record) - set(STUDY_COLUMNS))
    if extra:
        raise ValueError(f"Study record {study_id!r} has unexpected fields {extra}; expected only {list(STUDY_COLUMNS)}.")
    for column in STUDY_COLUMNS:
        value = record[column]
        if column in ("image_paths", "views"):
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"Study record {study_id!r}: {column!r} must be a list of str, got {value!r}.")
        elif not isinstance(value, str):
            raise ValueError(f"Study record {study_id!r}: {column!r} must be a str, got {type(value).__name__}.")
    if len(record["views"]) != len(record["image_paths"]):
        raise ValueError(
            f"Study record {study_id!r} has {len(record['image_paths'])} image paths but {len(record['views'])} views; "
            "expected one view label per image."
        )
    if record["split"] not in SPLIT_NAMES:
        raise ValueError(f"Study record {study_id!r} has split {record['split']!r}; expected one of {list(SPLIT_NAMES)}.")


def group_records_by_split(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Return the records of each split, keeping their order; splits without records are left out."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(record["split"], []).append(record)
    return {name: grouped[name] for name in SPLIT_NAMES if name in grouped}


def records_to_dataset_dict(records: Sequence[dict[str, Any]]) -> datasets.DatasetDict:
    """Build a `DatasetDict` with one `Dataset` per split present in `records`.

    Every record is checked with `validate_record` first. Study ids must be unique.
    """
    seen: set[str] = set()
    for record in records:
        validate_record(record)
        if record["study_id"] in seen:
            raise ValueError(f"Study id {record['study_id']!r} occurs more than once; study ids must be unique.")
        seen.add(record["study_id"])

    features = study_features()
    splits = {
        name: datasets.Dataset.from_list([{column: record[column] for column in STUDY_COLUMNS} for record in split_records], features=features)
        for name, split_records in group_records_by_split(records).items()
    }
    logger.info("Built study dataset with splits %s.", {name: len(dataset) for name, dataset in splits.items()})
    return datasets.DatasetDict(splits)
