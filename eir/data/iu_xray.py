"""Loader for the IU X-ray (Indiana University chest X-ray collection, Open-I) reports and images.

The reports come from the IU X-ray report archive `NLMCXR_reports.tgz` (one XML file
`ecgen-radiology/<uid>.xml` per study), read directly from the archive or from its extracted
`ecgen-radiology/` folder. Images are optional and are looked up in the usual distributions:

- NLM: `<image id>.png`, e.g. `CXR1_1_IM-0001-3001.png`;
- Kaggle "chest-xrays-indiana-university": `images_normalized/<image id without "CXR">.dcm.png`;
- R2Gen: `<R2Gen study id>/0.png`, `1.png`, ..., where the study id is the first image id without
  its last "-<number>" part, e.g. `CXR2384_IM-0942`.

Licence of the reports: CC BY-NC-ND 4.0 (non-commercial, no derivatives). Cite Demner-Fushman D.
et al., "Preparing a collection of radiology examinations for distribution and retrieval",
JAMIA 23(2):304-310, 2016, doi:10.1093/jamia/ocv080.
"""

from __future__ import annotations

import csv
import functools
import gzip
import json
import logging
import os
import re
import tarfile
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from eir.data.records import StudyRecord, encode_metadata, records_to_dataset_dict
from eir.data.splits import apply_split_file, check_patient_disjoint, normalize_split_name, split_by_patient
from eir.paths import default_data_dir

logger = logging.getLogger(__name__)

SOURCE_NAME = "iu_xray"
DATASET_FOLDER = "openi"
REPORT_ARCHIVE = "NLMCXR_reports.tgz"
REPORT_FOLDER = "ecgen-radiology"
DICOM_METADATA_FILE = "nlmcxr_dicom_metadata.csv.gz"
R2GEN_SPLIT_FILE = "r2gen_annotation.json"
SECTION_LABELS: tuple[str, ...] = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
IMAGE_LAYOUTS: tuple[str, ...] = ("nlm", "kaggle", "r2gen")
# Folder levels below `images_dir` searched for image files; the known layouts need at most 3
# (e.g. `iu_xray/images/CXR2384_IM-0942/0.png`).
IMAGE_SEARCH_DEPTH = 3

_LICENSE = "CC BY-NC-ND 4.0"
_DOI = "10.1093/jamia/ocv080"
_URL = "https://openi.nlm.nih.gov/"
_CREDIT = (
    "Indiana University Chest X-ray Collection (Open-I, U.S. National Library of Medicine); "
    "Demner-Fushman D. et al., JAMIA 23(2):304-310, 2016"
)
# "View Position" values of the DICOM headers mapped to the view labels used here; LL and RL are
# left and right lateral. Other non-blank values are kept, upper-cased.
_VIEW_LABELS: dict[str, str] = {
    "PA": "PA",
    "AP": "AP",
    "LL": "L",
    "RL": "L",
    "LATERAL": "L",
    "LARGE LATERAL": "L",
    "LAT": "L",
    "L": "L",
}
_R2GEN_ID_PATTERN = re.compile(r"CXR(\d+)_")
_R2GEN_IMAGE_PATTERN = re.compile(r"^(\d+)\.png$", re.IGNORECASE)


class MissingImagesError(FileNotFoundError):
    """Raised when images are required but no image file of the dataset was found."""


@dataclass(frozen=True)
class IUReport:
    """One parsed IU X-ray report (one XML file)."""

    uid: int
    # Text of each `AbstractText` section by upper-case label; empty sections map to "".
    sections: dict[str, str]
    # `parentImage` ids in figure order, e.g. "CXR2384_IM-0942-1001".
    image_ids: tuple[str, ...]
    mesh_major: tuple[str, ...] = ()
    mesh_automatic: tuple[str, ...] = ()
    license_url: str = ""

    @property
    def r2gen_id(self) -> str | None:
        """The R2Gen study id: the first image id without its last "-<number>" part.

        For "CXR2384_IM-0942-1001" this is "CXR2384_IM-0942", and for "CXR1122_IM-0080-1001-0001"
        it is "CXR1122_IM-0080-1001"; this rule reproduces all 2,955 ids of the R2Gen split file.
        """
        if not self.image_ids:
            return None
        return self.image_ids[0].rsplit("-", 1)[0]


# ----------------------------------------------------------------------------- reports


def resolve_iu_xray_dir(data_dir: str | Path | None = None) -> Path:
    """Return the folder holding the IU X-ray report archive or its extracted `ecgen-radiology/` folder.

    `data_dir` may be that folder itself or the data root holding it as `openi/`; `None` means
    `default_data_dir()`.
    """
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    for candidate in (base, base / DATASET_FOLDER):
        if (candidate / REPORT_ARCHIVE).is_file() or (candidate / REPORT_FOLDER).is_dir():
            return candidate
    raise FileNotFoundError(
        f"IU X-ray reports not found under {base}: expected {REPORT_ARCHIVE} or an extracted {REPORT_FOLDER}/ folder "
        f"there or in {base / DATASET_FOLDER}. Pass data_dir= the folder that holds them."
    )


def _parse_report_xml(content: bytes, name: str) -> IUReport:
    try:
        root = ElementTree.fromstring(content)
    except ElementTree.ParseError as error:
        raise ValueError(f"Invalid XML in IU X-ray report {name}: {error}") from error
    uid_element = root.find("uId")
    uid_text = uid_element.get("id", "") if uid_element is not None else ""
    if not re.fullmatch(r"CXR\d+", uid_text):
        raise ValueError(f"IU X-ray report {name} has uId {uid_text!r}; expected 'CXR<number>'.")

    sections = {label: "" for label in SECTION_LABELS}
    for element in root.iter("AbstractText"):
        label = (element.get("Label") or "").strip().upper()
        sections[label] = "".join(element.itertext()).strip()

    return IUReport(
        uid=int(uid_text[3:]),
        sections=sections,
        image_ids=tuple(element.get("id", "") for element in root.findall("parentImage")),
        mesh_major=tuple((element.text or "").strip() for element in root.findall("MeSH/major")),
        mesh_automatic=tuple((element.text or "").strip() for element in root.findall("MeSH/automatic")),
        license_url=(root.findtext("licenseURL") or "").strip(),
    )


@functools.lru_cache(maxsize=4)
def _parse_reports_cached(source: str, modified_ns: int) -> tuple[IUReport, ...]:
    path = Path(source)
    reports: list[IUReport] = []
    if path.is_file():
        with tarfile.open(path, mode="r:gz") as archive:
            for member in archive:
                if not (member.isfile() and member.name.endswith(".xml")):
                    continue
                handle = archive.extractfile(member)
                if handle is not None:
                    reports.append(_parse_report_xml(handle.read(), f"{path}:{member.name}"))
    else:
        for xml_path in sorted(path.glob("*.xml")):
            reports.append(_parse_report_xml(xml_path.read_bytes(), str(xml_path)))
    if not reports:
        raise ValueError(f"No XML report found in {path}; expected the IU X-ray report archive or its {REPORT_FOLDER}/ folder.")
    uids = Counter(report.uid for report in reports)
    duplicated = [uid for uid, count in uids.items() if count > 1]
    if duplicated:
        raise ValueError(f"IU X-ray reports in {path} repeat the uids {sorted(duplicated)[:10]}; expected one XML file per uid.")
    return tuple(sorted(reports, key=lambda report: report.uid))


def parse_iu_reports(data_dir: str | Path | None = None) -> list[IUReport]:
    """Parse every XML report of the IU X-ray report archive (or its extracted folder), sorted by uid.

    The archive is preferred when both are present. Results are cached per file and modification time.
    """
    folder = resolve_iu_xray_dir(data_dir)
    source = folder / REPORT_ARCHIVE if (folder / REPORT_ARCHIVE).is_file() else folder / REPORT_FOLDER
    reports = list(_parse_reports_cached(str(source.resolve()), source.stat().st_mtime_ns))
    logger.info("Parsed %d IU X-ray reports from %s.", len(reports), source)
    return reports


def read_view_positions(data_dir: str | Path | None = None) -> dict[str, str]:
    """Return the view label of each image id from the DICOM header table, or {} when the table is absent.

    Values come from the "View Position" column, mapped to "PA", "AP" or "L" (lateral: LL, RL,
    LATERAL, LARGE LATERAL); blank values are left out. NOTE: these header values are noisy and blank for about a
    third of the images.
    """
    path = resolve_iu_xray_dir(data_dir) / DICOM_METADATA_FILE
    if not path.is_file():
        logger.info("No DICOM header table at %s; IU X-ray views are left unknown.", path)
        return {}
    views: dict[str, str] = {}
    with gzip.open(path, mode="rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "imageid" not in reader.fieldnames or "View Position" not in reader.fieldnames:
            raise ValueError(f"{path} lacks the columns 'imageid' and 'View Position'; found {reader.fieldnames[:10] if reader.fieldnames else []}.")
        for row in reader:
            raw = (row["View Position"] or "").strip().upper()
            if raw:
                views[row["imageid"].strip()] = _VIEW_LABELS.get(raw, raw)
    return views


# ----------------------------------------------------------------------------- images


@dataclass
class _ImageIndex:
    """Image files found under the searched folders, indexed for the three known layouts."""

    roots: list[Path]
    files_by_name: dict[str, str] = field(default_factory=dict)
    r2gen_folders: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, roots: Sequence[Path], max_depth: int = IMAGE_SEARCH_DEPTH) -> _ImageIndex:
        index = cls(roots=list(roots))
        for root in roots:
            root_depth = len(root.parts)
            for folder, subfolders, files in os.walk(root):
                folder_path = Path(folder)
                if len(folder_path.parts) - root_depth >= max_depth:
                    subfolders.clear()
                numbered = sorted(
                    (int(match[1]), name) for name in files if (match := _R2GEN_IMAGE_PATTERN.match(name))
                )
                if numbered and _R2GEN_ID_PATTERN.match(folder_path.name):
                    index.r2gen_folders.setdefault(folder_path.name, [os.path.abspath(folder_path / name) for _, name in numbered])
                for name in files:
                    if name.lower().endswith(".png"):
                        index.files_by_name.setdefault(name, os.path.abspath(folder_path / name))
        return index

    def locate(self, report: IUReport, r2gen_id: str | None, view_positions: dict[str, str]) -> tuple[str, list[str], list[str]]:
        """Return (layout, image paths, views) for the first layout with at least one file, else ("", [], [])."""
        for layout in IMAGE_LAYOUTS:
            if layout == "r2gen":
                paths = self.r2gen_folders.get(r2gen_id or "", [])
                # NOTE: R2Gen numbers two (of up to five) images per study and the mapping of 0.png and
                # 1.png to image ids is not recorded, so their views stay unknown.
                views = [""] * len(paths)
            else:
                paths, views = [], []
                for image_id in report.image_ids:
                    name = f"{image_id}.png" if layout == "nlm" else f"{image_id.removeprefix('CXR')}.dcm.png"
                    path = self.files_by_name.get(name)
                    if path is not None:
                        paths.append(path)
                        views.append(view_positions.get(image_id, ""))
            if paths:
                return layout, paths, views
        return "", [], []


def _describe_search(roots: Sequence[Path]) -> str:
    folders = ", ".join(str(root) for root in roots)
    return (
        f"searched {folders} (up to {IMAGE_SEARCH_DEPTH} folder levels) for the NLM layout '<image id>.png', "
        "the Kaggle layout 'images_normalized/<image id without CXR>.dcm.png' and the R2Gen layout '<study id>/0.png'"
    )


# ----------------------------------------------------------------------------- splits


def read_r2gen_split(path: str | Path) -> dict[int, tuple[str, str]]:
    """Read an R2Gen annotation file and return {XML uid: (split, R2Gen study id)}.

    Entries are grouped by their own `split` field, not by the top-level key, because copies of the
    file exist whose test list sits under a mangled key. "val" becomes "validation".
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"R2Gen split file {path} is not valid JSON: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"R2Gen split file {path} must hold a JSON object of lists, got {type(content).__name__}.")

    assignment: dict[int, tuple[str, str]] = {}
    for key, entries in content.items():
        for entry in entries:
            study_id = str(entry.get("id", ""))
            match = _R2GEN_ID_PATTERN.match(study_id)
            if match is None:
                raise ValueError(f"R2Gen split file {path}, list {key!r}: id {study_id!r} does not start with 'CXR<number>_'.")
            split = normalize_split_name(str(entry.get("split", "")), source=f"{path}, entry {study_id!r}")
            uid = int(match[1])
            if uid in assignment:
                raise ValueError(f"R2Gen split file {path} lists uid {uid} twice ({assignment[uid][1]!r} and {study_id!r}).")
            assignment[uid] = (split, study_id)
    return assignment


# ----------------------------------------------------------------------------- loader


def _check_sections(sections: Sequence[str], argument: str) -> tuple[str, ...]:
    if isinstance(sections, str):
        sections = (sections,)
    normalized = tuple(section.strip().upper() for section in sections)
    unknown = [section for section in normalized if section not in SECTION_LABELS]
    if unknown:
        raise ValueError(f"{argument} contains {unknown}; expected section labels among {list(SECTION_LABELS)}.")
    return normalized


def _join_sections(report: IUReport, sections: Sequence[str], labelled: bool) -> str:
    parts = []
    for section in sections:
        text = report.sections.get(section, "")
        if not text:
            continue
        if labelled:
            # End each labelled section with a full stop so the labels read as separate sentences.
            parts.append(f"{section.capitalize()}: {text}" + ("" if text[-1] in ".!?" else "."))
        else:
            parts.append(text)
    return " ".join(parts)


def load_iu_xray_records(
    data_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    target_sections: Sequence[str] = ("FINDINGS", "IMPRESSION"),
    history_sections: Sequence[str] = ("INDICATION", "COMPARISON"),
    split: str | Path | None = "r2gen",
    require_images: bool = False,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    label_target_sections: bool = False,
) -> list[StudyRecord]:
    """Load the IU X-ray studies as study records (see `load_iu_xray` for the arguments).

    One report is one study. `patient_id` is the XML uid, because the collection gives each report
    its own patient (the DICOM `Patient ID` equals the uid). `history` joins the `history_sections`
    as "Indication: ... Comparison: ...", skipping empty ones and ending each with a full stop.
    `report` joins the `target_sections` with a space, unchanged, or each prefixed with its label
    and ended with a full stop when `label_target_sections` is true. Studies whose target is empty
    are dropped. "XXXX" words from de-identification are kept as they are.
    """
    target_sections = _check_sections(target_sections, "target_sections")
    history_sections = _check_sections(history_sections, "history_sections")
    if not target_sections:
        raise ValueError("target_sections is empty; expected at least one of FINDINGS, IMPRESSION, INDICATION, COMPARISON.")
    folder = resolve_iu_xray_dir(data_dir)

    # 1. Parse the reports and keep those with a non-empty target.
    reports = parse_iu_reports(folder)
    texts = {report.uid: _join_sections(report, target_sections, label_target_sections) for report in reports}
    with_target = [report for report in reports if texts[report.uid]]
    if len(with_target) < len(reports):
        logger.info("Dropped %d of %d IU X-ray studies whose target sections %s are empty.", len(reports) - len(with_target), len(reports), list(target_sections))

    # 2. Build the records, without split and images yet.
    records: list[StudyRecord] = []
    for report in with_target:
        records.append(
            StudyRecord(
                study_id=f"CXR{report.uid}",
                patient_id=str(report.uid),
                image_paths=[],
                views=[],
                history=_join_sections(report, history_sections, labelled=True),
                report=texts[report.uid],
                split="",
                source=SOURCE_NAME,
                metadata="",
            )
        )
    report_by_uid = {report.uid: report for report in with_target}

    # 3. Assign splits.
    r2gen_ids: dict[int, str] = {}
    if split is None:
        records = split_by_patient(records, fractions=fractions, seed=seed)
    elif split == "r2gen" or str(split).lower().endswith(".json"):
        split_path = folder / R2GEN_SPLIT_FILE if split == "r2gen" else Path(split)
        if not split_path.is_file():
            raise FileNotFoundError(f"R2Gen split file {split_path} not found. Pass split=None to split by patient with a seed, or split=<path> to a split file.")
        assignment = read_r2gen_split(split_path)
        r2gen_ids = {uid: study_id for uid, (_, study_id) in assignment.items()}
        kept = [{**record, "split": assignment[int(record["patient_id"])][0]} for record in records if int(record["patient_id"]) in assignment]
        if len(kept) < len(records):
            logger.info("Dropped %d IU X-ray studies not listed in the R2Gen split file %s.", len(records) - len(kept), split_path)
        records = kept
        check_patient_disjoint(records, source=f"the R2Gen split file {split_path}")
    else:
        records, unmatched = apply_split_file(records, split)
        if unmatched:
            logger.warning("Dropped %d IU X-ray studies not listed in the split file %s.", len(unmatched), split)

    # 4. Find the images.
    search_roots = [Path(images_dir)] if images_dir is not None else [folder]
    missing_roots = [root for root in search_roots if not root.is_dir()]
    if missing_roots:
        raise FileNotFoundError(f"images_dir {missing_roots[0]} is not a folder; pass the folder that holds the IU X-ray images.")
    index = _ImageIndex.build(search_roots)
    view_positions = read_view_positions(folder)
    layouts: Counter[str] = Counter()
    for record in records:
        report = report_by_uid[int(record["patient_id"])]
        r2gen_id = r2gen_ids.get(report.uid) or report.r2gen_id
        layout, record["image_paths"], record["views"] = index.locate(report, r2gen_id, view_positions)
        layouts[layout or "none"] += 1
        record["metadata"] = encode_metadata(
            {
                "license": _LICENSE,
                "license_url": report.license_url,
                "doi": _DOI,
                "url": _URL,
                "credit": _CREDIT,
                "mesh_major": list(report.mesh_major),
                "mesh_automatic": list(report.mesh_automatic),
                "image_ids": list(report.image_ids),
                "image_views": [view_positions.get(image_id, "") for image_id in report.image_ids],
                "r2gen_id": r2gen_id or "",
                "image_layout": layout,
            }
        )

    # 5. Report studies without images; drop them or stop when images are required.
    without_images = layouts["none"]
    if without_images:
        message = f"No image file found for {without_images} of {len(records)} IU X-ray studies: {_describe_search(search_roots)}."
        if require_images and without_images == len(records):
            raise MissingImagesError(
                f"{message} Pass images_dir= the folder that holds the IU X-ray images, or require_images=False to load the reports without images."
            )
        if require_images:
            logger.warning("%s Dropping them because require_images=True.", message)
            records = [record for record in records if record["image_paths"]]
        else:
            logger.warning("%s Keeping them with empty image_paths because require_images=False.", message)
    if layouts.keys() - {"none"}:
        logger.info("IU X-ray images found per layout: %s.", dict(layouts))
    return records


def load_iu_xray(
    data_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    target_sections: Sequence[str] = ("FINDINGS", "IMPRESSION"),
    history_sections: Sequence[str] = ("INDICATION", "COMPARISON"),
    split: str | Path | None = "r2gen",
    require_images: bool = False,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    label_target_sections: bool = False,
) -> datasets.DatasetDict:
    """Load IU X-ray as a `DatasetDict` of studies with the columns of `eir.data.records.STUDY_COLUMNS`.

    Args:
        data_dir: folder holding `NLMCXR_reports.tgz` (or `ecgen-radiology/`), or the data root
            holding it as `openi/`; default `default_data_dir()`.
        images_dir: folder holding the images in the NLM, Kaggle or R2Gen layout (detected per
            study, searched up to `IMAGE_SEARCH_DEPTH` folder levels); default the report folder.
        target_sections: report sections joined into `report`; R2Gen uses ("FINDINGS",).
        history_sections: report sections joined into `history`.
        split: "r2gen" for the R2Gen split file `r2gen_annotation.json` beside the reports, or a
            path to an R2Gen-format `.json` or to a split CSV (see `eir.data.splits.write_split_file`).
            Studies that the file does not list are dropped. None builds a patient split with
            `seed` and `fractions` (train, validation, test).
        require_images: when true, drop studies without image files and raise `MissingImagesError`
            if none has any; when false, keep them with empty `image_paths` (enough for tokenizer
            training and text statistics).
        label_target_sections: prefix each target section with its label ("Findings: ...").
    """
    records = load_iu_xray_records(
        data_dir=data_dir,
        images_dir=images_dir,
        target_sections=target_sections,
        history_sections=history_sections,
        split=split,
        require_images=require_images,
        seed=seed,
        fractions=fractions,
        label_target_sections=label_target_sections,
    )
    return records_to_dataset_dict(records)


__all__ = [
    "IUReport",
    "MissingImagesError",
    "load_iu_xray",
    "load_iu_xray_records",
    "parse_iu_reports",
    "read_r2gen_split",
    "read_view_positions",
    "resolve_iu_xray_dir",
]
