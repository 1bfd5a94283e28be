"""Dataset loaders that turn the original dataset files into study records and `datasets.DatasetDict`s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from eir.data.covid import load_covid_chestxray, load_covid_chestxray_records
from eir.data.imagefolder import load_imagefolder, load_imagefolder_records
from eir.data.iu_xray import MissingImagesError, load_iu_xray, load_iu_xray_records, parse_iu_reports
from eir.data.mimic_cxr import load_mimic_cxr, load_mimic_cxr_records
from eir.data.records import SPLIT_NAMES, STUDY_COLUMNS, StudyRecord, records_to_dataset_dict, study_features
from eir.data.splits import apply_split_file, group_patients, read_split_file, split_by_patient, write_split_file

_LOADERS = {
    "iu_xray": (load_iu_xray, load_iu_xray_records),
    "covid_chestxray": (load_covid_chestxray, load_covid_chestxray_records),
    "mimic_cxr": (load_mimic_cxr, load_mimic_cxr_records),
    # `data_dir` is the user's folder with images and metadata.jsonl, not the data root.
    "imagefolder": (load_imagefolder, load_imagefolder_records),
}
DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)


def _loader_pair(name: str) -> tuple[Any, Any]:
    key = name.strip().lower().replace("-", "_")
    if key not in _LOADERS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {list(DATASET_NAMES)}.")
    return _LOADERS[key]


def load_study_dataset(name: str, data_dir: str | Path | None = None, **kwargs: Any) -> datasets.DatasetDict:
    """Load the dataset `name` (one of `DATASET_NAMES`) as a `DatasetDict`; `kwargs` go to its loader."""
    return _loader_pair(name)[0](data_dir=data_dir, **kwargs)


def load_study_records(name: str, data_dir: str | Path | None = None, **kwargs: Any) -> list[StudyRecord]:
    """Load the dataset `name` as a list of study records; `kwargs` go to its loader."""
    return _loader_pair(name)[1](data_dir=data_dir, **kwargs)


__all__ = [
    "DATASET_NAMES",
    "MissingImagesError",
    "SPLIT_NAMES",
    "STUDY_COLUMNS",
    "StudyRecord",
    "apply_split_file",
    "group_patients",
    "load_covid_chestxray",
    "load_covid_chestxray_records",
    "load_imagefolder",
    "load_imagefolder_records",
    "load_iu_xray",
    "load_iu_xray_records",
    "load_mimic_cxr",
    "load_mimic_cxr_records",
    "load_study_dataset",
    "load_study_records",
    "parse_iu_reports",
    "read_split_file",
    "records_to_dataset_dict",
    "split_by_patient",
    "study_features",
    "write_split_file",
]
