"""Tests for eir.baselines: retrieval baselines and their scores on IU X-ray findings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eir import baselines
from eir.baselines import (
    MOST_FREQUENT,
    NEAREST_NEIGHBOUR,
    RANDOM,
    evaluate_baselines,
    most_frequent_report,
    nearest_neighbour_predictions,
    random_report_predictions,
)
from eir.metrics import SCORE_NAMES, format_metrics_table
from eir.paths import default_data_dir

ANNOTATION_PATH = default_data_dir() / "openi" / "r2gen_annotation.json"

TRAIN_REPORTS = [
    "The heart is normal in size. The lungs are clear.",
    "Mild cardiomegaly. No pleural effusion.",
    "The heart is normal in size. The lungs are clear.",
    "Degenerative changes of the thoracic spine.",
    "Right lower lobe consolidation concerning for pneumonia.",
    "No acute cardiopulmonary abnormality.",
]
REFERENCES = [
    "The heart is normal in size. The lungs are clear. No effusion.",
    "Mild cardiomegaly with small bilateral effusions.",
    "Left lower lobe opacity, possibly pneumonia.",
]


def test_most_frequent_report_counts() -> None:
    assert most_frequent_report(TRAIN_REPORTS) == TRAIN_REPORTS[0]


def test_most_frequent_report_tie_break() -> None:
    assert most_frequent_report(["b", "a", "a", "b", "c"]) == "b"
    assert most_frequent_report(["c", "a", "b"]) == "c"


def test_most_frequent_report_empty() -> None:
    with pytest.raises(ValueError, match="train_reports is empty"):
        most_frequent_report([])


def test_random_predictions_deterministic_per_seed() -> None:
    pool = [f"report {index}" for index in range(100)]
    first = random_report_predictions(pool, 50, seed=3)

    assert first == random_report_predictions(pool, 50, seed=3)
    assert first != random_report_predictions(pool, 50, seed=4)
    assert len(first) == 50
    assert set(first) <= set(pool)


def test_nearest_neighbour_uses_cosine() -> None:
    train = np.array([[10.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    queries = np.array([[0.1, 1.0], [1.0, 0.0]])
    predictions = nearest_neighbour_predictions(queries, train, ["long x", "y", "x"])
    # The first training vector has the largest dot product with both queries but a smaller cosine.
    assert predictions == ["y", "x"]


def test_nearest_neighbour_excludes_same_group() -> None:
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    reports = ["patient A first", "patient B", "patient A second"]

    predictions = nearest_neighbour_predictions(
        queries, train, reports, query_groups=["A", "C"], train_groups=["A", "B", "A"]
    )

    assert predictions[0] == "patient B"
    assert predictions[1] == "patient A first"


def test_nearest_neighbour_no_other_group() -> None:
    with pytest.raises(ValueError, match="no training entry of another group"):
        nearest_neighbour_predictions(
            np.ones((1, 2)), np.ones((2, 2)), ["a", "b"], query_groups=["A"], train_groups=["A", "A"]
        )


def test_nearest_neighbour_shape_checks() -> None:
    with pytest.raises(ValueError, match="same dimension"):
        nearest_neighbour_predictions(np.ones((1, 3)), np.ones((2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="one report per row"):
        nearest_neighbour_predictions(np.ones((1, 2)), np.ones((2, 2)), ["a"])
    with pytest.raises(ValueError, match="given together"):
        nearest_neighbour_predictions(np.ones((1, 2)), np.ones((2, 2)), ["a", "b"], query_groups=["A"])


def test_evaluate_baselines_keys_and_std() -> None:
    rng = np.random.default_rng(0)
    results = evaluate_baselines(
        TRAIN_REPORTS,
        REFERENCES,
        query_embeddings=rng.normal(size=(3, 8)),
        train_embeddings=rng.normal(size=(6, 8)),
        include_meteor=False,
    )

    assert list(results) == [MOST_FREQUENT, RANDOM, NEAREST_NEIGHBOUR]
    random_row = results[RANDOM]
    assert random_row["seeds"] == [0, 1, 2, 3, 4]
    assert set(random_row["std"]) == {*SCORE_NAMES, "distinct_fraction"}
    assert random_row["std"]["BLEU-1"] > 0
    assert random_row["BLEU-1"] == pytest.approx(np.mean([run["BLEU-1"] for run in random_row["per_seed"].values()]))
    assert results[MOST_FREQUENT]["distinct_fraction"] == pytest.approx(1 / 3)
    assert results[MOST_FREQUENT]["num_samples"] == 3
    assert math.isnan(results[NEAREST_NEIGHBOUR]["METEOR"])

    table = format_metrics_table(results, protocol="raw")
    assert "random training report (mean ± std over 5 seeds)" in table


def test_evaluate_baselines_without_embeddings() -> None:
    results = evaluate_baselines(TRAIN_REPORTS, REFERENCES, protocol="r2gen", seeds=(7,), include_meteor=False)
    assert list(results) == [MOST_FREQUENT, RANDOM]
    assert results[RANDOM]["protocol"] == "r2gen"
    assert math.isnan(results[RANDOM]["std"]["BLEU-4"])


def test_evaluate_baselines_nearest_subset() -> None:
    results = evaluate_baselines(
        TRAIN_REPORTS,
        REFERENCES[:1],
        seeds=(0,),
        query_embeddings=np.array([[0.0, 1.0]]),
        train_embeddings=np.array([[1.0, 0.0], [0.0, 1.0]]),
        nearest_train_reports=[TRAIN_REPORTS[3], REFERENCES[0]],
        include_meteor=False,
    )
    assert results[NEAREST_NEIGHBOUR]["BLEU-4"] == pytest.approx(1.0, abs=1e-6)


def test_evaluate_baselines_starts_meteor_once(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[FakeMeteorScorer] = []

    class FakeMeteorScorer:
        def __init__(self) -> None:
            self.calls = 0
            self.closed = False
            started.append(self)

        def score(self, predictions: list[str], references: list[str]) -> float:
            self.calls += 1
            return 0.25

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(baselines, "MeteorScorer", FakeMeteorScorer)
    results = evaluate_baselines(
        TRAIN_REPORTS, REFERENCES, query_embeddings=np.eye(3, 4), train_embeddings=np.eye(6, 4)
    )

    assert len(started) == 1
    assert started[0].calls == 7  # most frequent, 5 random seeds, nearest neighbour
    assert started[0].closed
    assert results[RANDOM]["METEOR"] == 0.25


@pytest.mark.skipif(
    not ANNOTATION_PATH.is_file(),
    reason=f"IU X-ray R2Gen annotation not found at {ANNOTATION_PATH} (set EIR_DATA_DIR)",
)
def test_baselines_on_iu_validation_findings() -> None:
    annotation = json.loads(ANNOTATION_PATH.read_text(encoding="utf-8"))
    findings_by_split: dict[str, list[str]] = {}
    for entries in annotation.values():
        for entry in entries:
            findings_by_split.setdefault(entry["split"], []).append(entry["report"])
    assert len(findings_by_split["train"]) == 2069
    assert len(findings_by_split["val"]) == 296

    results = evaluate_baselines(findings_by_split["train"], findings_by_split["val"], protocol="raw")
    most_frequent = results[MOST_FREQUENT]
    random_row = results[RANDOM]

    # Ranges around the values measured with this code (raw protocol, seeds 0-4):
    # most frequent BLEU-4 0.057, METEOR 0.104, ROUGE-L 0.289, CIDEr 0.324;
    # random BLEU-4 0.090 ± 0.005, METEOR 0.150 ± 0.002, CIDEr 0.147 ± 0.018.
    assert most_frequent_report(findings_by_split["train"]).startswith("The heart is normal in size.")
    assert 0.045 < most_frequent["BLEU-4"] < 0.07
    assert 0.09 < most_frequent["METEOR"] < 0.12
    assert 0.26 < most_frequent["ROUGE-L"] < 0.32
    assert 0.25 < most_frequent["CIDEr"] < 0.40
    assert most_frequent["distinct_fraction"] == pytest.approx(1 / 296)
    assert 0.075 < random_row["BLEU-4"] < 0.105
    assert 0.13 < random_row["METEOR"] < 0.17
    assert 0.10 < random_row["CIDEr"] < 0.20
    assert 0.0 < random_row["std"]["BLEU-4"] < 0.02
    assert 0.8 < random_row["distinct_fraction"] < 0.95
