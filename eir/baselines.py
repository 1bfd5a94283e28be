"""Retrieval baselines for report generation: reports copied from the training split.

A generated report should beat these: the most frequent training report, a random training
report, and the report of the training image whose embedding is nearest to the query.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from eir.metrics import SCORE_NAMES, MeteorScorer, MeteorUnavailableError, compute_report_metrics

logger = logging.getLogger(__name__)

MOST_FREQUENT = "most frequent training report"
RANDOM = "random training report"
NEAREST_NEIGHBOUR = "nearest training image"

# Rows of similarities computed at once, which bounds memory to chunk size × training size.
_QUERY_CHUNK_SIZE = 1024


def most_frequent_report(train_reports: Sequence[str]) -> str:
    """Return the training report that occurs most often (exact string match).

    Ties go to the report that occurs first in `train_reports`.
    """
    if not train_reports:
        raise ValueError("train_reports is empty; at least one training report is needed.")
    counts = Counter(train_reports)
    # Counter keeps first-occurrence order, and max() keeps the first of equal counts.
    return max(counts, key=counts.__getitem__)


def random_report_predictions(train_reports: Sequence[str], n: int, seed: int) -> list[str]:
    """Draw `n` training reports uniformly with replacement, the same ones for the same seed."""
    if not train_reports:
        raise ValueError("train_reports is empty; at least one training report is needed.")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}.")
    generator = random.Random(seed)
    return generator.choices(list(train_reports), k=n)


def nearest_neighbour_predictions(
    query_embeddings: Any,
    train_embeddings: Any,
    train_reports: Sequence[str],
    query_groups: Sequence[Any] | None = None,
    train_groups: Sequence[Any] | None = None,
) -> list[str]:
    """Return, for each query, the report of the training entry with the highest cosine similarity.

    Embeddings are (N, D) and (M, D) numpy arrays or torch tensors. With groups (for example
    patient ids), a training entry whose group equals the query's is never returned. Ties go to
    the earliest training entry, and a zero vector has similarity 0 to everything.
    """
    queries = _as_2d_array(query_embeddings, "query_embeddings")  # (N, D)
    train = _as_2d_array(train_embeddings, "train_embeddings")  # (M, D)
    if queries.shape[1] != train.shape[1]:
        raise ValueError(
            f"query_embeddings and train_embeddings must have the same dimension, "
            f"got {queries.shape[1]} and {train.shape[1]}."
        )
    if len(train_reports) != train.shape[0]:
        raise ValueError(
            f"train_reports must have one report per row of train_embeddings, "
            f"got {len(train_reports)} reports and {train.shape[0]} rows."
        )
    if train.shape[0] == 0:
        raise ValueError("train_embeddings has no rows; at least one training entry is needed.")
    if (query_groups is None) != (train_groups is None):
        raise ValueError("query_groups and train_groups must be given together, got only one of them.")
    if query_groups is not None and len(query_groups) != queries.shape[0]:
        raise ValueError(f"query_groups has {len(query_groups)} entries for {queries.shape[0]} queries.")
    if train_groups is not None and len(train_groups) != train.shape[0]:
        raise ValueError(f"train_groups has {len(train_groups)} entries for {train.shape[0]} training entries.")

    queries = _normalize_rows(queries)
    train = _normalize_rows(train)
    if train_groups is not None:
        train_group_array = np.asarray(train_groups, dtype=object)

    predictions = []
    for start in range(0, queries.shape[0], _QUERY_CHUNK_SIZE):
        similarities = queries[start : start + _QUERY_CHUNK_SIZE] @ train.T  # (chunk, M)
        if query_groups is not None:
            chunk_groups = np.asarray(query_groups[start : start + _QUERY_CHUNK_SIZE], dtype=object)
            same_group = chunk_groups[:, None] == train_group_array[None, :]  # (chunk, M)
            fully_excluded = np.flatnonzero(same_group.all(axis=1))
            if fully_excluded.size:
                query_index = start + int(fully_excluded[0])
                raise ValueError(
                    f"Query {query_index} (group {query_groups[query_index]!r}) has no training entry "
                    "of another group to return."
                )
            similarities = np.where(same_group, -np.inf, similarities)
        best_indices = similarities.argmax(axis=1)
        predictions.extend(train_reports[int(index)] for index in best_indices)
    return predictions


def evaluate_baselines(
    train_reports: Sequence[str],
    references: Sequence[str],
    protocol: str = "raw",
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    query_embeddings: Any = None,
    train_embeddings: Any = None,
    query_groups: Sequence[Any] | None = None,
    train_groups: Sequence[Any] | None = None,
    include_meteor: bool | Literal["auto"] = True,
    nearest_train_reports: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Score the retrieval baselines against `references` with `compute_report_metrics`.

    Returns one metrics dict per baseline, keyed by `MOST_FREQUENT`, `RANDOM` and, only when
    both embedding arrays are given, `NEAREST_NEIGHBOUR`. The random row contains the mean over
    `seeds`, plus "std" (sample standard deviation, NaN for a single seed), "seeds" and
    "per_seed". One METEOR process serves all baselines.

    `nearest_train_reports` gives the reports of the rows of `train_embeddings` when those
    rows are not exactly `train_reports` (for example, only training studies with an image).
    """
    if not seeds:
        raise ValueError("seeds is empty; the random baseline needs at least one seed.")
    if (query_embeddings is None) != (train_embeddings is None):
        raise ValueError("query_embeddings and train_embeddings must be given together, got only one of them.")

    systems: dict[str, list[str]] = {MOST_FREQUENT: [most_frequent_report(train_reports)] * len(references)}
    for seed in seeds:
        systems[f"{RANDOM} (seed {seed})"] = random_report_predictions(train_reports, len(references), seed)
    if query_embeddings is not None:
        systems[NEAREST_NEIGHBOUR] = nearest_neighbour_predictions(
            query_embeddings,
            train_embeddings,
            train_reports if nearest_train_reports is None else nearest_train_reports,
            query_groups,
            train_groups,
        )

    scores = _score_systems(systems, references, protocol, include_meteor)

    per_seed = {seed: scores[f"{RANDOM} (seed {seed})"] for seed in seeds}
    results: dict[str, dict] = {MOST_FREQUENT: scores[MOST_FREQUENT], RANDOM: _aggregate_seeds(per_seed)}
    if NEAREST_NEIGHBOUR in scores:
        results[NEAREST_NEIGHBOUR] = scores[NEAREST_NEIGHBOUR]
    return results


def _score_systems(
    systems: dict[str, list[str]],
    references: Sequence[str],
    protocol: str,
    include_meteor: bool | Literal["auto"],
) -> dict[str, dict]:
    meteor_scorer = None
    if include_meteor is not False:
        try:
            meteor_scorer = MeteorScorer()
        except MeteorUnavailableError:
            if include_meteor != "auto":
                raise
            logger.warning("METEOR is unavailable, so the baselines report METEOR as NaN", exc_info=True)

    scores: dict[str, dict] = {}
    try:
        for name, predictions in systems.items():
            scores[name] = compute_report_metrics(
                predictions,
                references,
                protocol,
                include_meteor=meteor_scorer is not None,
                meteor_scorer=meteor_scorer,
            )
            logger.info("%s: BLEU-4 %.3f, CIDEr %.3f", name, scores[name]["BLEU-4"], scores[name]["CIDEr"])
    finally:
        if meteor_scorer is not None:
            meteor_scorer.close()
    return scores


def _aggregate_seeds(per_seed: dict[int, dict]) -> dict:
    """Average the numeric metrics over seeds and add their sample standard deviations."""
    runs = list(per_seed.values())
    aggregated: dict = {}
    std: dict[str, float] = {}
    for name in [*SCORE_NAMES, "distinct_fraction"]:
        values = np.array([run[name] for run in runs], dtype=float)
        aggregated[name] = float(values.mean())
        std[name] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    aggregated["num_samples"] = runs[0]["num_samples"]
    aggregated["protocol"] = runs[0]["protocol"]
    aggregated["std"] = std
    aggregated["seeds"] = list(per_seed)
    aggregated["per_seed"] = per_seed
    return aggregated


def _as_2d_array(embeddings: Any, name: str) -> np.ndarray:
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().float().numpy()
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (entries, dimension) array, got shape {array.shape}.")
    return array


def _normalize_rows(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, np.finfo(array.dtype).tiny)
