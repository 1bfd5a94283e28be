"""The `evaluate` module in metrics/eir_report_metrics gives the scores of `compute_report_metrics`."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import evaluate
import pytest

from eir.data.iu_xray import parse_iu_reports
from eir.metrics import SCORE_NAMES, compute_report_metrics
from eir.paths import default_data_dir

MODULE_PATH = Path(__file__).resolve().parents[1] / "metrics" / "eir_report_metrics"


@pytest.fixture(scope="module")
def iu_findings() -> list[str]:
    """FINDINGS sections of the first 120 IU X-ray reports that have one."""
    data_dir = default_data_dir()
    if not (data_dir / "openi" / "NLMCXR_reports.tgz").is_file():
        pytest.skip(f"IU X-ray report archive not found under {data_dir / 'openi'} (set EIR_DATA_DIR)")
    findings = [report.sections.get("FINDINGS", "").strip() for report in parse_iu_reports(data_dir)]
    findings = [text for text in findings if text]
    assert len(findings) >= 120
    return findings[:120]


@pytest.fixture(scope="module")
def report_pairs(iu_findings) -> tuple[list[str], list[str]]:
    """Predictions are the findings of the next report, so scores are real, low and non-zero."""
    references = iu_findings
    predictions = iu_findings[1:] + iu_findings[:1]
    return predictions, references


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def assert_same_scores(module_scores: dict, direct_scores: dict) -> None:
    assert set(module_scores) == set(direct_scores)
    for name in (*SCORE_NAMES, "distinct_fraction"):
        if math.isnan(direct_scores[name]):
            assert math.isnan(module_scores[name]), name
        else:
            assert module_scores[name] == pytest.approx(direct_scores[name], rel=1e-12), name
    assert module_scores["num_samples"] == direct_scores["num_samples"]
    assert module_scores["protocol"] == direct_scores["protocol"]


def test_load_by_path_offline(offline):
    metric = evaluate.load(str(MODULE_PATH))
    assert metric.name == "eir_report_metrics"
    assert metric.config_name == "default"
    assert set(metric.features) == {"predictions", "references"}


def test_raw_scores_match(offline, report_pairs):
    predictions, references = report_pairs
    metric = evaluate.load(str(MODULE_PATH))
    module_scores = metric.compute(predictions=predictions, references=references, include_meteor=False)
    direct_scores = compute_report_metrics(predictions, references, protocol="raw", include_meteor=False)
    assert_same_scores(module_scores, direct_scores)
    assert 0.0 < module_scores["BLEU-1"] < 1.0
    assert math.isnan(module_scores["METEOR"])


def test_r2gen_config_scores_match(offline, report_pairs):
    predictions, references = report_pairs
    metric = evaluate.load(str(MODULE_PATH), "r2gen")
    module_scores = metric.compute(predictions=predictions, references=references, include_meteor=False)
    direct_scores = compute_report_metrics(predictions, references, protocol="r2gen", include_meteor=False)
    assert_same_scores(module_scores, direct_scores)
    assert module_scores["protocol"] == "r2gen"


def test_add_batch_equals_one_call(offline, report_pairs):
    predictions, references = report_pairs
    metric = evaluate.load(str(MODULE_PATH))
    for start in range(0, len(predictions), 50):
        metric.add_batch(predictions=predictions[start : start + 50], references=references[start : start + 50])
    batched = metric.compute(include_meteor=False)
    direct_scores = compute_report_metrics(predictions, references, include_meteor=False)
    assert_same_scores(batched, direct_scores)


def test_unknown_config_rejected(offline):
    metric = evaluate.load(str(MODULE_PATH), "mimic")
    with pytest.raises(ValueError, match="mimic"):
        metric.compute(predictions=["no acute disease ."], references=["no acute disease ."], include_meteor=False)


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs a `java` executable on PATH")
def test_meteor_matches(offline, report_pairs):
    predictions, references = (texts[:20] for texts in report_pairs)
    metric = evaluate.load(str(MODULE_PATH))
    module_scores = metric.compute(predictions=predictions, references=references)
    direct_scores = compute_report_metrics(predictions, references, protocol="raw", include_meteor=True)
    assert 0.0 < module_scores["METEOR"] < 1.0
    assert module_scores["METEOR"] == pytest.approx(direct_scores["METEOR"], abs=1e-9)
