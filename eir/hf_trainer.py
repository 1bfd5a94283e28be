"""Training and evaluating EIR with the Hugging Face `Seq2SeqTrainer`.

`EIRDataCollator` turns study rows into model inputs: study records from the loaders in
`eir.data` (plain dicts or a `datasets.Dataset`), rows of `eir.data.hf_datasets.to_image_dataset`
with decoded images, or items of `eir.studies.StudyDataset`. It loads the images itself, so the
trainer must keep the text and path columns: pass `remove_unused_columns=False` in the training
arguments. `build_compute_metrics` scores generated reports with `eir.metrics.compute_report_metrics`.

The retrieval bank of the knowledge graph stays as loaded during a `Trainer` run. `eir.training`
refreshes it every epoch, which the `Trainer` loop does not do.
"""

from __future__ import annotations

import copy
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import EvalPrediction, GenerationConfig, Seq2SeqTrainer, Seq2SeqTrainingArguments

from processing_eir import EIRProcessor, patient_group_id

from .metrics import compute_report_metrics

logger = logging.getLogger(__name__)

# Columns the collator reads; any other column of a row is ignored.
IMAGE_COLUMNS: tuple[str, ...] = ("pixel_values", "images", "image_paths")


def _row_views(row: Mapping[str, Any]) -> tuple[str, Any]:
    """Return which image column a row has and its views, in the order of `IMAGE_COLUMNS`."""
    for column in IMAGE_COLUMNS:
        if row.get(column) is not None:
            return column, row[column]
    raise ValueError(
        f"Study row {row.get('study_id', '<no study_id>')!r} has none of the image columns {list(IMAGE_COLUMNS)}; "
        f"got the columns {sorted(row)}. With `Trainer`, pass remove_unused_columns=False so the columns reach the collator."
    )


def _as_image_source(view: Any) -> Any:
    """Turn an undecoded `datasets.Image` value (`{"bytes", "path"}`) into something `load_radiograph` reads."""
    if isinstance(view, Mapping):
        if view.get("bytes"):
            return Image.open(io.BytesIO(view["bytes"]))
        if view.get("path"):
            return view["path"]
        raise ValueError(f"Image value {view!r} has neither bytes nor a path.")
    return view


class EIRDataCollator:
    """Batch study rows for `Trainer` and `Seq2SeqTrainer`.

    Each row needs `history`, `report` (only when `with_labels`) and one image column. An optional
    `patient_id` becomes `group_ids`, so retrieval skips the patient's own reports. The image
    column is searched in this order:

    - `pixel_values` (V, C, H, W) with `pixel_mask` (V,), as `eir.studies.StudyDataset` yields;
    - `images`, a list of views as PIL images or undecoded `datasets.Image` dicts;
    - `image_paths`, a list of image files, as the study records of `eir.data` hold.

    Views that cannot be read are masked out with a warning. A study without any readable view is
    dropped from the batch with a warning, because the model needs one real view per study. Rows
    with `images` and rows with `image_paths` may share a batch, but rows with `pixel_values`
    may not share one with either.

    Args:
        processor: the processor saved with the model.
        with_labels: tokenise `report` into `labels`. Set False for generation only.
    """

    def __init__(self, processor: EIRProcessor, with_labels: bool = True):
        self.processor = processor
        self.with_labels = with_labels

    def _pixels_from_tensors(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        views = [torch.as_tensor(np.asarray(row["pixel_values"]), dtype=torch.float32) for row in rows]
        masks = [torch.as_tensor(np.asarray(row["pixel_mask"]), dtype=torch.long) for row in rows]
        max_views = max(view.shape[0] for view in views)
        channels, height, width = views[0].shape[1:]
        pixel_values = torch.zeros(len(rows), max_views, channels, height, width)  # (B, V, C, H, W)
        pixel_mask = torch.zeros(len(rows), max_views, dtype=torch.long)  # (B, V)
        for index, (view, mask) in enumerate(zip(views, masks)):
            pixel_values[index, : view.shape[0]] = view
            pixel_mask[index, : mask.shape[0]] = mask
        return {"pixel_values": pixel_values, "pixel_mask": pixel_mask}

    def _pixels_from_images(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        studies = [[_as_image_source(view) for view in _row_views(row)[1]] for row in rows]
        encoded = self.processor.image_processor(studies, return_tensors="pt", errors="skip")
        return {"pixel_values": encoded["pixel_values"], "pixel_mask": encoded["pixel_mask"]}

    def __call__(self, rows: Sequence[Mapping[str, Any] | None]) -> dict[str, torch.Tensor]:
        # `StudyDataset` yields None for a study without readable images.
        num_unreadable_items = sum(row is None for row in rows)
        rows = [row for row in rows if row is not None]
        without_images = [str(row.get("study_id", "<no study_id>")) for row in rows if len(_row_views(row)[1]) == 0]
        if without_images:
            logger.warning("Dropped %d studies without any image from the batch: %s.", len(without_images), without_images)
            rows = [row for row in rows if len(_row_views(row)[1]) > 0]
        if not rows:
            # `Trainer` rejects an empty batch, so returning {} as `StudyCollator` does would stop it anyway.
            raise ValueError(
                f"EIRDataCollator received no study with images: {len(without_images)} studies with an empty image list "
                f"{without_images} and {num_unreadable_items} items that the dataset returned as None (unreadable images). "
                "Remove these studies from the dataset (`StudyDataset.drop_unreadable()` does it for a StudyDataset), "
                "or let build_seq2seq_trainer drop the studies whose image files are missing."
            )
        columns = {_row_views(row)[0] for row in rows}
        if columns == {"pixel_values"}:
            pixels = self._pixels_from_tensors(rows)
        elif "pixel_values" in columns:
            raise ValueError(
                f"EIRDataCollator received rows with the image columns {sorted(columns)}; rows with `pixel_values` "
                "cannot share a batch with rows that hold images or image paths."
            )
        else:
            pixels = self._pixels_from_images(rows)

        # 1. Drop studies without a readable view.
        readable = pixels["pixel_mask"].bool().any(dim=1)
        if not bool(readable.all()):
            dropped = [str(row.get("study_id", index)) for index, row in enumerate(rows) if not readable[index]]
            logger.warning("Dropped %d studies without a readable image from the batch: %s.", len(dropped), dropped)
            if not bool(readable.any()):
                # `Trainer` rejects an empty batch, so the error names what to remove.
                files = [str(path) for row in rows if _row_views(row)[0] == "image_paths" for path in row["image_paths"]]
                raise ValueError(
                    f"No study of the batch has a readable image: studies {dropped}"
                    + (f", image files {files}" if files else "")
                    + ". Remove these studies from the dataset (missing files are dropped by build_seq2seq_trainer, "
                    "but files that exist and cannot be decoded are not)."
                )
            rows = [row for index, row in enumerate(rows) if readable[index]]
            pixels = {key: value[readable] for key, value in pixels.items()}

        # 2. Text and patient groups.
        text = self.processor(
            history=[row.get("history") or "" for row in rows],
            reports=[row.get("report") or "" for row in rows] if self.with_labels else None,
        )
        batch = dict(pixels)
        batch.update(dict(text))
        if all(row.get("patient_id") is not None for row in rows):
            batch["group_ids"] = torch.tensor([patient_group_id(str(row["patient_id"])) for row in rows], dtype=torch.long)
        return batch


def build_compute_metrics(
    processor: EIRProcessor,
    protocol: str = "raw",
    include_meteor: bool = False,
) -> Callable[[EvalPrediction], dict[str, float]]:
    """Build a `compute_metrics` function for `Seq2SeqTrainer(predict_with_generate=True)`.

    The returned function decodes the generated ids and the labels (-100 read as padding) and
    returns the numeric results of `eir.metrics.compute_report_metrics`: BLEU-1..4, METEOR (NaN
    unless `include_meteor`), ROUGE-L, CIDEr, distinct_fraction and num_samples. The references
    are decoded from the labels, so they are cut at the processor's `max_report_length`.
    """
    pad_token_id = processor.tokenizer.pad_token_id

    def compute_metrics(evaluation: EvalPrediction) -> dict[str, float]:
        predictions = evaluation.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions = np.asarray(predictions)
        if predictions.ndim == 3:
            raise ValueError(
                "compute_metrics received logits of shape "
                f"{predictions.shape}; expected generated token ids. Set predict_with_generate=True."
            )
        predictions = np.where(predictions < 0, pad_token_id, predictions)
        labels = np.where(np.asarray(evaluation.label_ids) < 0, pad_token_id, evaluation.label_ids)
        generated = [text.strip() for text in processor.batch_decode(predictions.tolist(), skip_special_tokens=True)]
        references = [text.strip() for text in processor.batch_decode(labels.tolist(), skip_special_tokens=True)]
        scores = compute_report_metrics(generated, references, protocol=protocol, include_meteor=include_meteor)
        return {key: float(value) for key, value in scores.items() if isinstance(value, (int, float))}

    return compute_metrics


def drop_studies_without_image_files(dataset: Any, name: str = "dataset") -> Any:
    """Drop the study rows whose `image_paths` name no existing file, with a warning listing them.

    Works on a list of study dicts and on a `datasets.Dataset` with an `image_paths` column and
    no `images` or `pixel_values` column. Other datasets are returned unchanged; a `StudyDataset`
    drops its unreadable studies with `StudyDataset.drop_unreadable()`. Only the existence of the
    files is checked: a file that exists but cannot be decoded still reaches the collator, which
    drops the study from its batch.
    """
    if isinstance(dataset, datasets.Dataset):
        columns = set(dataset.column_names)
        if "image_paths" not in columns or columns & {"images", "pixel_values"}:
            return dataset
        study_ids = list(dataset["study_id"]) if "study_id" in columns else list(range(len(dataset)))
        image_paths = list(dataset["image_paths"])
    elif isinstance(dataset, list) and dataset and all(isinstance(row, Mapping) for row in dataset):
        if any(row.get("images") is not None or row.get("pixel_values") is not None or row.get("image_paths") is None for row in dataset):
            return dataset
        study_ids = [row.get("study_id", index) for index, row in enumerate(dataset)]
        image_paths = [row["image_paths"] for row in dataset]
    else:
        return dataset

    kept: list[int] = []
    dropped: list[str] = []
    for index, (study_id, paths) in enumerate(zip(study_ids, image_paths)):
        if any(Path(path).is_file() for path in paths):
            kept.append(index)
        else:
            dropped.append(str(study_id))
    if not dropped:
        return dataset
    logger.warning("Dropped %d of %d studies of the %s whose image files are all missing: %s.", len(dropped), len(study_ids), name, dropped)
    if isinstance(dataset, datasets.Dataset):
        return dataset.select(kept)
    return [dataset[index] for index in kept]


class EIRSeq2SeqTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` that generates with its own copy of the model's generation config.

    `Seq2SeqTrainer.prediction_step` fills defaults into `model.generation_config`, and
    `build_seq2seq_trainer` changes the length settings. Both happen on
    `evaluation_generation_config` here, which is swapped in for each prediction step only, so
    the generation config saved with the model stays as it was loaded.
    """

    evaluation_generation_config: GenerationConfig | None = None

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        if self.evaluation_generation_config is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        model_generation_config = self.model.generation_config
        self.model.generation_config = self.evaluation_generation_config
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        finally:
            self.model.generation_config = model_generation_config


def build_seq2seq_trainer(
    model: torch.nn.Module,
    processor: EIRProcessor,
    args: Seq2SeqTrainingArguments,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    protocol: str = "raw",
    include_meteor: bool = False,
    drop_missing_images: bool = True,
    **trainer_kwargs: Any,
) -> EIRSeq2SeqTrainer:
    """Build an `EIRSeq2SeqTrainer` with `EIRDataCollator` and, when `args.predict_with_generate`, report metrics.

    Datasets are study records (a list of dicts or a `datasets.Dataset`) or a `StudyDataset`.
    `trainer_kwargs` go to `Seq2SeqTrainer` and override the collator and metrics built here.

    `Trainer` stops on a batch in which no study has a readable image. With `drop_missing_images`,
    study records whose image files are all missing are therefore dropped up front (see
    `drop_studies_without_image_files`). Files that exist but cannot be decoded are found only
    when a batch is built.

    A saved EIR model sets `max_new_tokens` in its generation config, and `generate()` lets it
    win over `max_length`. So when `args.generation_max_length` is set, evaluation generates with
    `max_new_tokens=None` and `max_length=args.generation_max_length` (the start token counts in
    `max_length`). This happens on a copy: `model.generation_config`, and so the
    `generation_config.json` that `save_model` writes, stays unchanged unless
    `args.generation_config` replaces it.
    """
    if args.remove_unused_columns:
        raise ValueError(
            "Seq2SeqTrainingArguments.remove_unused_columns is True, which removes the image, history and report "
            "columns that EIRDataCollator reads. Pass remove_unused_columns=False."
        )
    if drop_missing_images:
        train_dataset = drop_studies_without_image_files(train_dataset, "training dataset") if train_dataset is not None else None
        eval_dataset = drop_studies_without_image_files(eval_dataset, "evaluation dataset") if eval_dataset is not None else None
    kwargs: dict[str, Any] = {
        "data_collator": EIRDataCollator(processor),
        "processing_class": processor,
    }
    if args.predict_with_generate:
        kwargs["compute_metrics"] = build_compute_metrics(processor, protocol=protocol, include_meteor=include_meteor)
    kwargs.update(trainer_kwargs)
    trainer = EIRSeq2SeqTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)

    # `Seq2SeqTrainer.__init__` has already applied `args.generation_config`, if given.
    generation_config = getattr(trainer.model, "generation_config", None)
    if generation_config is not None:
        generation_config = copy.deepcopy(generation_config)
        if args.generation_max_length is not None and generation_config.max_new_tokens is not None:
            logger.info(
                "Evaluating with generation_max_length=%d of the training arguments instead of the model's max_new_tokens=%d.",
                args.generation_max_length,
                generation_config.max_new_tokens,
            )
            generation_config.max_new_tokens = None
            generation_config.max_length = args.generation_max_length
        trainer.evaluation_generation_config = generation_config
    return trainer


__all__ = ["EIRDataCollator", "EIRSeq2SeqTrainer", "build_compute_metrics", "build_seq2seq_trainer", "drop_studies_without_image_files"]
