"""MIMIC-CXR-JPG loader on a miniature tree in the PhysioNet layout, written by the test."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from eir.data import DATASET_NAMES, MissingImagesError, load_study_dataset
from eir.recipes import load_recipe
from eir.data.mimic_cxr import (
    CHEXPERT_LABELS,
    load_mimic_cxr,
    load_mimic_cxr_records,
    parse_report_sections,
    resolve_mimic_cxr_dir,
    view_label,
)

# Report texts written for this test in the layout of MIMIC-CXR free-text reports.
REPORT_PA_LATERAL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___F with new onset ascites  // eval for infection
 
 TECHNIQUE:  Chest PA and lateral
 
 COMPARISON:  None.
 
 FINDINGS: 
 
 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.
 
 IMPRESSION: 
 
 No acute cardiopulmonary process.
"""

REPORT_PORTABLE = """                                 FINAL REPORT
 HISTORY:  Shortness of breath, evaluate for pneumonia.
 
 REASON FOR EXAMINATION:  Hypoxia.
 
 COMPARISONS:  Chest radiograph from ___.
 
 FINDINGS:  Single portable AP view of the chest.  Mild pulmonary vascular
 congestion.  Small left pleural effusion with adjacent atelectasis.
 
 IMPRESSIONS:  Mild congestion and small left effusion.
"""

REPORT_IMPRESSION_ONLY = """                                 FINAL REPORT
 WET READ: ___ ___ 8:10 PM
  No pneumothorax.
 
 INDICATION:  s/p chest tube removal.
 
 IMPRESSION:  No pneumothorax after removal of the left chest tube.
"""

REPORT_VALIDATION = """                                 FINAL REPORT
 CLINICAL HISTORY:  Fever.
 
 FINDINGS:  Heart size is normal. Lungs are clear.
 
 IMPRESSION:  Normal chest radiograph.
"""

REPORT_TEST = """                                 FINAL REPORT
 INDICATION:  Chest pain.
 
 FINDINGS:  Low lung volumes. No consolidation.
 
 IMPRESSION:  No acute process.
"""

# (subject_id, study_id, split, report or None, [(dicom_id, ViewPosition, written to disk)])
STUDIES = [
    ("10000032", "50414267", "train", REPORT_PA_LATERAL, [("d-lat-1", "LATERAL", True), ("d-pa-1", "PA", True)]),
    ("10000032", "53189527", "train", REPORT_PORTABLE, [("d-ap-2", "AP", True)]),
    ("10000764", "57375967", "train", REPORT_IMPRESSION_ONLY, [("d-ap-3", "AP", True)]),
    ("10000898", "50771383", "validate", REPORT_VALIDATION, [("d-ll-4", "LL", True), ("d-pa-4", "PA", True), ("d-ap-4", "", True)]),
    ("10000935", "51178377", "test", REPORT_TEST, [("d-pa-5", "PA", False)]),
    ("10001176", "53186264", "test", None, [("d-pa-6", "PA", True)]),
    ("11000011", "52000001", "test", REPORT_TEST, [("d-pa-7", "PA", True)]),
]
CHEXPERT_ROWS = {
    ("10000032", "50414267"): {"No Finding": "1.0"},
    ("10000032", "53189527"): {"Pleural Effusion": "1.0", "Atelectasis": "-1.0", "Edema": "0.0"},
}


def _write_csv_gz(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        handle.write(buffer.getvalue())


def _write_jpeg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (24, 20), color=shade).save(path, format="JPEG")


def write_mimic_tree(root: Path, reports_root: Path | None = None) -> Path:
    """Write the MIMIC-CXR-JPG tables, JPEGs and reports of `STUDIES` under `root` (reports under `reports_root`)."""
    reports_root = reports_root or root
    split_rows, metadata_rows = [], []
    for subject, study, split, report, images in STUDIES:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        for index, (dicom_id, position, on_disk) in enumerate(images):
            split_rows.append([dicom_id, study, subject, split])
            metadata_rows.append([dicom_id, subject, study, "CHEST (PA AND LAT)", position, "2544", "3056", "21800506", "213014.531"])
            if on_disk:
                _write_jpeg(folder / f"{dicom_id}.jpg", 40 + 30 * index)
        if report is not None:
            report_path = reports_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(report, encoding="utf-8")
    _write_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    _write_csv_gz(
        root / "mimic-cxr-2.0.0-metadata.csv.gz",
        ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime"],
        metadata_rows,
    )
    chexpert_rows = [
        [subject, study, *[CHEXPERT_ROWS.get((subject, study), {}).get(label, "") for label in CHEXPERT_LABELS]]
        for subject, study, *_ in STUDIES
    ]
    _write_csv_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT_LABELS], chexpert_rows)
    return root


@pytest.fixture
def mimic_root(tmp_path) -> Path:
    return write_mimic_tree(tmp_path / "mimic-cxr-jpg")


def _by_study(records: list[dict]) -> dict[str, dict]:
    return {record["study_id"]: record for record in records}


def test_parse_report_sections():
    sections = parse_report_sections(REPORT_PA_LATERAL)
    assert sections["PREAMBLE"] == "FINAL REPORT"
    assert sections["EXAMINATION"] == "CHEST (PA AND LAT)"
    assert sections["INDICATION"] == "___F with new onset ascites // eval for infection"
    assert sections["COMPARISON"] == "None."
    assert sections["FINDINGS"].startswith("There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular")
    assert sections["FINDINGS"].endswith("The cardiomediastinal silhouette is normal.")
    assert sections["IMPRESSION"] == "No acute cardiopulmonary process."


def test_parse_report_sections_aliases_and_wet_read():
    portable = parse_report_sections(REPORT_PORTABLE)
    assert portable["INDICATION"] == "Hypoxia."
    assert portable["HISTORY"] == "Shortness of breath, evaluate for pneumonia."
    assert portable["COMPARISON"] == "Chest radiograph from ___."
    assert portable["IMPRESSION"] == "Mild congestion and small left effusion."
    # A time such as "8:10 PM" inside a line is not a header.
    wet = parse_report_sections(REPORT_IMPRESSION_ONLY)
    assert wet["WET READ"] == "___ ___ 8:10 PM No pneumothorax."
    assert "FINDINGS" not in wet


def test_view_label():
    assert [view_label(value) for value in ("PA", "AP", "LATERAL", "LL", "", "AP AXIAL")] == ["PA", "AP", "L", "L", "", "AP AXIAL"]


def test_loader_records(mimic_root):
    records = load_mimic_cxr_records(mimic_root)
    by_study = _by_study(records)

    # Dropped: impression-only report (no FINDINGS), image missing on disk, report missing.
    assert sorted(by_study) == ["50414267", "50771383", "52000001", "53189527"]
    first = by_study["50414267"]
    assert first["patient_id"] == "10000032"
    assert first["split"] == "train"
    assert first["views"] == ["PA", "L"]
    assert [Path(path).name for path in first["image_paths"]] == ["d-pa-1.jpg", "d-lat-1.jpg"]
    assert all(Path(path).is_file() for path in first["image_paths"])
    assert first["history"] == "___F with new onset ascites // eval for infection"
    assert first["report"].startswith("There is no focal consolidation")
    assert "No acute cardiopulmonary process" not in first["report"]
    assert first["source"] == "mimic_cxr"

    portable = by_study["53189527"]
    assert portable["history"] == "Hypoxia. Shortness of breath, evaluate for pneumonia."
    assert by_study["50771383"]["split"] == "validation"
    assert by_study["50771383"]["views"] == ["PA", "L", ""]
    assert by_study["52000001"]["split"] == "test"


def test_loader_keeps_chexpert_labels(mimic_root):
    by_study = _by_study(load_mimic_cxr_records(mimic_root))
    labels = json.loads(by_study["53189527"]["metadata"])["chexpert"]

    assert set(labels) == set(CHEXPERT_LABELS)
    assert labels["Pleural Effusion"] == 1.0
    assert labels["Atelectasis"] == -1.0
    assert labels["Edema"] == 0.0
    assert labels["Pneumonia"] is None
    metadata = json.loads(by_study["50414267"]["metadata"])
    assert metadata["chexpert"]["No Finding"] == 1.0
    assert metadata["view_positions"] == ["PA", "LATERAL"]
    assert metadata["sections"]["IMPRESSION"] == "No acute cardiopulmonary process."


def test_loader_target_impression(mimic_root):
    by_study = _by_study(load_mimic_cxr_records(mimic_root, target_sections=["IMPRESSION"]))
    assert by_study["57375967"]["report"] == "No pneumothorax after removal of the left chest tube."
    assert by_study["53189527"]["report"] == "Mild congestion and small left effusion."

    both = _by_study(load_mimic_cxr_records(mimic_root, target_sections=["FINDINGS", "IMPRESSION"]))
    assert both["52000001"]["report"] == "Low lung volumes. No consolidation. No acute process."


def test_loader_view_filters(mimic_root):
    frontal = _by_study(load_mimic_cxr_records(mimic_root, include_views={"PA", "AP"}))
    assert frontal["50414267"]["views"] == ["PA"]
    capped = _by_study(load_mimic_cxr_records(mimic_root, max_views=2))
    assert capped["50771383"]["views"] == ["PA", "L"]


def test_separate_reports_dir(tmp_path):
    images = tmp_path / "physionet.org" / "files" / "mimic-cxr-jpg" / "2.0.0"
    reports = tmp_path / "mimic-cxr-reports"
    write_mimic_tree(images, reports_root=reports)

    # The reports folder is given as the `files/` folder itself.
    records = load_mimic_cxr_records(images, reports_dir=reports / "files")
    assert len(records) == 4
    assert not list(images.glob("files/*/*/*.txt"))


def test_data_root_lookup_and_registry(mimic_root):
    assert "mimic_cxr" in DATASET_NAMES
    assert resolve_mimic_cxr_dir(mimic_root.parent) == mimic_root
    dataset = load_study_dataset("mimic_cxr", data_dir=mimic_root.parent)
    assert sorted(dataset) == ["test", "train", "validation"]
    assert dataset["train"].num_rows == 2


def test_missing_images_raise(tmp_path):
    root = write_mimic_tree(tmp_path / "mimic")
    for image in root.glob("files/**/*.jpg"):
        image.unlink()
    with pytest.raises(MissingImagesError, match="images_dir"):
        load_mimic_cxr(root)
    text_only = load_mimic_cxr_records(root, require_images=False)
    assert len(text_only) == 5
    assert all(record["image_paths"] == [] for record in text_only)


def test_uncompressed_tables(tmp_path):
    root = write_mimic_tree(tmp_path / "mimic")
    for table in root.glob("*.csv.gz"):
        with gzip.open(table, "rt", encoding="utf-8") as handle:
            table.with_suffix("").write_text(handle.read(), encoding="utf-8")
        table.unlink()
    assert len(load_mimic_cxr_records(root)) == 4


def test_invalid_split_value(tmp_path):
    root = write_mimic_tree(tmp_path / "mimic")
    _write_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], [["d-pa-1", "50414267", "10000032", "dev"]])
    with pytest.raises(ValueError, match="'dev'"):
        load_mimic_cxr_records(root)


def test_missing_tables(tmp_path):
    with pytest.raises(FileNotFoundError, match="mimic-cxr"):
        load_mimic_cxr_records(tmp_path)


def test_recipe_dataset_options(mimic_root):
    recipe = load_recipe("mimic_cxr")
    options = {key: value for key, value in recipe.dataset.items() if key != "name"}
    dataset = load_study_dataset(recipe.dataset["name"], data_dir=mimic_root.parent, **options)

    assert recipe.training.batch_size == 16
    assert recipe.training.mixed_precision == "bf16"
    assert recipe.model["vision_config"]["depths"] == [3, 4, 6, 3]
    assert dataset["validation"][0]["views"] == ["PA", "L"]
    assert dataset["train"].num_rows == 2


def test_split_table_patient_overlap_raises(tmp_path, monkeypatch):
    # Subject 10000032 gets a second study in the test split.
    overlapping = [*STUDIES, ("10000032", "59999999", "test", REPORT_TEST, [("d-pa-8", "PA", True)])]
    monkeypatch.setitem(globals(), "STUDIES", overlapping)
    root = write_mimic_tree(tmp_path / "mimic")
    with pytest.raises(ValueError, match=r"Patient '10000032' occurs in both 'train' .* and 'test' .*split\.csv\.gz"):
        load_mimic_cxr_records(root)
