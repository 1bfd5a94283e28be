"""Split files and given split values that put one patient in two splits are rejected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from eir.data.imagefolder import load_imagefolder_records
from eir.data.splits import apply_split_file, check_patient_disjoint


def _records() -> list[dict]:
    return [
        {"study_id": "s1", "patient_id": "p1", "split": ""},
        {"study_id": "s2", "patient_id": "p1", "split": ""},
        {"study_id": "s3", "patient_id": "p2", "split": ""},
    ]


def test_check_names_patient_studies_and_source():
    records = [{**record, "split": split} for record, split in zip(_records(), ("train", "test", "train"))]
    with pytest.raises(ValueError, match=r"Patient 'p1' occurs in both 'train' \(study 's1'\) and 'test' \(study 's2'\) in my file") as error:
        check_patient_disjoint(records, source="my file")
    assert "Assign all studies of a patient to one split" in str(error.value)


def test_study_keyed_split_file_overlap_raises(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("study_id,split\ns1,train\ns2,val\ns3,test\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"Patient 'p1' occurs in both 'train' .* and 'validation' .*{path.name}"):
        apply_split_file(_records(), path)


def test_disjoint_split_file_accepted(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("study_id,split\ns1,train\ns2,train\ns3,test\n", encoding="utf-8")
    assigned, unmatched = apply_split_file(_records(), path)
    assert [record["split"] for record in assigned] == ["train", "train", "test"]
    assert unmatched == []


def test_imagefolder_given_splits_overlap_raises(tmp_path):
    entries = [
        {"study_id": "a", "patient_id": "p1", "file_name": "a.png", "report": "Clear lungs.", "split": "train"},
        {"study_id": "b", "patient_id": "p1", "file_name": "b.png", "report": "Small effusion.", "split": "test"},
    ]
    for entry in entries:
        Image.new("L", (8, 8), color=40).save(tmp_path / entry["file_name"])
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(entry) for entry in entries) + "\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"Patient 'p1' occurs in both 'train' \(study 'a'\) and 'test' \(study 'b'\).*metadata\.jsonl"):
        load_imagefolder_records(Path(tmp_path))
