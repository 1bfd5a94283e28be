"""Loader for the COVID-19 image data collection (Cohen et al.): chest X-rays with clinical notes.

Expected layout, as in the upstream repository: `metadata.csv` (one row per image) beside the
`images/` folder. Cite Cohen J.P. et al., "COVID-19 Image Data Collection: Prospective Predictions
Are the Future", arXiv:2006.11988 (2020). Licences differ per image (the `license` column); each
study keeps its licence, doi, url and credit line in `metadata`.

The target text is the `clinical_notes` column. It is the clinical note of the case, shared by all
images of a patient, and mixes history, findings, follow-up and sometimes the outcome. It is not a
radiology report of the image, so treat it as a weak target.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import defaultdict
from collections.abc import Collection, Sequence
from pathlib import Path

import datasets

from eir.data.records import StudyRecord, encode_metadata, records_to_dataset_dict
from eir.data.splits import apply_split_file, check_patient_disjoint, group_patients, split_by_patient
from eir.paths import default_data_dir

logger = logging.getLogger(__name__)

SOURCE_NAME = "covid_chestxray"
DATASET_FOLDER = "covid-chestxray"
METADATA_FILE = "metadata.csv"
DEFAULT_SPLIT_FILE = "splits.csv"
_CITATION = "Cohen J.P. et al., COVID-19 Image Data Collection: Prospective Predictions Are the Future, arXiv:2006.11988 (2020)"
_REQUIRED_COLUMNS = ("patientid", "offset", "modality", "folder", "filename", "clinical_notes")
# Values that mean "unknown" in metadata.csv.
_UNKNOWN_VALUES = {"", "?"}

# Columns rendered into `history`: the state of the patient at the time of the image (or before it).
# (column, label, unit appended to the value). Sex, age, view and the yes/no columns are handled apart.
_MEASUREMENT_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("offset", "Days since symptom onset or admission", ""),
    ("temperature", "Temperature", " C"),
    ("pO2_saturation", "pO2 saturation", "%"),
    ("leukocyte_count", "Leukocyte count", " x10^3/uL"),
    ("neutrophil_count", "Neutrophil count", " x10^3/uL"),
    ("lymphocyte_count", "Lymphocyte count", " x10^3/uL"),
)
# Yes/no columns that describe the state at the time of the image. Only "Y" and "N" are used, so
# values such as "Not visible" and "Would have been stated" are skipped.
# NOTE: the upstream SCHEMA.md does not describe these two columns. Their names are the only
# evidence that they refer to the time of the image rather than to the whole illness.
_STATE_FIELDS: tuple[tuple[str, str], ...] = (
    ("intubation_present", "Intubated at the time of the image"),
    ("in_icu", "In ICU at the time of the image"),
)
# Columns never rendered into `history`, because they are diagnoses or may happen after the image.
# `finding` is the diagnosis, and `survival` and `extubated` are outcomes. `intubated`, `went_icu`
# and `needed_supplemental_O2` are defined "at any point during this illness", so they can describe
# events after the image.
EXCLUDED_HISTORY_COLUMNS: tuple[str, ...] = ("finding", "survival", "intubated", "went_icu", "needed_supplemental_O2", "extubated")
_METADATA_FIELDS: tuple[str, ...] = ("license", "doi", "url", "other_notes", "finding", "date", "location")


def resolve_covid_dir(data_dir: str | Path | None = None) -> Path:
    """Return the folder holding `metadata.csv`; `data_dir` may be it or the data root holding it as `covid-chestxray/`."""
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    for candidate in (base, base / DATASET_FOLDER):
        if (candidate / METADATA_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"COVID-19 image data collection not found: no {METADATA_FILE} in {base} or {base / DATASET_FOLDER}. "
        "Pass data_dir= the folder that holds metadata.csv and images/."
    )


def read_covid_metadata(path: str | Path) -> list[dict[str, str]]:
    """Read `metadata.csv` with every value as a stripped string.

    The header ends with a comma, so the last column has an empty name; that column is dropped.
    """
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [column for column in _REQUIRED_COLUMNS if column not in header]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing}; expected the metadata.csv of the COVID-19 image data collection.")
        return [{key: (value or "").strip() for key, value in row.items() if key} for row in reader]


def _known(value: str) -> bool:
    return value not in _UNKNOWN_VALUES


def _unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(value for value in values if _known(value)))


def _normalize_view(view: str) -> str:
    return view if _known(view) else ""


def build_history(rows: Sequence[dict[str, str]]) -> str:
    """Render the fields known at the time of the image as sentences, e.g. "Sex: male. Age: 65. View: PA.".

    Blank and "?" values are skipped. When the rows of a study disagree on a field, the distinct
    values are joined with " / ". The columns in `EXCLUDED_HISTORY_COLUMNS` are never used.
    """
    sentences: list[str] = []
    sexes = [{"M": "male", "F": "female"}.get(sex, sex) for sex in _unique([row.get("sex", "") for row in rows])]
    if sexes:
        sentences.append(f"Sex: {' / '.join(sexes)}.")
    ages = _unique([row.get("age", "") for row in rows])
    if ages:
        sentences.append(f"Age: {' / '.join(ages)}.")
    views = _unique([_normalize_view(row.get("view", "")) for row in rows])
    if views:
        sentences.append(f"View: {', '.join(views)}.")
    for column, label, unit in _MEASUREMENT_FIELDS:
        values = _unique([row.get(column, "") for row in rows])
        if values:
            sentences.append(f"{label}: {' / '.join(value + unit for value in values)}.")
    for column, label in _STATE_FIELDS:
        answers = [{"Y": "yes", "N": "no"}[value] for value in _unique([row.get(column, "") for row in rows]) if value in ("Y", "N")]
        if answers:
            sentences.append(f"{label}: {' / '.join(answers)}.")
    return " ".join(sentences)


def _merge_notes(notes: Sequence[str]) -> str:
    """Join the distinct notes of a study in row order, leaving out a note contained in another one."""
    distinct = list(dict.fromkeys(note for note in notes if note))
    kept = [note for note in distinct if not any(note != other and note in other for other in distinct)]
    return " ".join(kept)


def _study_key(row: dict[str, str]) -> tuple[str, str]:
    # Rows of one patient with the same offset are views of one study; without a known offset each
    # row is its own study.
    if _known(row["offset"]):
        return row["patientid"], row["offset"]
    return row["patientid"], f"file:{row['filename']}"


def _image_digests(records: Sequence[StudyRecord]) -> dict[str, str]:
    """Return the SHA-256 hex digest of every image file of `records`, keyed by path."""
    digests: dict[str, str] = {}
    for record in records:
        for image_path in record["image_paths"]:
            if image_path not in digests:
                digests[image_path] = hashlib.sha256(Path(image_path).read_bytes()).hexdigest()
    return digests


def _link_identical_cases(records: Sequence[StudyRecord], digests: dict[str, str]) -> dict[str, str]:
    """Group patients whose image bytes or clinical notes are identical: the collection lists some cases under two patient ids."""
    patients_by_key: dict[str, set[str]] = defaultdict(set)
    for record in records:
        patients_by_key["note:" + record["report"]].add(record["patient_id"])
        for image_path in record["image_paths"]:
            patients_by_key["image:" + digests[image_path]].add(record["patient_id"])
    linked = [sorted(patients) for patients in patients_by_key.values() if len(patients) > 1]
    groups = group_patients(linked)
    merged = {patient for patient, group in groups.items() if patient != group}
    if merged:
        logger.info("Grouped %d COVID-19 collection patients with another patient that shares an image or a note: %s.", len(merged), {patient: groups[patient] for patient in sorted(merged)})
    return groups


def _drop_duplicate_studies(records: Sequence[StudyRecord], digests: dict[str, str]) -> list[StudyRecord]:
    """Drop every study whose image files are byte-identical to those of another study.

    The collection repeats some studies under a second patient id or a second file name. Of each
    set of duplicates, the study first in (patient id, study id) string order is kept. The kept
    studies stay in their input order.
    """
    kept_by_images: dict[tuple[str, ...], str] = {}
    duplicate_of: dict[str, str] = {}
    for record in sorted(records, key=lambda record: (record["patient_id"], record["study_id"])):
        images = tuple(sorted(digests[image_path] for image_path in record["image_paths"]))
        kept_study = kept_by_images.setdefault(images, record["study_id"])
        if kept_study != record["study_id"]:
            duplicate_of[record["study_id"]] = kept_study
    if duplicate_of:
        logger.info(
            "Dropped %d COVID-19 collection studies whose image files are byte-identical to those of a kept study (dropped: kept): %s.",
            len(duplicate_of),
            duplicate_of,
        )
    return [record for record in records if record["study_id"] not in duplicate_of]


def load_covid_chestxray_records(
    data_dir: str | Path | None = None,
    split: str | Path | None = DEFAULT_SPLIT_FILE,
    seed: int = 0,
    include_views: Collection[str] | None = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
) -> list[StudyRecord]:
    """Load the COVID-19 image data collection as study records (see `load_covid_chestxray` for the arguments).

    Keeps X-ray rows whose `folder/filename` exists and whose `clinical_notes` is non-empty. Rows of
    one patient with the same `offset` form one study, with the images in row order. A row whose
    offset is blank or "?" is a study of its own. `history` comes from `build_history`. `report` is
    the clinical note (distinct notes of the study's rows joined with a space).

    Patients whose image bytes or notes are identical are linked into one case, and `patient_id`
    is the case's group id (see `group_patients`); `metadata["patientid"]` keeps the id of
    metadata.csv. A study whose image files are byte-identical to those of another study is
    dropped, and the drop is logged.
    """
    folder = resolve_covid_dir(data_dir)
    rows = read_covid_metadata(folder / METADATA_FILE)

    # 1. Keep X-ray rows with a note and an image file on disk.
    selected: list[dict[str, str]] = []
    counts = {"not X-ray": 0, "no clinical note": 0, "image file missing": 0, "view not included": 0}
    for row in rows:
        if row["modality"] != "X-ray":
            counts["not X-ray"] += 1
        elif not row["clinical_notes"]:
            counts["no clinical note"] += 1
        elif not (folder / row["folder"] / row["filename"]).is_file():
            counts["image file missing"] += 1
        elif include_views is not None and _normalize_view(row.get("view", "")) not in include_views:
            counts["view not included"] += 1
        else:
            selected.append(row)
    logger.info("Kept %d of %d rows of %s; dropped: %s.", len(selected), len(rows), folder / METADATA_FILE, counts)

    # 2. Group rows into studies.
    rows_by_study: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for row in selected:
        rows_by_study[_study_key(row)].append(row)

    records: list[StudyRecord] = []
    metadata_by_study: dict[str, dict[str, object]] = {}
    for (patient_id, study_key), study_rows in rows_by_study.items():
        image_paths: list[str] = []
        views: list[str] = []
        for row in study_rows:
            path = str((folder / row["folder"] / row["filename"]).resolve())
            if path not in image_paths:
                image_paths.append(path)
                views.append(_normalize_view(row.get("view", "")))
        metadata = {name: "; ".join(_unique([row.get(name, "") for row in study_rows])) for name in _METADATA_FIELDS}
        metadata.update(
            citation=_CITATION,
            offset=study_rows[0]["offset"] if _known(study_rows[0]["offset"]) else "",
            filenames=[row["filename"] for row in study_rows],
            patientid=patient_id,
        )
        study_id = f"{patient_id}_{study_key.removeprefix('file:')}"
        metadata_by_study[study_id] = metadata
        records.append(
            StudyRecord(
                study_id=study_id,
                patient_id=patient_id,
                image_paths=image_paths,
                views=views,
                history=build_history(study_rows),
                report=_merge_notes([row["clinical_notes"] for row in study_rows]),
                split="",
                source=SOURCE_NAME,
                metadata="",
            )
        )

    # 3. Link the patients of one case, then drop repeated studies. Linking comes first because the
    # repeated studies are what link the patient ids of a case.
    digests = _image_digests(records)
    groups = _link_identical_cases(records, digests)
    records = _drop_duplicate_studies(records, digests)

    # 4. Assign splits by the patient ids of metadata.csv, then replace each patient id with its
    # group id, so that retrieval also skips the studies of linked patients. The original id stays
    # in `metadata["patientid"]`.
    assigned = _assign_splits(records, folder, split, seed, fractions, groups)
    for record in assigned:
        record["patient_id"] = groups.get(record["patient_id"], record["patient_id"])
        record["metadata"] = encode_metadata(metadata_by_study[record["study_id"]])
    if split is not None:
        check_patient_disjoint(assigned, source=f"the split file {split}")
    return assigned


def _assign_splits(
    records: list[StudyRecord],
    folder: Path,
    split: str | Path | None,
    seed: int,
    fractions: Sequence[float],
    groups: dict[str, str],
) -> list[StudyRecord]:
    """Set the split of each record from the split file `split`, or by linked patient groups when it is None."""
    if split is None:
        return split_by_patient(records, fractions=fractions, seed=seed, groups=groups)
    split_path = Path(split)
    if not split_path.is_absolute() and not split_path.is_file() and (folder / split_path).is_file():
        split_path = folder / split_path
    if not split_path.is_file():
        raise FileNotFoundError(f"Split file {split_path} not found. Pass split=None to split by patient with a seed, or split=<path> to a split CSV.")
    assigned, unmatched = apply_split_file(records, split_path)
    if unmatched:
        # Dropped rather than raised: a full copy of the collection has patients that a split file
        # made for a subset does not list, and the listed ones must keep their splits.
        patients = sorted({record["patient_id"] for record in unmatched})
        logger.warning(
            "Dropped %d COVID-19 collection studies of %d patients not listed in the split file %s (patients %s%s).",
            len(unmatched),
            len(patients),
            split_path,
            ", ".join(patients[:10]),
            ", ..." if len(patients) > 10 else "",
        )
    return assigned


def load_covid_chestxray(
    data_dir: str | Path | None = None,
    split: str | Path | None = DEFAULT_SPLIT_FILE,
    seed: int = 0,
    include_views: Collection[str] | None = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
) -> datasets.DatasetDict:
    """Load the COVID-19 image data collection as a `DatasetDict` of studies.

    Args:
        data_dir: folder holding `metadata.csv` and `images/`, or the data root holding it as
            `covid-chestxray/`; default `default_data_dir()`.
        split: a split CSV keyed by `patientid` or `patient_id`, or by `study_id` as written by
            `eir.data.splits.write_split_file`. A relative path is also looked up in the dataset
            folder. The default is the fixed patient split `splits.csv`. Studies of patients it does not list are
            dropped with a warning. None builds a patient split with `seed` and `fractions`, keeping
            patients whose image bytes or notes are identical in one split, because the collection
            lists some cases under two patient ids. A split file that puts linked patients in two
            splits raises `ValueError`.
        include_views: view values to keep ("PA", "AP", "AP Supine", "L", "" for unknown);
            None keeps all.
    """
    records = load_covid_chestxray_records(data_dir=data_dir, split=split, seed=seed, include_views=include_views, fractions=fractions)
    return records_to_dataset_dict(records)


__all__ = [
    "EXCLUDED_HISTORY_COLUMNS",
    "build_history",
    "load_covid_chestxray",
    "load_covid_chestxray_records",
    "read_covid_metadata",
    "resolve_covid_dir",
]
