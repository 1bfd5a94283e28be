"""Tests for eir.metrics: tokenizer, R2Gen cleaning, corpus scores, METEOR process and table."""

from __future__ import annotations

import json
import math

import pytest

from eir import metrics
from eir.metrics import (
    EMPTY_PREDICTION_TOKEN,
    R2GEN_MAX_REFERENCE_TOKENS,
    MeteorScorer,
    MeteorUnavailableError,
    clean_report_r2gen,
    compute_report_metrics,
    format_metrics_table,
    tokenize_report,
)
from eir.paths import default_data_dir

ANNOTATION_PATH = default_data_dir() / "openi" / "r2gen_annotation.json"
requires_iu_reports = pytest.mark.skipif(
    not ANNOTATION_PATH.is_file(),
    reason=f"IU X-ray R2Gen annotation not found at {ANNOTATION_PATH} (set EIR_DATA_DIR)",
)

SYNTHETIC_REPORTS = [
    "The heart is normal in size. The lungs are clear.",
    "Mild cardiomegaly. No pleural effusion or pneumothorax.",
    "Degenerative changes of the thoracic spine at T11-T12.",
    "A 3.5 cm nodule in the right upper lobe. No focal consolidation.",
]


def load_iu_findings() -> dict[str, list[dict]]:
    """Group the R2Gen IU X-ray entries by their per-entry "split" field."""
    annotation = json.loads(ANNOTATION_PATH.read_text(encoding="utf-8"))
    entries_by_split: dict[str, list[dict]] = {}
    for entries in annotation.values():
        for entry in entries:
            entries_by_split.setdefault(entry["split"], []).append(entry)
    return entries_by_split


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_keeps_decimals_and_hyphens() -> None:
    tokens = tokenize_report("Nodule 3.5 cm at T11-T12, XXXX.")
    assert tokens == ["nodule", "3.5", "cm", "at", "t11-t12", ",", "xxxx", "."]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lungs clear.", ["lungs", "clear", "."]),
        ("item 1.", ["item", "1", "."]),
        ("x-ray (PA).", ["x-ray", "(", "pa", ")", "."]),
        ("2-3.5-cm lesion", ["2-3.5-cm", "lesion"]),
        ("patient's heart", ["patient", "'", "s", "heart"]),
        ("effusion.The heart", ["effusion", ".", "the", "heart"]),
        ("  \n ", []),
    ],
)
def test_tokenizer_cases(text: str, expected: list[str]) -> None:
    assert tokenize_report(text) == expected


# --- R2Gen cleaning --------------------------------------------------------------------------


def test_r2gen_cleaning_list_markers() -> None:
    assert clean_report_r2gen("1. Heart normal. 2. Lungs clear.") == "heart normal . lungs clear ."


def test_r2gen_cleaning_removes_symbols_keeps_hyphen() -> None:
    cleaned = clean_report_r2gen('No "acute" disease; T11-T12 (stable) <b> @x [y] {z}.')
    assert cleaned == "no acute disease t11-t12 stable b x y z ."


@requires_iu_reports
@pytest.mark.parametrize(
    ("report_id", "expected"),
    [
        (
            "CXR2837_IM-1252",
            "rounded 14 cm projecting retrosternally on lateral view only . no focal consolidation effusion"
            " or pneumothorax . normal heart size . minimal degenerative changes of the thoracic spine ."
            " negative for pneumoperitoneum .",
        ),
        (
            "CXR1639_IM-0418",
            "the lungs are relatively clear with xxxx sulci . heart size normal in lv contour . slightly"
            " unfolded ascending and descending aorta . t-spine unremarkable .",
        ),
        (
            "CXR3488_IM-1696",
            "the cardiomediastinal silhouette and vasculature are within normal limits for size and contour ."
            " the lungs are normally inflated and clear . degenerative changes of the spine .",
        ),
    ],
)
def test_r2gen_cleaning_real_reports(report_id: str, expected: str) -> None:
    reports = {entry["id"]: entry["report"] for entries in load_iu_findings().values() for entry in entries}
    assert clean_report_r2gen(reports[report_id]) == expected


# --- scores ----------------------------------------------------------------------------------


def test_identical_texts_score_perfectly() -> None:
    scores = compute_report_metrics(SYNTHETIC_REPORTS, SYNTHETIC_REPORTS, include_meteor=False)
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0)
    assert scores["CIDEr"] > 0
    assert scores["distinct_fraction"] == 1.0
    assert scores["num_samples"] == 4
    assert scores["protocol"] == "raw"
    assert math.isnan(scores["METEOR"])


def test_bleu1_matches_manual_calculation() -> None:
    predictions = ["The heart is normal", "Lungs are hyperinflated."]
    references = ["The heart size is normal.", "The lungs are clear."]
    scores = compute_report_metrics(predictions, references, include_meteor=False)

    # Clipped unigram matches 4 + 3 of 8 predicted tokens, predicted length 8, reference length
    # 6 + 5 = 11, so the brevity penalty is exp(1 - 11 / 8).
    expected_bleu1 = (7 / 8) * math.exp(1 - 11 / 8)
    assert scores["BLEU-1"] == pytest.approx(expected_bleu1, rel=1e-6)


def test_empty_prediction_is_scored_as_placeholder(caplog: pytest.LogCaptureFixture) -> None:
    predictions = ["", *SYNTHETIC_REPORTS[1:]]
    with caplog.at_level("WARNING", logger="eir.metrics"):
        scores = compute_report_metrics(predictions, SYNTHETIC_REPORTS, include_meteor=False)
    perfect = compute_report_metrics(SYNTHETIC_REPORTS, SYNTHETIC_REPORTS, include_meteor=False)

    assert 0 < scores["BLEU-4"] < perfect["BLEU-4"]
    assert scores["ROUGE-L"] == pytest.approx(3 / 4)
    assert "1 of 4 predictions are empty" in caplog.text


def test_r2gen_empty_prediction_scores_zero() -> None:
    scores = compute_report_metrics(["   "], ["Lungs clear."], protocol="r2gen", include_meteor=False)
    assert scores["ROUGE-L"] == 0.0


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="got 2 predictions and 3 references"):
        compute_report_metrics(SYNTHETIC_REPORTS[:2], SYNTHETIC_REPORTS[:3], include_meteor=False)


@pytest.mark.parametrize(
    ("predictions", "references"),
    [
        (["ok", 3], ["ok", "ok"]),
        (["ok"], [None]),
        ("a string, not a list", "another string"),
    ],
)
def test_non_string_inputs_raise(predictions: object, references: object) -> None:
    with pytest.raises(TypeError):
        compute_report_metrics(predictions, references, include_meteor=False)  # type: ignore[arg-type]


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        compute_report_metrics([], [], include_meteor=False)
    with pytest.raises(ValueError, match="protocol must be one of"):
        compute_report_metrics(["a"], ["a"], protocol="coco", include_meteor=False)
    with pytest.raises(ValueError, match="never truncates"):
        compute_report_metrics(["a"], ["a"], max_reference_tokens=10, include_meteor=False)
    with pytest.raises(ValueError, match=r"references\[1\] has no tokens"):
        compute_report_metrics(["a", "b"], ["a", "  "], include_meteor=False)
    with pytest.raises(ValueError, match="reserved placeholder"):
        compute_report_metrics(["a"], [f"a {EMPTY_PREDICTION_TOKEN}"], include_meteor=False)


def test_raw_never_truncates_references() -> None:
    # The prediction repeats only words 60..79 of an 80-word reference. R2Gen's cut-off keeps
    # words 0..58, so only the raw protocol can see the overlap.
    words = [f"finding{index}" for index in range(80)]
    reference = " ".join(words)
    prediction = " ".join(words[60:])

    raw = compute_report_metrics([prediction], [reference], protocol="raw", include_meteor=False)
    r2gen = compute_report_metrics([prediction], [reference], protocol="r2gen", include_meteor=False)

    assert R2GEN_MAX_REFERENCE_TOKENS == 59
    assert raw["ROUGE-L"] > 0.2
    assert raw["BLEU-1"] > 0.01
    assert r2gen["ROUGE-L"] == 0.0
    assert r2gen["BLEU-1"] < 1e-6


def test_r2gen_reference_cut_off_is_configurable() -> None:
    words = [f"finding{index}" for index in range(80)]
    reference = " ".join(words)
    prediction = " ".join(words[60:])
    scores = compute_report_metrics(
        [prediction], [reference], protocol="r2gen", max_reference_tokens=200, include_meteor=False
    )
    assert scores["ROUGE-L"] > 0.2


# --- METEOR ----------------------------------------------------------------------------------


@requires_iu_reports
def test_meteor_on_real_findings_closes_java() -> None:
    findings = [entry["report"] for entry in load_iu_findings()["val"][:60]]
    shifted = ["", *findings[1:-1]]  # an empty prediction and mostly mismatched pairs

    with MeteorScorer() as scorer:
        identical = compute_report_metrics(findings[:-1], findings[:-1], meteor_scorer=scorer)
        mismatched = compute_report_metrics(shifted, findings[1:], meteor_scorer=scorer)
        process = scorer._meteor.meteor_p

    assert identical["METEOR"] == pytest.approx(1.0, abs=1e-3)
    assert 0.05 < mismatched["METEOR"] < 0.6
    assert process.poll() is not None, "the METEOR Java process is still running after close()"


def test_meteor_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)

    with pytest.raises(MeteorUnavailableError, match="no `java` executable"):
        compute_report_metrics(SYNTHETIC_REPORTS, SYNTHETIC_REPORTS, include_meteor=True)
    with pytest.warns(RuntimeWarning, match="METEOR is reported as NaN"):
        scores = compute_report_metrics(SYNTHETIC_REPORTS, SYNTHETIC_REPORTS, include_meteor="auto")
    assert math.isnan(scores["METEOR"])
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)


# --- table -----------------------------------------------------------------------------------


def test_metrics_table_layout() -> None:
    eir_row = compute_report_metrics(SYNTHETIC_REPORTS, SYNTHETIC_REPORTS, include_meteor=False)
    random_row = dict(eir_row, std={"BLEU-4": 0.01234}, seeds=[0, 1, 2, 3, 4])
    table = format_metrics_table({"EIR": eir_row, "random training report": random_row}, protocol="raw")
    lines = table.splitlines()

    assert "protocol `raw`" in lines[0]
    assert lines[2].startswith("| system | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr | distinct |")
    assert len(lines) == 6
    assert lines[4].startswith("| EIR | 1.000 |")
    assert "| n/a |" in lines[4]
    assert "random training report (mean ± std over 5 seeds)" in lines[5]
    assert "1.000 ± 0.012" in lines[5]


def test_metrics_table_rejects_other_protocol() -> None:
    row = compute_report_metrics(SYNTHETIC_REPORTS, SYNTHETIC_REPORTS, protocol="r2gen", include_meteor=False)
    with pytest.raises(ValueError, match="computed with protocol 'r2gen'"):
        format_metrics_table({"EIR": row}, protocol="raw")
