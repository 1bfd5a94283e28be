"""Loader for user data: a folder of images with one `metadata.jsonl` line per study.

Each line of `<data_dir>/metadata.jsonl` is a JSON object:

    {"study_id": "s1", "patient_id": "p1", "file_names": ["s1/frontal.png", "s1/lateral.png"],
     "history": "Cough for two weeks.", "report": "No focal consolidation.", "split": "train"}

- `study_id` and `report` are required; `history` defaults to "".
- `file_names` (a list, in view order) or `file_name` (one image) gives paths relative to `data_dir`.
- `patient_id` groups studies for the patient-disjoint split; without it each study is its own patient.
- `views` (optional) gives one view label per file ("PA", "AP", "L", ...).
- `split` ("train", "validation"/"val"/"valid", "test") is optional, but give it on every line or on
  none. Without it, studies are split by patient with `seed` and `fractions`.
- Any other key is kept in the record's `metadata`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from eir.data.records import StudyRecord, encode_metadata, records_to_dataset_dict
from eir.data.splits import check_patient_disjoint, normalize_split_name, split_by_patient

logger = logging.getLogger(__name__)

SOURCE_NAME = "imagefolder"
METADATA_FILE = "metadata.jsonl"
_KNOWN_KEYS = {"study_id", "patient_id", "file_names", "file_name", "history", "report", "split", "views"}
MISSING_IMAGE_MODES: tuple[str, ...] = ("raise", "skip")


def _text_field(entry: dict[str, Any], key: str, location: str, required: bool) -> str:
    value = entry.get(key)
    if value is None:
        if required:
            raise ValueError(f"{location}: missing {key!r}; every line needs 'study_id', 'report' and 'file_names' or 'file_name'.")
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"{location}: {key!r} must be a string, got {value!r}.")
    return str(value).strip()


def _file_names(entry: dict[str, Any], location: str) -> list[str]:
    if "file_names" in entry and "file_name" in entry:
        raise ValueError(f"{location}: has both 'file_names' and 'file_name'; give one of them.")
    if "file_name" in entry:
        names = [entry["file_name"]]
    elif "file_names" in entry:
        names = entry["file_names"]
    else:
        raise ValueError(f"{location}: missing 'file_names' (a list of image paths) or 'file_name' (one path).")
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"{location}: expected a non-empty list of image paths relative to the folder, got {names!r}.")
    return names


def _parse_line(line: str, location: str, folder: Path, missing_images: str) -> tuple[StudyRecord, bool] | None:
    """Parse one metadata line; return the record and whether it gave a split, or None when it has no image left."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{location}: invalid JSON ({error.msg}); expected one JSON object per line.") from error
    if not isinstance(entry, dict):
        raise ValueError(f"{location}: expected a JSON object, got {type(entry).__name__}.")

    study_id = _text_field(entry, "study_id", location, required=True)
    report = _text_field(entry, "report", location, required=True)
    names = _file_names(entry, location)
    views = entry.get("views", [""] * len(names))
    if not isinstance(views, list) or len(views) != len(names) or not all(isinstance(view, str) for view in views):
        raise ValueError(f"{location}: 'views' must be a list of {len(names)} strings (one per image), got {views!r}.")

    image_paths: list[str] = []
    kept_views: list[str] = []
    for name, view in zip(names, views):
        path = folder / name
        if not path.is_file():
            if missing_images == "raise":
                raise FileNotFoundError(f"{location}: image {name!r} not found at {path}. Pass missing_images='skip' to leave it out.")
            logger.warning("%s: image %s not found; it is left out.", location, path)
            continue
        image_paths.append(str(path.resolve()))
        kept_views.append(view.strip())
    if not image_paths:
        logger.warning("%s: study %s has no image file left; it is dropped.", location, study_id)
        return None

    split = entry.get("split")
    if split is not None:
        split = normalize_split_name(str(split), source=location)
    record = StudyRecord(
        study_id=study_id,
        patient_id=_text_field(entry, "patient_id", location, required=False) or study_id,
        image_paths=image_paths,
        views=kept_views,
        history=_text_field(entry, "history", location, required=False),
        report=report,
        split=split or "",
        source=SOURCE_NAME,
        metadata=encode_metadata({key: value for key, value in entry.items() if key not in _KNOWN_KEYS}),
    )
    return record, split is not None


def load_imagefolder_records(
    data_dir: str | Path | None = None,
    metadata_file: str = METADATA_FILE,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    missing_images: str = "raise",
) -> list[StudyRecord]:
    """Load an image folder with `metadata.jsonl` as study records (see `load_imagefolder` for the arguments)."""
    if data_dir is None:
        raise ValueError("data_dir is missing: the imagefolder loader needs data_dir= the folder that holds metadata.jsonl and the images.")
    if missing_images not in MISSING_IMAGE_MODES:
        raise ValueError(f"missing_images must be one of {MISSING_IMAGE_MODES}, got {missing_images!r}.")
    folder = Path(data_dir)
    path = folder / metadata_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; an image folder needs a {metadata_file} with one JSON line per study.")

    records: list[StudyRecord] = []
    has_split: list[bool] = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parsed = _parse_line(line, f"{path} line {line_number}", folder, missing_images)
        if parsed is not None:
            records.append(parsed[0])
            has_split.append(parsed[1])
    if not records:
        raise ValueError(f"{path} lists no study with an image file.")

    if all(has_split):
        check_patient_disjoint(records, source=str(path))
        logger.info("Loaded %d studies from %s with the splits it gives.", len(records), path)
        return records
    if any(has_split):
        without = [record["study_id"] for record, given in zip(records, has_split) if not given]
        raise ValueError(
            f"{path}: {len(without)} of {len(records)} studies have no 'split' (e.g. {without[:3]}); "
            "give a split on every line or on none (then studies are split by patient with a seed)."
        )
    if all(record["patient_id"] == record["study_id"] for record in records):
        logger.warning("%s gives no patient_id; each study counts as its own patient in the split.", path)
    return split_by_patient(records, fractions=fractions, seed=seed)


def load_imagefolder(
    data_dir: str | Path | None = None,
    metadata_file: str = METADATA_FILE,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    missing_images: str = "raise",
) -> datasets.DatasetDict:
    """Load a folder of images with a `metadata.jsonl` (format in the module docstring) as a `DatasetDict`.

    Args:
        data_dir: the folder holding `metadata_file` and the images (required).
        metadata_file: name of the JSON-lines file inside `data_dir`.
        seed: seed of the patient-disjoint split, used when no line gives a split.
        fractions: (train, validation, test) fractions of patients for that split.
        missing_images: "raise" stops at the first image file not found. "skip" leaves the file
            out with a warning and drops a study left without images.
    """
    records = load_imagefolder_records(
        data_dir=data_dir, metadata_file=metadata_file, seed=seed, fractions=fractions, missing_images=missing_images
    )
    return records_to_dataset_dict(records)


__all__ = ["METADATA_FILE", "load_imagefolder", "load_imagefolder_records"]
