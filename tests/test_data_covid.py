"""Tests of the COVID-19 image data collection loader on the real subset and on small synthetic copies."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from eir.data import load_study_dataset
from eir.data.covid import EXCLUDED_HISTORY_COLUMNS, load_covid_chestxray_records, read_covid_metadata
from eir.data.records import STUDY_COLUMNS
from eir.data.splits import check_patient_disjoint
from eir.paths import default_data_dir

COVID_DIR = default_data_dir() / "covid-chestxray"
requires_data = pytest.mark.skipif(
    not (COVID_DIR / "metadata.csv").is_file(),
    reason=f"COVID-19 image data collection not found at {COVID_DIR} (set EIR_DATA_DIR to the data root)",
)
HISTORY_LABELS = {
    "Sex",
    "Age",
    "View",
    "Days since symptom onset or admission",
    "Temperature",
    "pO2 saturation",
    "Leukocyte count",
    "Neutrophil count",
    "Lymphocyte count",
    "Intubated at the time of the image",
    "In ICU at the time of the image",
}


@pytest.fixture(scope="module")
def records():
    return load_covid_chestxray_records(COVID_DIR)


def _history_labels(history: str) -> set[str]:
    return set(re.findall(r"(?:^|\. )([^:.]+): ", history))


@requires_data
def test_counts_per_split(records):
    studies = Counter(record["split"] for record in records)
    images = Counter()
    patients: dict[str, set[str]] = {}
    for record in records:
        images[record["split"]] += len(record["image_paths"])
        patients.setdefault(record["split"], set()).add(record["patient_id"])
    assert studies == {"train": 186, "validation": 37, "test": 34}
    assert images == {"train": 213, "validation": 41, "test": 37}
    assert {split: len(ids) for split, ids in patients.items()} == {"train": 103, "validation": 22, "test": 21}


@requires_data
def test_studies_group_rows_by_offset(records):
    by_id = {record["study_id"]: record for record in records}
    study = by_id["17_3"]
    assert [Path(path).name for path in study["image_paths"]] == ["jkms-35-e79-g001-l-a.jpg"]
    assert study["history"] == "Sex: male. Age: 54. View: AP. Days since symptom onset or admission: 3."
    assert study["report"].startswith("Small consolidation in right upper lobe")
    assert {"17_9", "17_15"} <= by_id.keys()
    two_views = by_id["177_0"]
    assert two_views["views"] == ["PA", "L"]
    assert len(two_views["image_paths"]) == 2
    # Blank offset: each row is its own study, named after its file.
    assert by_id["5_ARDSSevere.png"]["views"] == ["PA"]


@requires_data
def test_patient_disjoint(records):
    check_patient_disjoint(records)


@requires_data
def test_no_studies_share_image_bytes(records):
    study_of_images: dict[tuple[str, ...], str] = {}
    for record in records:
        images = tuple(sorted(hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in record["image_paths"]))
        first = study_of_images.setdefault(images, record["study_id"])
        assert first == record["study_id"], f"{record['study_id']} repeats the image files of {first}"


@requires_data
def test_duplicate_studies_dropped(records, caplog):
    study_ids = {record["study_id"] for record in records}
    assert {"285_30", "285_210", "285_240", "287_7"} <= study_ids
    assert not {"339_30", "339_210", "339_240", "340_7"} & study_ids
    with caplog.at_level(logging.INFO, logger="eir.data.covid"):
        load_covid_chestxray_records(COVID_DIR)
    assert any(message.startswith("Dropped 5 COVID-19 collection studies whose image files are byte-identical") for message in caplog.messages)


@requires_data
def test_raw_patient_id_in_metadata(records):
    for record in records:
        raw_id = json.loads(record["metadata"])["patientid"]
        assert record["study_id"].startswith(f"{raw_id}_"), record["study_id"]
        assert record["patient_id"] == raw_id or record["patient_id"] < raw_id, record["study_id"]


@requires_data
def test_image_paths_exist(records):
    for record in records:
        assert record["image_paths"], record["study_id"]
        assert len(record["views"]) == len(record["image_paths"])
        for path in record["image_paths"]:
            assert Path(path).is_absolute()
            assert Path(path).is_file(), path


@requires_data
def test_history_uses_only_allowed_fields(records):
    for record in records:
        assert _history_labels(record["history"]) <= HISTORY_LABELS, record["history"]


@requires_data
def test_history_has_no_outcome_values(records):
    rows = read_covid_metadata(COVID_DIR / "metadata.csv")
    rows_by_file = {row["filename"]: row for row in rows}
    checked = 0
    for record in records:
        history = record["history"].lower()
        row = rows_by_file[Path(record["image_paths"][0]).name]
        # The diagnosis text (e.g. "pneumocystis", "covid-19") must not reach the history.
        if row["finding"] not in ("", "todo"):
            assert row["finding"].lower() not in history, record["study_id"]
            checked += 1
        for word in ("survival", "went", "extubat", "supplemental", "finding", "covid", "pneumonia"):
            assert word not in history, (record["study_id"], record["history"])
    assert checked > 150


@requires_data
def test_metadata_attribution(records):
    metadata = json.loads(next(record for record in records if record["study_id"] == "17_3")["metadata"])
    assert metadata["license"] == "CC BY-NC-SA"
    assert metadata["doi"] == "10.3346/jkms.2020.35.e79"
    assert metadata["finding"] == "COVID-19"
    assert metadata["location"] == "Myongji Hospital, Goyang, South Korea"
    assert {"url", "other_notes", "date", "citation"} <= metadata.keys()


@requires_data
def test_dataset_dict_columns():
    dataset = load_study_dataset("covid_chestxray", data_dir=COVID_DIR.parent)
    assert {name: len(split) for name, split in dataset.items()} == {"train": 186, "validation": 37, "test": 34}
    assert dataset["train"].column_names == list(STUDY_COLUMNS)


@requires_data
def test_include_views_filters_rows():
    records = load_covid_chestxray_records(COVID_DIR, include_views={"PA"})
    assert sum(len(record["image_paths"]) for record in records) == 139
    assert {view for record in records for view in record["views"]} == {"PA"}


@requires_data
def test_seeded_split_groups_identical_cases():
    first = load_covid_chestxray_records(COVID_DIR, split=None, seed=5)
    second = load_covid_chestxray_records(COVID_DIR, split=None, seed=5)
    assert [(record["study_id"], record["split"]) for record in first] == [(record["study_id"], record["split"]) for record in second]
    assert len(first) == 257
    # Patients 339 and 340 repeat the images and notes of patients 285 and 287, so their repeated
    # studies are dropped and no study keeps their ids.
    assert not {"339", "340"} & {record["patient_id"] for record in first}
    check_patient_disjoint(first)
    seen: dict[str, str] = {}
    for record in first:
        assert seen.setdefault(record["report"], record["split"]) == record["split"], record["study_id"]


@requires_data
def test_split_file_missing_patients_dropped(tmp_path, caplog):
    rows = list(csv.DictReader((COVID_DIR / "splits.csv").open(encoding="utf-8")))
    partial = tmp_path / "partial.csv"
    with partial.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patientid", "split"])
        writer.writerows([row["patientid"], row["split"]] for row in rows if row["patientid"] != "17")

    with caplog.at_level(logging.WARNING, logger="eir.data.covid"):
        records = load_covid_chestxray_records(COVID_DIR, split=partial)

    assert "17" not in {record["patient_id"] for record in records}
    assert len(records) == 257 - 3
    assert any("Dropped 3 " in message and "patients 17" in message for message in caplog.messages)


@requires_data
def test_missing_split_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="split=None"):
        load_covid_chestxray_records(COVID_DIR, split=tmp_path / "absent.csv")


def _write_synthetic_collection(folder: Path) -> None:
    """Write a metadata.csv (real header, trailing comma) with marker values in the outcome columns."""
    header = "patientid,offset,sex,age,finding,survival,intubated,intubation_present,went_icu,in_icu,needed_supplemental_O2,extubated,temperature,pO2_saturation,leukocyte_count,neutrophil_count,lymphocyte_count,view,modality,date,location,folder,filename,doi,url,license,clinical_notes,other_notes,"
    columns = header.split(",")[:-1]
    base = dict.fromkeys(columns, "")
    rows = [
        {**base, "patientid": "7", "offset": "2", "sex": "F", "age": "41", "view": "PA", "modality": "X-ray", "folder": "images", "filename": "a.png",
         "temperature": "38.5", "pO2_saturation": "91", "intubation_present": "N", "in_icu": "Y", "clinical_notes": "Fever and cough. Opacity right base.", "license": "CC BY"},
        {**base, "patientid": "7", "offset": "2", "view": "L", "modality": "X-ray", "folder": "images", "filename": "b.png", "clinical_notes": "Fever and cough. Opacity right base."},
        {**base, "patientid": "8", "offset": "?", "view": "AP", "modality": "X-ray", "folder": "images", "filename": "c.png", "clinical_notes": "Second case."},
        {**base, "patientid": "8", "offset": "", "view": "?", "modality": "X-ray", "folder": "images", "filename": "d.png", "clinical_notes": "Second case, later."},
        {**base, "patientid": "9", "offset": "0", "modality": "CT", "folder": "images", "filename": "e.png", "clinical_notes": "CT row."},
        {**base, "patientid": "9", "offset": "1", "modality": "X-ray", "folder": "images", "filename": "missing.png", "clinical_notes": "No file."},
        {**base, "patientid": "9", "offset": "3", "modality": "X-ray", "folder": "images", "filename": "f.png", "clinical_notes": ""},
    ]
    for row in rows:
        for column in EXCLUDED_HISTORY_COLUMNS:
            row[column] = f"MARKER_{column}"
    (folder / "images").mkdir(parents=True)
    for name in "abcdef":
        Image.new("L", (4, 4), color=ord(name)).save(folder / "images" / f"{name}.png")
    with (folder / "metadata.csv").open("w", encoding="utf-8", newline="") as handle:
        handle.write(header + "\n")
        writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
        for row in rows:
            writer.writerow([row[column] for column in columns] + [""])


def test_synthetic_selection_and_history(tmp_path):
    _write_synthetic_collection(tmp_path)

    records = {record["study_id"]: record for record in load_covid_chestxray_records(tmp_path, split=None, seed=0)}

    assert sorted(records) == ["7_2", "8_c.png", "8_d.png"]
    study = records["7_2"]
    assert [Path(path).name for path in study["image_paths"]] == ["a.png", "b.png"]
    assert study["views"] == ["PA", "L"]
    assert study["history"] == (
        "Sex: female. Age: 41. View: PA, L. Days since symptom onset or admission: 2. Temperature: 38.5 C. "
        "pO2 saturation: 91%. Intubated at the time of the image: no. In ICU at the time of the image: yes."
    )
    assert study["report"] == "Fever and cough. Opacity right base."
    assert records["8_d.png"]["views"] == [""]
    assert records["8_c.png"]["history"] == "View: AP."
    for record in records.values():
        assert "MARKER" not in record["history"], record["history"]
        assert json.loads(record["metadata"])["finding"] == "MARKER_finding"


def test_synthetic_identical_images_grouped(tmp_path):
    _write_synthetic_collection(tmp_path)
    # Patient 10 repeats the image bytes of patient 7 under another file name and note.
    (tmp_path / "images" / "g.png").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    with (tmp_path / "metadata.csv").open("a", encoding="utf-8", newline="") as handle:
        handle.write("10,5,,,,,,,,,,,,,,,,PA,X-ray,,,images,g.png,,,,Copy of case seven.,,\n")

    for seed in range(10):
        records = load_covid_chestxray_records(tmp_path, split=None, seed=seed, fractions=(0.5, 0.25, 0.25))
        by_id = {record["study_id"]: record for record in records}
        assert by_id["7_2"]["split"] == by_id["10_5"]["split"]


def _raw_patient_ids(records) -> dict[str, str]:
    return {record["study_id"]: json.loads(record["metadata"])["patientid"] for record in records}


def test_linked_patients_share_id(tmp_path):
    _write_synthetic_collection(tmp_path)
    # Patient 10 repeats one image of patient 7; patient 11 repeats the note of patient 8.
    (tmp_path / "images" / "g.png").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    Image.new("L", (4, 4), color=200).save(tmp_path / "images" / "h.png")
    with (tmp_path / "metadata.csv").open("a", encoding="utf-8", newline="") as handle:
        handle.write("10,5,,,,,,,,,,,,,,,,PA,X-ray,,,images,g.png,,,,Copy of case seven.,,\n")
        handle.write("11,4,,,,,,,,,,,,,,,,PA,X-ray,,,images,h.png,,,,Second case.,,\n")

    records = load_covid_chestxray_records(tmp_path, split=None, seed=0)
    patient_of_study = {record["study_id"]: record["patient_id"] for record in records}

    # Group ids are the smallest raw id of the group in string order.
    assert patient_of_study["7_2"] == patient_of_study["10_5"] == "10"
    assert patient_of_study["8_c.png"] == patient_of_study["8_d.png"] == patient_of_study["11_4"] == "11"
    assert _raw_patient_ids(records) == {"7_2": "7", "10_5": "10", "8_c.png": "8", "8_d.png": "8", "11_4": "11"}


def test_synthetic_repeated_study_dropped(tmp_path, caplog):
    _write_synthetic_collection(tmp_path)
    # Patient 12 repeats both images of study 7_2 under new names, with another note.
    for source, target in (("a.png", "a2.png"), ("b.png", "b2.png")):
        (tmp_path / "images" / target).write_bytes((tmp_path / "images" / source).read_bytes())
    with (tmp_path / "metadata.csv").open("a", encoding="utf-8", newline="") as handle:
        handle.write("12,2,,,,,,,,,,,,,,,,PA,X-ray,,,images,b2.png,,,,Repeated case.,,\n")
        handle.write("12,2,,,,,,,,,,,,,,,,L,X-ray,,,images,a2.png,,,,Repeated case.,,\n")

    with caplog.at_level(logging.INFO, logger="eir.data.covid"):
        records = load_covid_chestxray_records(tmp_path, split=None, seed=0)

    # "12_2" sorts before "7_2" in (patient id, study id) string order, so it is the one kept.
    assert sorted(record["study_id"] for record in records) == ["12_2", "8_c.png", "8_d.png"]
    assert any("Dropped 1 COVID-19 collection studies" in message and "'7_2': '12_2'" in message for message in caplog.messages)


def test_split_file_separating_case_raises(tmp_path):
    _write_synthetic_collection(tmp_path)
    (tmp_path / "images" / "g.png").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    with (tmp_path / "metadata.csv").open("a", encoding="utf-8", newline="") as handle:
        handle.write("10,5,,,,,,,,,,,,,,,,PA,X-ray,,,images,g.png,,,,Copy of case seven.,,\n")
    split_file = tmp_path / "splits.csv"
    split_file.write_text("patientid,split\n7,train\n8,train\n10,test\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"Patient '10' occurs in both 'train' .* and 'test'.*splits\.csv"):
        load_covid_chestxray_records(tmp_path, split=split_file)
