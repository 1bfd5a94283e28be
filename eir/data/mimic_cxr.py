"""Loader for MIMIC-CXR-JPG (PhysioNet) with the free-text reports of MIMIC-CXR.

Expected layout, as PhysioNet distributes it (the `.csv` tables may also be uncompressed):

    <data_dir>/mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split (train/validate/test)
    <data_dir>/mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, ...
    <data_dir>/mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id and 14 observations (optional)
    <images_dir>/files/p10/p10000032/s50414267/<dicom_id>.jpg
    <reports_dir>/files/p10/p10000032/s50414267.txt

The reports come from MIMIC-CXR (`mimic-cxr-reports.zip`), which extracts to the same
`files/pXX/pSUBJECT/` tree, so `images_dir` and `reports_dir` may be one folder (by default both
are `data_dir`). Each of them may be the folder holding `files/` or the `files/` folder itself.

One study is one record. Its views are ordered frontal first (PA, then AP), then lateral, then
other and unknown positions. The clinical history is the INDICATION and HISTORY sections and
the target is FINDINGS by default. The CheXpert labels of the study are kept in `metadata`
(1.0 positive, 0.0 negative, -1.0 uncertain, null when not mentioned).

Access needs a credentialed PhysioNet account and the PhysioNet Credentialed Health Data
License 1.5.0. Cite Johnson A.E.W. et al., "MIMIC-CXR-JPG, a large publicly available database of
labeled chest radiographs", arXiv:1901.07042 (2019), and Johnson A.E.W. et al., "MIMIC-CXR, a
de-identified publicly available database of chest radiographs with free-text reports",
Scientific Data 6:317 (2019).
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from eir.data.iu_xray import MissingImagesError
from eir.data.records import StudyRecord, encode_metadata, records_to_dataset_dict
from eir.data.splits import check_patient_disjoint
from eir.paths import default_data_dir

logger = logging.getLogger(__name__)

SOURCE_NAME = "mimic_cxr"
# Folder names of the dataset under the data root, tried in order.
DATASET_FOLDERS: tuple[str, ...] = ("mimic-cxr-jpg", "mimic-cxr")
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
DEFAULT_TARGET_SECTIONS: tuple[str, ...] = ("FINDINGS",)
DEFAULT_HISTORY_SECTIONS: tuple[str, ...] = ("INDICATION", "HISTORY")
_SPLIT_NAMES: dict[str, str] = {"train": "train", "validate": "validation", "validation": "validation", "test": "test"}
_LICENSE = "PhysioNet Credentialed Health Data License 1.5.0"
_CITATION = (
    "Johnson A.E.W. et al., MIMIC-CXR-JPG, a large publicly available database of labeled chest radiographs, "
    "arXiv:1901.07042 (2019)"
)

# A section header is an upper-case title at the start of a line followed by a colon, e.g.
# " FINDINGS:" or "INDICATION:  ___F with cough". Titles in the reports use letters, spaces and a
# few punctuation marks ("FINDINGS AND IMPRESSION", "CHEST (PA AND LAT)").
_HEADER_PATTERN = re.compile(r"^[ \t]*([A-Z][A-Z /&,()\-]*[A-Z)])[ \t]*:", re.MULTILINE)
# Header spellings mapped to one name. NOTE: this list covers the common spellings of MIMIC-CXR
# reports. Other headers keep their own upper-case name and end the section before them.
_SECTION_ALIASES: dict[str, str] = {
    "FINDING": "FINDINGS",
    "FINDINGS": "FINDINGS",
    "IMPRESSION": "IMPRESSION",
    "IMPRESSIONS": "IMPRESSION",
    "CONCLUSION": "IMPRESSION",
    "CONCLUSIONS": "IMPRESSION",
    "INDICATION": "INDICATION",
    "INDICATIONS": "INDICATION",
    "CLINICAL INDICATION": "INDICATION",
    "REASON FOR EXAM": "INDICATION",
    "REASON FOR EXAMINATION": "INDICATION",
    "REASON FOR STUDY": "INDICATION",
    "HISTORY": "HISTORY",
    "CLINICAL HISTORY": "HISTORY",
    "CLINICAL INFORMATION": "HISTORY",
    "COMPARISON": "COMPARISON",
    "COMPARISONS": "COMPARISON",
    "EXAM": "EXAMINATION",
    "EXAMINATION": "EXAMINATION",
    "TYPE OF EXAMINATION": "EXAMINATION",
    "TECHNIQUE": "TECHNIQUE",
    "FINDINGS AND IMPRESSION": "FINDINGS AND IMPRESSION",
    "IMPRESSION AND FINDINGS": "FINDINGS AND IMPRESSION",
}
# `ViewPosition` values mapped to the view labels used here; other non-blank values are kept.
_VIEW_LABELS: dict[str, str] = {"PA": "PA", "AP": "AP", "LATERAL": "L", "LL": "L", "LAT": "L"}
_VIEW_ORDER: dict[str, int] = {"PA": 0, "AP": 1, "L": 2}


# ----------------------------------------------------------------------------- reports


def normalize_section_name(name: str) -> str:
    """Map a header title to its usual name ("IMPRESSIONS" to "IMPRESSION", "REASON FOR EXAM" to "INDICATION")."""
    title = " ".join(name.upper().split())
    return _SECTION_ALIASES.get(title, title)


def parse_report_sections(text: str) -> dict[str, str]:
    """Split a MIMIC-CXR report into its sections.

    Returns the text of each section by normalized header name (see `normalize_section_name`),
    with line breaks and runs of spaces collapsed to one space. Text before the first header
    (such as "FINAL REPORT") is returned as "PREAMBLE". A header that occurs twice gets both texts,
    joined with a space. Empty sections are left out.
    """
    matches = list(_HEADER_PATTERN.finditer(text))
    sections: dict[str, list[str]] = defaultdict(list)
    preamble_end = matches[0].start() if matches else len(text)
    sections["PREAMBLE"].append(text[:preamble_end])
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        sections[normalize_section_name(match.group(1))].append(text[match.end() : end])
    joined = {name: " ".join(" ".join(parts).split()) for name, parts in sections.items()}
    return {name: value for name, value in joined.items() if value}


def join_sections(sections: dict[str, str], names: Sequence[str]) -> str:
    """Join the sections `names` that the report has, in the order of `names`, with a space."""
    return " ".join(sections[name] for name in (normalize_section_name(name) for name in names) if name in sections)


# ----------------------------------------------------------------------------- tables


def resolve_mimic_cxr_dir(data_dir: str | Path | None = None) -> Path:
    """Return the folder holding `mimic-cxr-*-split.csv(.gz)`.

    `data_dir` may be that folder, or a data root holding it as `mimic-cxr-jpg/` or `mimic-cxr/`,
    optionally inside a version folder such as `2.0.0/`. `None` means `default_data_dir()`.
    """
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    candidates = [base]
    for name in DATASET_FOLDERS:
        candidates.append(base / name)
        candidates.extend(sorted((base / name).glob("[0-9]*"), reverse=True))
    for candidate in candidates:
        if _find_table(candidate, "split") is not None:
            return candidate
    raise FileNotFoundError(
        f"MIMIC-CXR-JPG not found: no mimic-cxr-*-split.csv(.gz) in {base} or its folders {list(DATASET_FOLDERS)}. "
        "Pass data_dir= the folder that holds the MIMIC-CXR-JPG tables."
    )


def _find_table(folder: Path, kind: str) -> Path | None:
    """Return the newest `mimic-cxr-<version>-<kind>.csv(.gz)` in `folder`, or None."""
    if not folder.is_dir():
        return None
    found = sorted(folder.glob(f"mimic-cxr-*-{kind}.csv.gz")) + sorted(folder.glob(f"mimic-cxr-*-{kind}.csv"))
    if not found:
        return None
    return max(found, key=lambda path: path.name.removesuffix(".gz"))


def _read_table(path: Path, required: Sequence[str]) -> Iterator[dict[str, str]]:
    """Yield the rows of a CSV or gzip-compressed CSV as stripped strings, checking the header first."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, mode="rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [column for column in required if column not in header]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing}; found {header[:12]}.")
        for row in reader:
            yield {key: (value or "").strip() for key, value in row.items() if key}


def _parse_chexpert_value(value: str, path: Path, column: str) -> float | None:
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError as error:
        raise ValueError(f"{path}: column {column!r} has {value!r}; expected 1.0, 0.0, -1.0 or blank.") from error
    if number not in (1.0, 0.0, -1.0):
        raise ValueError(f"{path}: column {column!r} has {value!r}; expected 1.0, 0.0, -1.0 or blank.")
    return number


def read_chexpert_labels(path: Path) -> dict[tuple[str, str], dict[str, float | None]]:
    """Read the CheXpert table: `(subject_id, study_id)` to the 14 observations (None when blank)."""
    labels: dict[tuple[str, str], dict[str, float | None]] = {}
    for row in _read_table(path, ("subject_id", "study_id", *CHEXPERT_LABELS)):
        labels[(row["subject_id"], row["study_id"])] = {
            name: _parse_chexpert_value(row[name], path, name) for name in CHEXPERT_LABELS
        }
    return labels


def _files_root(folder: Path) -> Path:
    return folder / "files" if (folder / "files").is_dir() else folder


def study_folder(files_root: Path, subject_id: str, study_id: str) -> Path:
    """Return `files/pXX/pSUBJECT/sSTUDY`, where XX are the first two digits of the subject id."""
    return files_root / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"


def view_label(view_position: str) -> str:
    """Map a `ViewPosition` value to "PA", "AP", "L" or the upper-case value itself ("" when blank)."""
    position = " ".join(view_position.upper().split())
    return _VIEW_LABELS.get(position, position)


def _view_rank(label: str) -> int:
    if label in _VIEW_ORDER:
        return _VIEW_ORDER[label]
    return 3 if label else 4


@dataclass
class _Study:
    subject_id: str
    study_id: str
    split: str
    # (dicom_id, ViewPosition) of each image.
    images: list[tuple[str, str]] = field(default_factory=list)


def _read_studies(folder: Path) -> list[_Study]:
    """Group the images of the split and metadata tables into studies, sorted by subject and study id."""
    split_path = _find_table(folder, "split")
    metadata_path = _find_table(folder, "metadata")
    if split_path is None or metadata_path is None:
        raise FileNotFoundError(
            f"{folder} needs mimic-cxr-*-split.csv(.gz) and mimic-cxr-*-metadata.csv(.gz); found "
            f"split={split_path}, metadata={metadata_path}."
        )
    view_of_image = {
        row["dicom_id"]: row["ViewPosition"]
        for row in _read_table(metadata_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    }
    studies: dict[tuple[str, str], _Study] = {}
    for line_number, row in enumerate(_read_table(split_path, ("dicom_id", "study_id", "subject_id", "split")), start=2):
        split = _SPLIT_NAMES.get(row["split"].lower())
        if split is None:
            raise ValueError(f"{split_path} line {line_number}: split {row['split']!r}; expected one of {sorted(_SPLIT_NAMES)}.")
        key = (row["subject_id"], row["study_id"])
        study = studies.setdefault(key, _Study(subject_id=row["subject_id"], study_id=row["study_id"], split=split))
        if study.split != split:
            raise ValueError(
                f"{split_path} line {line_number}: study {row['study_id']} is listed in both {study.split!r} and {split!r}."
            )
        study.images.append((row["dicom_id"], view_of_image.get(row["dicom_id"], "")))
    missing_views = sum(1 for study in studies.values() for dicom_id, _ in study.images if dicom_id not in view_of_image)
    if missing_views:
        logger.warning("%d images of %s are not in %s; their view is unknown.", missing_views, split_path.name, metadata_path.name)
    return sorted(studies.values(), key=lambda study: (int(study.subject_id), int(study.study_id)))


# ----------------------------------------------------------------------------- loader


def load_mimic_cxr_records(
    data_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    reports_dir: str | Path | None = None,
    target_sections: Sequence[str] = DEFAULT_TARGET_SECTIONS,
    history_sections: Sequence[str] = DEFAULT_HISTORY_SECTIONS,
    include_views: Collection[str] | None = None,
    max_views: int | None = None,
    require_images: bool = True,
) -> list[StudyRecord]:
    """Load MIMIC-CXR-JPG as study records (see `load_mimic_cxr` for the arguments)."""
    folder = resolve_mimic_cxr_dir(data_dir)
    image_root = _files_root(Path(images_dir) if images_dir is not None else folder)
    report_root = _files_root(Path(reports_dir) if reports_dir is not None else folder)
    if max_views is not None and max_views < 1:
        raise ValueError(f"max_views must be a positive int or None, got {max_views!r}.")
    if not target_sections:
        raise ValueError("target_sections is empty; name at least one report section, e.g. ['FINDINGS'].")

    chexpert_path = _find_table(folder, "chexpert")
    chexpert = read_chexpert_labels(chexpert_path) if chexpert_path is not None else {}
    if chexpert_path is None:
        logger.info("No mimic-cxr-*-chexpert.csv(.gz) in %s; studies carry no CheXpert labels.", folder)

    records: list[StudyRecord] = []
    dropped: Counter[str] = Counter()
    images_found = 0
    for study in _read_studies(folder):
        # 1. Report sections.
        report_path = study_folder(report_root, study.subject_id, study.study_id).with_suffix(".txt")
        if not report_path.is_file():
            dropped["report file missing"] += 1
            continue
        sections = parse_report_sections(report_path.read_text(encoding="utf-8", errors="replace"))
        target = join_sections(sections, target_sections)
        if not target:
            dropped[f"no {'/'.join(target_sections)} section"] += 1
            continue

        # 2. Images on disk, frontal views first.
        image_folder = study_folder(image_root, study.subject_id, study.study_id)
        ordered = sorted(study.images, key=lambda image: (_view_rank(view_label(image[1])), image[0]))
        included = [
            (dicom_id, position)
            for dicom_id, position in ordered
            if include_views is None or view_label(position) in include_views
        ]
        on_disk = [(dicom_id, position) for dicom_id, position in included if (image_folder / f"{dicom_id}.jpg").is_file()]
        images_found += len(on_disk)
        if max_views is not None:
            on_disk = on_disk[:max_views]
        if require_images and not on_disk:
            dropped["no image file" if included else "view not included"] += 1
            continue

        metadata = {
            "subject_id": study.subject_id,
            "study_id": study.study_id,
            "dicom_ids": [dicom_id for dicom_id, _ in on_disk],
            "view_positions": [position for _, position in on_disk],
            "chexpert": chexpert.get((study.subject_id, study.study_id)),
            "sections": sections,
            "report_path": str(report_path),
            "license": _LICENSE,
            "citation": _CITATION,
        }
        records.append(
            StudyRecord(
                study_id=study.study_id,
                patient_id=study.subject_id,
                image_paths=[str((image_folder / f"{dicom_id}.jpg").resolve()) for dicom_id, _ in on_disk],
                views=[view_label(position) for _, position in on_disk],
                history=join_sections(sections, history_sections),
                report=target,
                split=study.split,
                source=SOURCE_NAME,
                metadata=encode_metadata(metadata),
            )
        )

    logger.info("Loaded %d MIMIC-CXR studies from %s; dropped: %s.", len(records), folder, dict(dropped))
    check_patient_disjoint(records, source=f"the split table {_find_table(folder, 'split')}")
    if require_images and images_found == 0:
        raise MissingImagesError(
            f"No MIMIC-CXR-JPG image found under {image_root} (expected files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg). "
            "Pass images_dir= the folder holding files/, or require_images=False for the reports alone."
        )
    return records


def load_mimic_cxr(
    data_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    reports_dir: str | Path | None = None,
    target_sections: Sequence[str] = DEFAULT_TARGET_SECTIONS,
    history_sections: Sequence[str] = DEFAULT_HISTORY_SECTIONS,
    include_views: Collection[str] | None = None,
    max_views: int | None = None,
    require_images: bool = True,
) -> datasets.DatasetDict:
    """Load MIMIC-CXR-JPG with the MIMIC-CXR reports as a `DatasetDict` of studies, with the official split.

    Args:
        data_dir: folder holding the `mimic-cxr-*-split/metadata/chexpert` tables, or a data root
            holding it as `mimic-cxr-jpg/` (see `resolve_mimic_cxr_dir`); default `default_data_dir()`.
        images_dir: folder of the JPG tree (holding `files/`, or `files/` itself); default `data_dir`.
        reports_dir: folder of the report tree (`files/pXX/pSUBJECT/sSTUDY.txt`); default `data_dir`.
        target_sections: report sections joined into the target text. Studies without any of
            them are dropped. Names are normalized, so "IMPRESSIONS" matches "IMPRESSION".
        history_sections: report sections joined into the clinical history ("" when absent).
        include_views: view labels to keep ("PA", "AP", "L", other `ViewPosition` values, "" for
            unknown); None keeps all.
        max_views: keep at most this many images per study, after ordering the views.
        require_images: drop studies without an image file on disk and raise
            `MissingImagesError` when no image is found at all. False keeps studies without
            images (for text-only work).
    """
    records = load_mimic_cxr_records(
        data_dir=data_dir,
        images_dir=images_dir,
        reports_dir=reports_dir,
        target_sections=target_sections,
        history_sections=history_sections,
        include_views=include_views,
        max_views=max_views,
        require_images=require_images,
    )
    return records_to_dataset_dict(records)


__all__ = [
    "CHEXPERT_LABELS",
    "load_mimic_cxr",
    "load_mimic_cxr_records",
    "normalize_section_name",
    "parse_report_sections",
    "read_chexpert_labels",
    "resolve_mimic_cxr_dir",
    "study_folder",
    "view_label",
]
