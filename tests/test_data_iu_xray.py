"""Tests of the IU X-ray loader on the real report archive, with tiny image files written for a few real ids."""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from eir.data import load_study_dataset
from eir.data.iu_xray import (
    MissingImagesError,
    load_iu_xray,
    load_iu_xray_records,
    parse_iu_reports,
    read_r2gen_split,
    read_view_positions,
)
from eir.data.records import STUDY_COLUMNS
from eir.data.splits import check_patient_disjoint, write_split_file
from eir.paths import default_data_dir
from eir.recipes import load_recipe

IU_DIR = default_data_dir() / "openi"
pytestmark = pytest.mark.skipif(
    not (IU_DIR / "NLMCXR_reports.tgz").is_file(),
    reason=f"IU X-ray report archive not found at {IU_DIR / 'NLMCXR_reports.tgz'} (set EIR_DATA_DIR to the data root)",
)


@pytest.fixture(scope="module")
def reports_by_uid():
    return {report.uid: report for report in parse_iu_reports(IU_DIR)}


@pytest.fixture(scope="module")
def r2gen_entries():
    content = json.loads((IU_DIR / "r2gen_annotation.json").read_text(encoding="utf-8"))
    return [entry for entries in content.values() for entry in entries]


def _write_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), color=128).save(path)
    return path


def test_parse_report_count(reports_by_uid):
    assert len(reports_by_uid) == 3955
    assert min(reports_by_uid) == 1
    assert max(reports_by_uid) == 3999


def test_parse_section_counts(reports_by_uid):
    non_empty = Counter(label for report in reports_by_uid.values() for label, text in report.sections.items() if text)
    assert non_empty["INDICATION"] == 3865
    assert non_empty["COMPARISON"] == 3333
    assert non_empty["FINDINGS"] == 3425
    assert non_empty["IMPRESSION"] == 3921
    assert sum(len(report.image_ids) for report in reports_by_uid.values()) == 7470


def test_parse_extracted_folder_matches_archive(tmp_path, reports_by_uid):
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    with tarfile.open(IU_DIR / "NLMCXR_reports.tgz") as archive:
        for uid in (1, 2, 2384):
            member = archive.getmember(f"ecgen-radiology/{uid}.xml")
            (folder / f"{uid}.xml").write_bytes(archive.extractfile(member).read())

    parsed = parse_iu_reports(tmp_path)

    assert [report.uid for report in parsed] == [1, 2, 2384]
    for report in parsed:
        assert report == reports_by_uid[report.uid]


def test_r2gen_split_counts():
    records = load_iu_xray_records(IU_DIR, target_sections=("FINDINGS",))
    counts = Counter(record["split"] for record in records)
    assert counts == {"train": 2069, "validation": 296, "test": 590}


def test_r2gen_split_reads_entry_split_field():
    assignment = read_r2gen_split(IU_DIR / "r2gen_annotation.json")
    assert len(assignment) == 2955
    # The test list of this copy has a four-space key, but its entries still have split "test".
    assert assignment[3030] == ("test", "CXR3030_IM-1405")
    assert assignment[2056] == ("validation", "CXR2056_IM-0694-1001")


def test_dataset_dict_columns_and_lengths():
    dataset = load_study_dataset("iu_xray", data_dir=IU_DIR)
    assert {name: len(split) for name, split in dataset.items()} == {"train": 2069, "validation": 296, "test": 590}
    for split in dataset.values():
        assert split.column_names == list(STUDY_COLUMNS)
    assert set(dataset["test"]["split"]) == {"test"}
    assert set(dataset["train"]["source"]) == {"iu_xray"}


def test_findings_target_equals_r2gen_report(r2gen_entries):
    records = {record["study_id"]: record for record in load_iu_xray_records(IU_DIR, target_sections=("FINDINGS",))}
    checked = 0
    for entry in r2gen_entries[::250]:
        uid = int(entry["id"][3:].split("_")[0])
        record = records[f"CXR{uid}"]
        assert record["report"] == entry["report"], entry["id"]
        assert json.loads(record["metadata"])["r2gen_id"] == entry["id"]
        checked += 1
    assert checked >= 10


def test_computed_r2gen_id_matches_split_file(reports_by_uid, r2gen_entries):
    mismatched = [entry["id"] for entry in r2gen_entries if reports_by_uid[int(entry["id"][3:].split("_")[0])].r2gen_id != entry["id"]]
    assert mismatched == []


def test_deidentification_tokens_kept():
    records = {record["study_id"]: record for record in load_iu_xray_records(IU_DIR, split=None, target_sections=("FINDINGS",))}
    assert "There are no XXXX of a pleural effusion." in records["CXR1"]["report"]
    assert sum("XXXX" in record["report"] for record in records.values()) == 1486


def test_history_labels_sections():
    records = {record["study_id"]: record for record in load_iu_xray_records(IU_DIR, split=None)}
    assert records["CXR1"]["history"] == "Indication: Positive TB test. Comparison: None."
    assert records["CXR2384"]["history"] == "Indication: Breast cancer. Comparison: None."
    assert records["CXR2384"]["report"] == (
        "The heart size and pulmonary vascularity appear within normal limits. A large hiatal hernia is noted. "
        "The lungs are free of focal airspace disease. No pneumothorax or pleural effusion is seen. "
        "Degenerative changes are present in the spine. 1. No evidence of active disease."
    )


def test_empty_targets_dropped():
    assert len(load_iu_xray_records(IU_DIR, split=None)) == 3927
    assert len(load_iu_xray_records(IU_DIR, split=None, target_sections=("FINDINGS",))) == 3425
    assert len(load_iu_xray_records(IU_DIR, split=None, target_sections=("IMPRESSION",))) == 3921


def test_metadata_attribution():
    record = next(record for record in load_iu_xray_records(IU_DIR, split=None) if record["study_id"] == "CXR2384")
    metadata = json.loads(record["metadata"])
    assert metadata["license"] == "CC BY-NC-ND 4.0"
    assert metadata["doi"] == "10.1093/jamia/ocv080"
    assert metadata["mesh_major"] == ["Hernia, Hiatal/large", "Spine/degenerative"]
    assert metadata["image_ids"] == ["CXR2384_IM-0942-1001", "CXR2384_IM-0942-3001"]
    assert metadata["image_views"] == ["PA", "L"]


def test_patient_split_deterministic_and_disjoint():
    first = load_iu_xray_records(IU_DIR, split=None, seed=3)
    second = load_iu_xray_records(IU_DIR, split=None, seed=3)
    assert [record["split"] for record in first] == [record["split"] for record in second]
    check_patient_disjoint(first)
    counts = Counter(record["split"] for record in first)
    assert counts == {"train": round(3927 * 0.7), "validation": round(3927 * 0.1), "test": 3927 - round(3927 * 0.7) - round(3927 * 0.1)}


def test_split_csv_round_trip(tmp_path):
    records = load_iu_xray_records(IU_DIR, split=None, seed=1)
    split_path = write_split_file(records[:100], tmp_path / "split.csv")

    reloaded = load_iu_xray_records(IU_DIR, split=split_path)

    assert [(record["study_id"], record["split"]) for record in reloaded] == [(record["study_id"], record["split"]) for record in records[:100]]


def test_no_images_logs_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="eir.data.iu_xray"):
        records = load_iu_xray_records(IU_DIR, require_images=False)
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "2955 of 2955" in warnings[0]
    assert str(IU_DIR) in warnings[0]
    assert "R2Gen" in warnings[0]
    assert all(record["image_paths"] == [] and record["views"] == [] for record in records)


def test_no_images_required_raises():
    with pytest.raises(MissingImagesError, match=r"2955 of 2955.*images_dir="):
        load_iu_xray(IU_DIR, require_images=True)


def test_recipe_without_images_fails_at_load():
    recipe = load_recipe("iu_xray")
    options = {key: value for key, value in recipe.dataset.items() if key != "name"}
    assert options["require_images"] is True
    with pytest.raises(MissingImagesError, match="images_dir="):
        load_study_dataset(recipe.dataset["name"], data_dir=IU_DIR.parent, **options)


def test_missing_images_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_iu_xray_records(IU_DIR, images_dir=tmp_path / "absent")


def test_unknown_section_raises():
    with pytest.raises(ValueError, match="FINDING"):
        load_iu_xray_records(IU_DIR, target_sections=("FINDING",))


@pytest.mark.parametrize("layout", ["nlm", "kaggle", "r2gen"])
def test_images_found_per_layout(tmp_path, layout, reports_by_uid, caplog):
    uids = (2384, 2279, 3030)
    expected: dict[str, list[str]] = {}
    for uid in uids:
        report = reports_by_uid[uid]
        if layout == "nlm":
            paths = [_write_png(tmp_path / "NLMCXR_png" / f"{image_id}.png") for image_id in report.image_ids]
        elif layout == "kaggle":
            paths = [_write_png(tmp_path / "images" / "images_normalized" / f"{image_id[3:]}.dcm.png") for image_id in report.image_ids]
        else:
            paths = [_write_png(tmp_path / "iu_xray" / "images" / report.r2gen_id / f"{index}.png") for index in range(2)]
        expected[f"CXR{uid}"] = [str(path.resolve()) for path in paths]

    with caplog.at_level(logging.WARNING, logger="eir.data.iu_xray"):
        records = load_iu_xray_records(IU_DIR, images_dir=tmp_path, require_images=True)

    assert {record["study_id"]: record["image_paths"] for record in records} == expected
    views = read_view_positions(IU_DIR)
    for record in records:
        metadata = json.loads(record["metadata"])
        assert metadata["image_layout"] == layout
        if layout == "r2gen":
            assert record["views"] == ["", ""]
        else:
            assert record["views"] == [views.get(image_id, "") for image_id in metadata["image_ids"]]
    if layout != "r2gen":
        assert next(record for record in records if record["study_id"] == "CXR2384")["views"] == ["PA", "L"]
    assert any(f"{2955 - 3} of 2955" in message for message in caplog.messages)


def test_images_partial_study(tmp_path, reports_by_uid):
    report = reports_by_uid[2384]
    only = _write_png(tmp_path / f"{report.image_ids[1]}.png")

    records = load_iu_xray_records(IU_DIR, images_dir=tmp_path, require_images=True)

    assert [record["study_id"] for record in records] == ["CXR2384"]
    assert records[0]["image_paths"] == [str(only.resolve())]
    assert records[0]["views"] == ["L"]
