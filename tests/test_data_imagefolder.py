"""Generic image-folder loader (`metadata.jsonl` plus images) on folders written by the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from eir.data import DATASET_NAMES, load_study_dataset
from eir.data.imagefolder import load_imagefolder, load_imagefolder_records
from eir.data.splits import check_patient_disjoint


def _write_folder(folder: Path, entries: list[dict], images: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = images if images is not None else [name for entry in entries for name in entry.get("file_names", [entry.get("file_name")]) if name]
    for index, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (16, 16), color=20 + index).save(path)
    lines = [json.dumps(entry) for entry in entries]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _studies(count: int, patients: int) -> list[dict]:
    return [
        {
            "study_id": f"s{index}",
            "patient_id": f"p{index % patients}",
            "file_names": [f"s{index}/frontal.png", f"s{index}/lateral.png"],
            "views": ["PA", "L"],
            "history": f"History {index}.",
            "report": f"Report {index}.",
            "site": "clinic A",
        }
        for index in range(count)
    ]


def test_given_splits_and_fields(tmp_path):
    entries = [
        {"study_id": "a", "patient_id": "p1", "file_name": "a.png", "history": "Cough.", "report": "Clear lungs.", "split": "train"},
        {"study_id": "b", "patient_id": "p2", "file_names": ["b1.png", "b2.png"], "report": "Small effusion.", "split": "val"},
        {"study_id": "c", "patient_id": "p3", "file_names": ["c.png"], "report": "No change.", "split": "test", "scanner": "X1"},
    ]
    folder = _write_folder(tmp_path / "data", entries)
    dataset = load_imagefolder(folder)

    assert sorted(dataset) == ["test", "train", "validation"]
    train = dataset["train"][0]
    assert train["image_paths"] == [str((folder / "a.png").resolve())]
    assert train["views"] == [""]
    assert train["history"] == "Cough."
    assert train["source"] == "imagefolder"
    validation = dataset["validation"][0]
    assert [Path(path).name for path in validation["image_paths"]] == ["b1.png", "b2.png"]
    assert validation["history"] == ""
    assert json.loads(dataset["test"][0]["metadata"]) == {"scanner": "X1"}


def test_split_by_patient_with_seed(tmp_path):
    folder = _write_folder(tmp_path / "data", _studies(30, patients=12))
    records = load_imagefolder_records(folder, seed=3)
    again = load_imagefolder_records(folder, seed=3)
    other = load_imagefolder_records(folder, seed=4)

    check_patient_disjoint(records)
    assert {record["split"] for record in records} == {"train", "validation", "test"}
    assert [record["split"] for record in records] == [record["split"] for record in again]
    assert [record["split"] for record in records] != [record["split"] for record in other]
    assert records[0]["views"] == ["PA", "L"]
    assert json.loads(records[0]["metadata"]) == {"site": "clinic A"}


def test_registered_loader(tmp_path):
    folder = _write_folder(tmp_path / "data", _studies(10, patients=10))
    assert "imagefolder" in DATASET_NAMES
    dataset = load_study_dataset("imagefolder", data_dir=folder, fractions=(0.6, 0.2, 0.2))
    assert sum(part.num_rows for part in dataset.values()) == 10
    assert dataset["train"].num_rows == 6


def test_missing_image_raise_or_skip(tmp_path):
    entries = _studies(3, patients=3)
    entries[1]["file_names"] = ["s1/frontal.png", "s1/missing.png"]
    entries[2]["file_names"] = ["gone.png"]
    entries[2]["views"] = ["PA"]
    folder = _write_folder(tmp_path / "data", entries, images=["s0/frontal.png", "s0/lateral.png", "s1/frontal.png"])

    with pytest.raises(FileNotFoundError, match="line 2.*missing.png"):
        load_imagefolder_records(folder)
    records = {record["study_id"]: record for record in load_imagefolder_records(folder, missing_images="skip")}
    assert sorted(records) == ["s0", "s1"]
    assert records["s1"]["views"] == ["PA"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"patient_id": "p", "file_name": "a.png", "report": "r"}, "missing 'study_id'"),
        ({"study_id": "a", "file_name": "a.png"}, "missing 'report'"),
        ({"study_id": "a", "report": "r"}, "missing 'file_names'"),
        ({"study_id": "a", "report": "r", "file_names": []}, "non-empty list"),
        ({"study_id": "a", "report": "r", "file_name": "a.png", "file_names": ["a.png"]}, "both"),
        ({"study_id": "a", "report": "r", "file_name": "a.png", "views": ["PA", "L"]}, "'views' must be a list of 1"),
        ({"study_id": "a", "report": "r", "file_name": "a.png", "split": "dev"}, "Unknown split 'dev'"),
    ],
)
def test_invalid_lines(tmp_path, entry, message):
    folder = _write_folder(tmp_path / "data", [entry], images=["a.png"])
    with pytest.raises(ValueError, match=message):
        load_imagefolder_records(folder)


def test_mixed_split_presence(tmp_path):
    entries = _studies(2, patients=2)
    entries[0]["split"] = "train"
    folder = _write_folder(tmp_path / "data", entries)
    with pytest.raises(ValueError, match="on every line or on none"):
        load_imagefolder_records(folder)


def test_invalid_json_and_missing_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text('{"study_id": "a",\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: invalid JSON"):
        load_imagefolder_records(folder)
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        load_imagefolder_records(tmp_path / "absent")
    with pytest.raises(ValueError, match="data_dir is missing"):
        load_imagefolder_records(None)
