"""Patient-disjoint train/validation/test splits, and split files (CSV) to save and reuse them."""

from __future__ import annotations

import csv
import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from eir.data.records import SPLIT_NAMES

logger = logging.getLogger(__name__)

SPLIT_FILE_COLUMNS: tuple[str, ...] = ("study_id", "patient_id", "split")
# Spellings of split names found in published split files, mapped to the names used here.
_SPLIT_ALIASES: dict[str, str] = {"train": "train", "val": "validation", "valid": "validation", "validation": "validation", "test": "test"}


def normalize_split_name(name: str, *, source: str = "split value") -> str:
    """Map "train", "val", "valid", "validation" or "test" (any case, padded or not) to a name in `SPLIT_NAMES`."""
    normalized = _SPLIT_ALIASES.get(name.strip().lower())
    if normalized is None:
        raise ValueError(f"Unknown split {name!r} in {source}; expected one of {sorted(_SPLIT_ALIASES)}.")
    return normalized


def group_patients(linked_patients: Iterable[Iterable[str]]) -> dict[str, str]:
    """Merge patient ids that belong to one case, with union-find.

    Each item of `linked_patients` lists patient ids known to be the same case (for example the
    patients that share an image file). Linked sets that overlap are merged. Returns a mapping from
    every patient id seen to its group id, the smallest patient id of the group in string order, so the result does
    not depend on the order of the input.
    """
    parent: dict[str, str] = {}

    def find(patient: str) -> str:
        parent.setdefault(patient, patient)
        root = patient
        while parent[root] != root:
            root = parent[root]
        while parent[patient] != root:
            parent[patient], patient = root, parent[patient]
        return root

    for linked in linked_patients:
        members = list(linked)
        for member in members[1:]:
            root_a, root_b = find(members[0]), find(member)
            if root_a != root_b:
                # Keep the smaller id as root so group ids are the minimum of each group.
                parent[max(root_a, root_b)] = min(root_a, root_b)
        if members:
            find(members[0])
    return {patient: find(patient) for patient in parent}


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"fractions must give (train, validation, test), got {len(fractions)} values: {tuple(fractions)}.")
    if any(fraction < 0 for fraction in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}.")
    return float(fractions[0]), float(fractions[1]), float(fractions[2])


def split_by_patient(
    records: Sequence[dict[str, Any]],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Assign a split to every record so that no patient group appears in two splits.

    Groups are the values of `groups` (patient id to group id, see `group_patients`); a patient
    missing from `groups` is a group of its own. The sorted group ids are shuffled with
    `random.Random(seed)` and cut in order: the first `round(n * fractions[0])` groups go to
    "train", the next `round(n * fractions[1])` to "validation", the rest to "test". The split is
    therefore a function of the set of patient ids, the groups, the fractions and the seed, and
    not of the record order. Fractions count groups, not studies.

    Returns new record dicts with `split` set; the input records are not changed.
    """
    train_fraction, validation_fraction, _ = _check_fractions(fractions)
    groups = groups or {}
    group_ids = sorted({groups.get(record["patient_id"], record["patient_id"]) for record in records})
    random.Random(seed).shuffle(group_ids)

    n_train = round(len(group_ids) * train_fraction)
    n_validation = min(round(len(group_ids) * validation_fraction), len(group_ids) - n_train)
    split_of_group: dict[str, str] = {}
    for index, group_id in enumerate(group_ids):
        if index < n_train:
            split_of_group[group_id] = "train"
        elif index < n_train + n_validation:
            split_of_group[group_id] = "validation"
        else:
            split_of_group[group_id] = "test"

    assigned = [{**record, "split": split_of_group[groups.get(record["patient_id"], record["patient_id"])]} for record in records]
    logger.info(
        "Split %d patient groups with seed %d and fractions %s: studies per split %s.",
        len(group_ids),
        seed,
        tuple(fractions),
        dict(Counter(record["split"] for record in assigned)),
    )
    return assigned


def write_split_file(records: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write a `study_id,patient_id,split` CSV with one row per record, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SPLIT_FILE_COLUMNS)
        for record in records:
            writer.writerow([record["study_id"], record["patient_id"], record["split"]])
    return path


def read_split_file(path: str | Path) -> dict[str, dict[str, str]]:
    """Read a split CSV keyed by study or by patient.

    The header must contain `split` and at least one of `study_id`, `patient_id` or `patientid`.
    Returns `{"study": {study_id: split}, "patient": {patient_id: split}}`; a mapping is empty
    when its column is absent. Split names are normalized ("val" becomes "validation"). A study
    or patient listed twice with different splits raises `ValueError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Split file {path} not found.")
    by_study: dict[str, str] = {}
    by_patient: dict[str, str] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        patient_column = next((name for name in ("patient_id", "patientid") if name in header), None)
        if "split" not in header or ("study_id" not in header and patient_column is None):
            raise ValueError(f"Split file {path} has the header {header}; expected a 'split' column and 'study_id' and/or 'patient_id' (or 'patientid').")
        for line_number, row in enumerate(reader, start=2):
            split = normalize_split_name(row["split"] or "", source=f"{path} line {line_number}")
            for column, mapping in (("study_id", by_study), (patient_column, by_patient)):
                if column is None or column not in row:
                    continue
                key = (row[column] or "").strip()
                if not key:
                    raise ValueError(f"Split file {path} line {line_number}: empty {column!r}.")
                if mapping.setdefault(key, split) != split:
                    raise ValueError(f"Split file {path} line {line_number}: {column} {key!r} is listed in both {mapping[key]!r} and {split!r}.")
    return {"study": by_study, "patient": by_patient}


def apply_split_file(records: Sequence[dict[str, Any]], path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Set each record's split from a split file written by `write_split_file` or keyed by patient.

    A record is matched by study id when the file has a `study_id` column, else by patient id.
    Returns `(assigned, unmatched)`: new dicts with the split set, and the records the file does not
    list (unchanged). The caller decides whether unmatched records are an error. Raises
    `ValueError` when the file puts studies of one patient in two splits.
    """
    table = read_split_file(path)
    key, mapping = ("study_id", table["study"]) if table["study"] else ("patient_id", table["patient"])
    assigned: list[dict[str, Any]] = []
    unmatched: list[dict[str, Any]] = []
    for record in records:
        split = mapping.get(record[key])
        if split is None:
            unmatched.append(record)
        else:
            assigned.append({**record, "split": split})
    check_patient_disjoint(assigned, source=f"the split file {path}")
    return assigned, unmatched


def check_patient_disjoint(records: Iterable[dict[str, Any]], source: str | None = None) -> None:
    """Raise `ValueError` naming a patient id that occurs in more than one split.

    `source` names where the splits came from (such as the split file) in the message.
    """
    split_of_patient: dict[str, tuple[str, str]] = {}
    for record in records:
        patient_id, split = record["patient_id"], record["split"]
        previous_split, previous_study = split_of_patient.setdefault(patient_id, (split, record.get("study_id", "")))
        if previous_split != split:
            origin = f" in {source}" if source else ""
            raise ValueError(
                f"Patient {patient_id!r} occurs in both {previous_split!r} (study {previous_study!r}) and "
                f"{split!r} (study {record.get('study_id', '')!r}){origin}; splits must be patient-disjoint. "
                "Assign all studies of a patient to one split."
            )


__all__ = [
    "SPLIT_FILE_COLUMNS",
    "SPLIT_NAMES",
    "apply_split_file",
    "check_patient_disjoint",
    "group_patients",
    "normalize_split_name",
    "read_split_file",
    "split_by_patient",
    "write_split_file",
]
