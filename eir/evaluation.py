"""Generate reports for a split and score them beside the baselines."""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling_eir import EIRForReportGeneration
from processing_eir import EIRProcessor, patient_group_id

from .baselines import evaluate_baselines
from .metrics import MeteorUnavailableError, compute_report_metrics, format_metrics_table
from .studies import StudyCollator, StudyDataset, model_inputs

logger = logging.getLogger(__name__)


def peak_memory_mib() -> float:
    """Peak resident memory of this process, in MiB (Linux reports `ru_maxrss` in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@torch.no_grad()
def generate_reports(
    model: EIRForReportGeneration,
    processor: EIRProcessor,
    loader: DataLoader,
    records: list[dict[str, Any]],
    accelerator: Accelerator | None = None,
    show_progress: bool = False,
    **generation_kwargs,
) -> tuple[list[str], list[str]]:
    """Generate a report for every record; return predictions and full references in record order.

    A study whose images could not be read gets an empty prediction (logged), so it still counts
    in the scores instead of silently leaving the split.
    """
    model.eval()
    generated: dict[int, str] = {}
    main_process = accelerator is None or accelerator.is_main_process
    for batch in tqdm(loader, desc="generating", disable=not (show_progress and main_process)):
        if not batch:
            continue
        output_ids = model.generate(**model_inputs(batch, with_labels=False), **generation_kwargs)
        indices = batch["index"]
        if accelerator is not None and accelerator.num_processes > 1:
            output_ids = accelerator.pad_across_processes(output_ids, dim=1, pad_index=model.config.pad_token_id)
            output_ids = accelerator.gather_for_metrics(output_ids)
            indices = accelerator.gather_for_metrics(indices)
        texts = processor.batch_decode(output_ids, skip_special_tokens=True)
        for index, text in zip(indices.tolist(), texts):
            generated.setdefault(index, text.strip())
    missing = [records[i]["study_id"] for i in range(len(records)) if i not in generated]
    if missing:
        logger.warning("%d studies had no readable image and count with an empty report: %s", len(missing), missing[:10])
    predictions = [generated.get(i, "") for i in range(len(records))]
    references = [record["report"] for record in records]
    return predictions, references


@torch.no_grad()
def study_embeddings(model: EIRForReportGeneration, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Return image embeddings (N, d) of the readable studies and their record indices."""
    model.eval()
    embeddings, indices = [], []
    for batch in loader:
        if not batch:
            continue
        embeddings.append(model.encode_images(batch["pixel_values"], batch["pixel_mask"]).float())
        indices.append(batch["index"])
    if not embeddings:
        return torch.zeros(0, model.config.hidden_size), torch.zeros(0, dtype=torch.long)
    return torch.cat(embeddings), torch.cat(indices)


def evaluate_model(
    model_dir: str | Path,
    split_records: dict[str, list[dict[str, Any]]],
    split: str = "test",
    protocol: str = "raw",
    batch_size: int = 16,
    output_dir: str | Path | None = None,
    include_meteor: bool = True,
    random_seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    generation_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a saved model on one split beside three baselines computed on the same split.

    Baselines: the most frequent training report; a random training report (mean and standard
    deviation over `random_seeds`); the training report of the nearest training image, with
    image embeddings from this model's encoder and the same patient never used as neighbour.

    Writes `metrics_<split>.json`, `predictions_<split>.jsonl` and `results_<split>.md` to
    `output_dir` when given, and returns the results.
    """
    start_time = time.perf_counter()
    if include_meteor and shutil.which("java") is None:
        raise MeteorUnavailableError(
            "METEOR needs Java (the `java` command was not found). Install a Java runtime, or skip METEOR "
            "(`eir evaluate --no-meteor`)."
        )
    model = EIRForReportGeneration.from_pretrained(model_dir)
    processor = EIRProcessor.from_pretrained(model_dir)
    model.eval()
    if split not in split_records:
        raise ValueError(f"split: expected one of {sorted(split_records)}, got {split!r}.")
    records = split_records[split]
    train_records = split_records["train"]
    collator = StudyCollator(processor, with_labels=False)

    # 1. The model's reports.
    loader = DataLoader(StudyDataset(records, processor), batch_size=batch_size, collate_fn=collator)
    predictions, references = generate_reports(
        model, processor, loader, records, show_progress=True, **(generation_kwargs or {})
    )
    generation_time = time.perf_counter() - start_time
    if output_dir is not None:  # written before scoring, so the reports survive a scorer failure
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        with open(output_dir / f"predictions_{split}.jsonl", "w", encoding="utf-8") as handle:
            for record, prediction in zip(records, predictions):
                handle.write(json.dumps({"study_id": record["study_id"], "prediction": prediction,
                                         "reference": record["report"]}) + "\n")

    # 2. Image embeddings for the nearest-image baseline.
    train_loader = DataLoader(StudyDataset(train_records, processor), batch_size=batch_size, collate_fn=collator)
    train_embeds, train_indices = study_embeddings(model, train_loader)
    query_embeds, query_indices = study_embeddings(model, loader)
    nearest_inputs = None
    if len(train_indices) and len(query_indices) == len(records):
        nearest_inputs = {
            "query_embeddings": query_embeds.numpy(),
            "train_embeddings": train_embeds.numpy(),
            "query_groups": [patient_group_id(records[i]["patient_id"]) for i in query_indices.tolist()],
            "train_groups": [patient_group_id(train_records[i]["patient_id"]) for i in train_indices.tolist()],
            "nearest_train_reports": [train_records[i]["report"] for i in train_indices.tolist()],
        }
    elif len(query_indices) != len(records):
        logger.warning("Nearest-image baseline skipped: %d of %d studies have no readable image.",
                       len(records) - len(query_indices), len(records))

    # 3. Scores: the model and the baselines, on the same references.
    rows: dict[str, dict] = {
        "EIR": compute_report_metrics(predictions, references, protocol=protocol, include_meteor=include_meteor)
    }
    rows.update(
        evaluate_baselines(
            [record["report"] for record in train_records],
            references,
            protocol=protocol,
            seeds=random_seeds,
            include_meteor=include_meteor,
            **(nearest_inputs or {}),
        )
    )
    table = format_metrics_table(rows, protocol=protocol)
    results = {
        "split": split,
        "protocol": protocol,
        "num_studies": len(records),
        "num_train_studies": len(train_records),
        "systems": rows,
        "generation_time_s": round(generation_time, 1),
        "wall_time_s": round(time.perf_counter() - start_time, 1),
        "peak_memory_mib": peak_memory_mib(),
        "model_dir": str(model_dir),
    }
    if output_dir is not None:
        (output_dir / f"metrics_{split}.json").write_text(json.dumps(results, indent=2, default=_json_default))
        (output_dir / f"results_{split}.md").write_text(table + "\n")
    results["table"] = table
    return results


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
