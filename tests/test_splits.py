"""Tests of patient-disjoint splitting, split files and study record checks (synthetic records)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from eir.data.records import STUDY_COLUMNS, records_to_dataset_dict, validate_record
from eir.data.splits import (
    apply_split_file,
    check_patient_disjoint,
    group_patients,
    read_split_file,
    split_by_patient,
    write_split_file,
)


def _records(n_patients: int = 100, studies_per_patient: int = 3) -> list[dict]:
    return [
        {
            "study_id": f"p{patient}_s{study}",
            "patient_id": f"p{patient}",
            "image_paths": [],
            "views": [],
            "history": "",
            "report": f"report {patient} {study}",
            "split": "",
            "source": "synthetic",
            "metadata": "{}",
        }
        for patient in range(n_patients)
        for study in range(studies_per_patient)
    ]


def _split_of_study(records: list[dict]) -> dict[str, str]:
    return {record["study_id"]: record["split"] for record in records}


def test_split_deterministic_under_seed():
    records = _records()
    assert _split_of_study(split_by_patient(records, seed=7)) == _split_of_study(split_by_patient(records, seed=7))


def test_split_independent_of_record_order():
    records = _records()
    shuffled = list(records)
    random.Random(1).shuffle(shuffled)
    assert _split_of_study(split_by_patient(records, seed=7)) == _split_of_study(split_by_patient(shuffled, seed=7))


def test_split_changes_with_seed():
    records = _records()
    assert _split_of_study(split_by_patient(records, seed=1)) != _split_of_study(split_by_patient(records, seed=2))


def test_split_patient_disjoint():
    assigned = split_by_patient(_records(), seed=3)
    check_patient_disjoint(assigned)
    splits_of_patient: dict[str, set[str]] = {}
    for record in assigned:
        splits_of_patient.setdefault(record["patient_id"], set()).add(record["split"])
    assert all(len(splits) == 1 for splits in splits_of_patient.values())


def test_split_fractions_count_patients():
    assigned = split_by_patient(_records(n_patients=100, studies_per_patient=2), fractions=(0.7, 0.15, 0.15), seed=0)
    patients = Counter(record["split"] for record in assigned if record["study_id"].endswith("_s0"))
    assert patients == {"train": 70, "validation": 15, "test": 15}


def test_split_leaves_input_unchanged():
    records = _records(n_patients=5)
    split_by_patient(records, seed=0)
    assert all(record["split"] == "" for record in records)


def test_split_groups_kept_together():
    records = _records(n_patients=30, studies_per_patient=1)
    groups = group_patients([["p1", "p2"], ["p2", "p3"], ["p10", "p20"]])
    for seed in range(20):
        split_of_patient = {record["patient_id"]: record["split"] for record in split_by_patient(records, seed=seed, groups=groups)}
        assert split_of_patient["p1"] == split_of_patient["p2"] == split_of_patient["p3"]
        assert split_of_patient["p10"] == split_of_patient["p20"]


def test_group_patients_merges_overlaps():
    groups = group_patients([["b", "c"], ["d", "e"], ["a", "b"], ["f"]])
    assert groups == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "d", "f": "f"}


@pytest.mark.parametrize("fractions", [(0.7, 0.3), (0.8, 0.2, 0.2), (1.2, -0.1, -0.1)])
def test_split_invalid_fractions_raise(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_by_patient(_records(n_patients=3), fractions=fractions)


def test_check_patient_disjoint_raises():
    records = _records(n_patients=1, studies_per_patient=2)
    records[0]["split"], records[1]["split"] = "train", "test"
    with pytest.raises(ValueError, match="'p0'"):
        check_patient_disjoint(records)


def test_split_file_round_trip(tmp_path):
    assigned = split_by_patient(_records(n_patients=10), seed=0)
    path = write_split_file(assigned, tmp_path / "out" / "split.csv")

    assert path.read_text(encoding="utf-8").splitlines()[0] == "study_id,patient_id,split"
    table = read_split_file(path)
    assert table["study"] == _split_of_study(assigned)
    assert table["patient"] == {record["patient_id"]: record["split"] for record in assigned}

    fresh = _records(n_patients=11)
    reassigned, unmatched = apply_split_file(fresh, path)
    assert _split_of_study(reassigned) == _split_of_study(assigned)
    assert [record["patient_id"] for record in unmatched] == ["p10"] * 3


def test_patient_split_file_with_val_alias(tmp_path):
    path = tmp_path / "patients.csv"
    path.write_text("patientid,split\np0,train\np1,val\n", encoding="utf-8")

    assigned, unmatched = apply_split_file(_records(n_patients=3, studies_per_patient=1), path)

    assert _split_of_study(assigned) == {"p0_s0": "train", "p1_s0": "validation"}
    assert [record["study_id"] for record in unmatched] == ["p2_s0"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("study_id,split\na,train\na,test\n", "both"),
        ("study_id,split\na,holdout\n", "holdout"),
        ("name,split\na,train\n", "header"),
    ],
)
def test_read_split_file_rejects_bad_content(tmp_path, content, message):
    path = tmp_path / "split.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_split_file(path)


def test_records_to_dataset_dict_columns():
    assigned = split_by_patient(_records(n_patients=20, studies_per_patient=1), seed=0)
    dataset = records_to_dataset_dict(assigned)
    assert set(dataset) == {"train", "validation", "test"}
    assert sum(len(split) for split in dataset.values()) == 20
    assert dataset["train"].column_names == list(STUDY_COLUMNS)
    assert dataset["train"].features["image_paths"].feature.dtype == "string"


def test_validate_record_rejects_view_mismatch():
    record = {**_records(n_patients=1, studies_per_patient=1)[0], "split": "train", "image_paths": ["/a.png"], "views": []}
    with pytest.raises(ValueError, match="1 image paths but 0 views"):
        validate_record(record)


def test_records_to_dataset_dict_rejects_duplicate_ids():
    records = [{**record, "split": "train"} for record in _records(n_patients=1, studies_per_patient=1)] * 2
    with pytest.raises(ValueError, match="more than once"):
        records_to_dataset_dict(records)
