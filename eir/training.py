"""Training of EIR with Accelerate: one script for one CPU, several CPU processes or GPUs.

Steps: load the recipe and the data set, train the tokenizer on the training reports and
histories, and build the model. Then, per epoch: train, refresh the retrieval bank from the
training split, score the validation split, keep the best model by the recipe's selection
metric, and save a resumable checkpoint. The test split is never read here.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import GenerationConfig, get_cosine_schedule_with_warmup

from configuration_eir import EIRConfig
from modeling_eir import EIRForReportGeneration
from processing_eir import EIRImageProcessor, EIRProcessor, patient_group_id, train_eir_tokenizer

from .backbones import freeze_backbone, load_backbone_weights
from .data import load_study_dataset
from .data.splits import write_split_file
from .evaluation import generate_reports, peak_memory_mib
from .feature_cache import BackboneFeatureCache
from .hub import save_with_remote_code
from .knowledge import encode_findings
from .metrics import compute_report_metrics
from .recipes import Recipe
from .studies import StudyCollator, StudyDataset, model_inputs

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


def load_split_records(dataset: dict[str, Any], data_dir: str | None) -> dict[str, list[dict[str, Any]]]:
    """Load a data set (`{"name": ..., **loader options}`) as lists of records per split."""
    dataset_kwargs = {key: value for key, value in dataset.items() if key != "name"}
    loaded = load_study_dataset(dataset["name"], data_dir=data_dir, **dataset_kwargs)
    return {split: loaded[split].to_list() for split in loaded}


def build_processor(recipe: Recipe, train_records: list[dict[str, Any]], output_dir: Path) -> EIRProcessor:
    """Train the SentencePiece tokenizer on training-split text and pair it with the image processor."""
    texts = [record["report"] for record in train_records] + [record["history"] for record in train_records]
    texts = [text for text in texts if text.strip()]
    tokenizer = train_eir_tokenizer(texts, output_dir / "tokenizer", seed=0, **recipe.tokenizer)
    num_channels = int(recipe.model.get("vision_config", {}).get("num_channels", 3))
    max_views = int(recipe.model.get("max_views", 2))
    image_processor = EIRImageProcessor(num_channels=num_channels, max_views=max_views, **recipe.image_processor)
    return EIRProcessor(image_processor=image_processor, tokenizer=tokenizer, **recipe.processor)


def build_config(recipe: Recipe, processor: EIRProcessor) -> EIRConfig:
    tokenizer = processor.tokenizer
    model_kwargs = dict(recipe.model)
    model_kwargs.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        unk_token_id=tokenizer.unk_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
        image_size=processor.image_processor.size,
    )
    return EIRConfig(**model_kwargs)


def build_generation_config(recipe: Recipe, config: EIRConfig) -> GenerationConfig:
    settings = {"max_new_tokens": 100, "num_beams": 1}
    settings.update(recipe.generation)
    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        **settings,
    )


@torch.no_grad()
def refresh_retrieval_bank(
    model: EIRForReportGeneration,
    bank_loader: DataLoader,
    train_records: list[dict[str, Any]],
    entity_ids: torch.Tensor,
    entity_nodes: torch.Tensor,
    accelerator: Accelerator,
) -> int:
    """Recompute the image embeddings of the training studies and load them as the retrieval bank.

    Returns the number of bank entries. Every process computes its shard; the gathered bank is
    the same on all processes.
    """
    unwrapped = accelerator.unwrap_model(model)
    if unwrapped.encoder.knowledge_graph is None:
        return 0
    was_training = unwrapped.training
    unwrapped.eval()
    embeddings, indices = [], []
    for batch in bank_loader:
        if not batch:
            continue
        study_embeds = unwrapped.encode_images(
            batch.get("pixel_values"), batch["pixel_mask"], backbone_features=batch.get("backbone_features")
        )
        embeddings.append(accelerator.gather_for_metrics(study_embeds))
        indices.append(accelerator.gather_for_metrics(batch["index"]))
    unwrapped.train(was_training)
    if not embeddings:
        return 0
    all_embeddings = torch.cat(embeddings).float().cpu()
    all_indices = torch.cat(indices).cpu()
    # An index can appear twice when processes padded their last batch; keep the first.
    keep = torch.ones_like(all_indices, dtype=torch.bool)
    seen: set[int] = set()
    for position, index in enumerate(all_indices.tolist()):
        keep[position] = index not in seen
        seen.add(index)
    all_embeddings, all_indices = all_embeddings[keep], all_indices[keep]
    group_ids = _group_ids(train_records, all_indices)
    unwrapped.set_retrieval_bank(all_embeddings, group_ids, entity_ids[all_indices], entity_nodes[all_indices])
    return int(all_indices.numel())


def _group_ids(records: list[dict[str, Any]], indices: torch.Tensor) -> torch.Tensor:
    return torch.tensor([patient_group_id(records[int(i)]["patient_id"]) for i in indices], dtype=torch.long)


def _prune_checkpoints(checkpoint_root: Path, keep: int) -> None:
    checkpoints = sorted(checkpoint_root.glob("epoch-*"), key=lambda path: int(path.name.split("-")[1]))
    for old in checkpoints[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """Return the newest complete checkpoint (one whose trainer state was written), or None."""
    checkpoints = sorted((output_dir / "checkpoints").glob("epoch-*"), key=lambda path: int(path.name.split("-")[1]))
    complete = [path for path in checkpoints if (path / STATE_FILE).is_file()]
    return complete[-1] if complete else None


SELECTION_METRICS = ("loss", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr")


def check_settings(settings) -> None:
    """Reject settings that would only fail after an epoch of training."""
    if settings.selection_metric not in SELECTION_METRICS:
        raise ValueError(
            f"training.selection_metric: expected one of {SELECTION_METRICS} (the scores computed on the validation "
            f"split; METEOR is left out there for speed), got {settings.selection_metric!r}."
        )
    for name in ("epochs", "batch_size", "eval_batch_size", "eval_every_epochs"):
        value = getattr(settings, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"training.{name}: expected a positive integer, got {value!r}.")
    if settings.bank_refresh_epochs < 0:
        raise ValueError(f"training.bank_refresh_epochs: expected 0 or more, got {settings.bank_refresh_epochs!r}.")


def prepare_output_dir(output_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse to mix a new run with the checkpoints of an earlier one in the same folder."""
    checkpoints = output_dir / "checkpoints"
    if resuming or not checkpoints.is_dir() or not any(checkpoints.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"{output_dir} already contains checkpoints of an earlier run. Pass --resume-from latest to continue it, "
            "--overwrite to replace it, or another --output-dir."
        )
    shutil.rmtree(checkpoints)
    shutil.rmtree(output_dir / "model", ignore_errors=True)


def _selection_score(metrics: dict[str, float], name: str) -> list[float]:
    """Rank a validation result: the selection metric first, then the lower validation loss on ties.

    Weak early models often tie (BLEU-4 is 0 for several epochs), and without the loss the
    first of the tied epochs would always be kept.
    """
    if name == "loss":
        return [-metrics["loss"]]
    if name not in metrics:
        raise ValueError(f"selection_metric: expected one of {sorted(metrics)}, got {name!r}.")
    return [metrics[name], -metrics["loss"]]


def _print_summary(accelerator: Accelerator, lines: list[tuple[str, Any]]) -> None:
    if not accelerator.is_main_process:
        return
    width = max(len(key) for key, _ in lines)
    print("=" * 72)
    for key, value in lines:
        print(f"{key:<{width}} : {value}")
    print("=" * 72, flush=True)


def train(
    recipe: Recipe,
    output_dir: str | Path,
    data_dir: str | None = None,
    resume_from: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train EIR with the recipe's settings and save the best model to `output_dir/model`.

    Args:
        recipe: the training recipe (see `eir.recipes`).
        output_dir: folder for checkpoints, the split file, logs and the final model.
        data_dir: data root (default `eir.paths.default_data_dir()`).
        resume_from: a checkpoint folder, or "latest" for the newest one in `output_dir`.
        overwrite: delete the checkpoints and model of an earlier run in `output_dir` first;
            without it, such a folder is rejected unless resuming.

    Returns a summary with the best validation metrics, the epoch they came from and timings.
    """
    settings = recipe.training
    check_settings(settings)
    output_dir = Path(output_dir)
    start_time = time.perf_counter()
    # Every process sets the same retrieval bank itself, so DDP need not broadcast buffers (for
    # MIMIC-CXR the bank is hundreds of MB). Batch-norm running statistics then stay per process,
    # and the saved model carries those of the main process.
    accelerator = Accelerator(
        mixed_precision=settings.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)],
    )
    set_seed(settings.seed)

    # 1. Data: the recipe's splits; the test split is never used here.
    splits = load_split_records(recipe.dataset, data_dir)
    train_records, validation_records = splits["train"], splits.get("validation", [])
    if settings.limit_train_studies:
        train_records = train_records[: settings.limit_train_studies]
    if settings.limit_eval_studies:
        validation_records = validation_records[: settings.limit_eval_studies]
    if accelerator.is_main_process:
        prepare_output_dir(output_dir, resuming=bool(resume_from), overwrite=overwrite)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_split_file([record for records in splits.values() for record in records], output_dir / "split.csv")
        (output_dir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2, default=str))
    accelerator.wait_for_everyone()

    # 2. Tokenizer, processor and model.
    resume_path = None
    if resume_from:
        resume_path = latest_checkpoint(output_dir) if resume_from == "latest" else Path(resume_from)
        if resume_path is None or not resume_path.is_dir():
            raise FileNotFoundError(f"resume_from: no checkpoint found at {resume_from!r} (looked in {output_dir / 'checkpoints'}).")
    if resume_path is not None:
        processor = EIRProcessor.from_pretrained(resume_path / "processor")
    else:
        if accelerator.is_main_process:
            build_processor(recipe, train_records, output_dir).save_pretrained(output_dir / "processor")
        accelerator.wait_for_everyone()
        processor = EIRProcessor.from_pretrained(output_dir / "processor")
    config = build_config(recipe, processor)
    model = EIRForReportGeneration(config)
    model.generation_config = build_generation_config(recipe, config)
    backbone = model.encoder.image_encoder.backbone
    if config.vision_weights and resume_path is None:  # a resumed run restores the backbone from its checkpoint
        weights_report = load_backbone_weights(backbone, config.vision_weights)
        if accelerator.is_main_process:
            (output_dir / "vision_weights_report.json").write_text(json.dumps(weights_report.to_dict(), indent=2))
    if settings.cache_backbone_features and not settings.freeze_backbone:
        raise ValueError(
            "training.cache_backbone_features: expected freeze_backbone: true, got false. Cached features are only "
            "valid for a backbone that does not change; set freeze_backbone: true or turn the cache off."
        )
    if settings.freeze_backbone:
        freeze_backbone(backbone)

    # Studies without a readable image are dropped before batching, so that every process gets
    # full batches (collective operations under DDP need equal batch sizes on all processes).
    train_dataset = StudyDataset(train_records, processor, cache_images=settings.cache_images)
    validation_dataset = StudyDataset(validation_records, processor, cache_images=settings.cache_images)
    for dataset in (train_dataset, validation_dataset):
        dataset.drop_unreadable(num_workers=0 if settings.cache_images else settings.num_workers)
    train_records, validation_records = train_dataset.records, validation_dataset.records
    if not train_records:
        raise ValueError("No training study has a readable image; check the image paths of the data set.")

    entity_ids, entity_nodes = encode_findings(
        [record["report"] for record in train_records],
        processor.tokenizer,
        config.knowledge_graph_nodes,
        config.max_entities_per_report,
        config.max_entity_length,
        config.pad_token_id,
    )

    collator = StudyCollator(processor)
    train_loader = DataLoader(
        train_dataset, batch_size=settings.batch_size, shuffle=True, collate_fn=collator,
        num_workers=settings.num_workers, drop_last=False,
    )
    bank_loader = DataLoader(
        train_dataset, batch_size=settings.eval_batch_size, shuffle=False, collate_fn=collator,
        num_workers=settings.num_workers,
    )
    validation_loader = DataLoader(
        validation_dataset, batch_size=settings.eval_batch_size, shuffle=False, collate_fn=collator,
        num_workers=settings.num_workers,
    )

    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train_dataset) / (settings.batch_size * accelerator.num_processes))
    total_steps = max(1, steps_per_epoch * settings.epochs)
    # The prepared scheduler steps once per process for each optimizer step, so its length counts
    # optimizer steps times processes.
    scheduler = get_cosine_schedule_with_warmup(
        optimizer,
        int(settings.warmup_ratio * total_steps) * accelerator.num_processes,
        total_steps * accelerator.num_processes,
    )
    model, optimizer, train_loader, bank_loader, validation_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, bank_loader, validation_loader, scheduler
    )

    # 3. Resume: restore weights, optimizer, scheduler, RNG and the bank size before loading.
    state = {"epoch": 0, "global_step": 0, "best_score": None, "best_epoch": None, "history": []}
    if resume_path is not None:
        state = json.loads((resume_path / STATE_FILE).read_text())
        if isinstance(state.get("best_score"), (int, float)):  # written before ties were broken by the loss
            state["best_score"] = [state["best_score"]]
        bank_size = state.get("retrieval_bank_size", 0)
        unwrapped = accelerator.unwrap_model(model)
        if bank_size and unwrapped.encoder.knowledge_graph is not None:
            hidden = config.hidden_size
            unwrapped.set_retrieval_bank(
                torch.zeros(bank_size, hidden), torch.zeros(bank_size, dtype=torch.long),
                torch.zeros(bank_size, config.max_entities_per_report, config.max_entity_length, dtype=torch.int32),
                torch.full((bank_size, config.max_entities_per_report), -1, dtype=torch.long),
            )
        accelerator.load_state(str(resume_path))
        logger.info("Resumed from %s after epoch %d.", resume_path, state["epoch"])

    # The cache is keyed by the backbone weights, so it is filled after a resume restored them.
    # Validation keeps reading pixels, because generation takes pixel_values.
    if settings.cache_backbone_features:
        feature_cache = BackboneFeatureCache(
            accelerator.unwrap_model(model).encoder.image_encoder.backbone, processor.image_processor,
            output_dir / "feature_cache", batch_size=settings.eval_batch_size,
        )
        if accelerator.is_main_process:
            paths = [path for record in train_records for path in record["image_paths"]]
            feature_cache.precompute(paths, show_progress=True)
        accelerator.wait_for_everyone()
        train_dataset.feature_cache = feature_cache

    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    _print_summary(
        accelerator,
        [
            ("recipe", recipe.name),
            ("data set", f"{recipe.dataset['name']} (data root: {data_dir or 'default'})"),
            ("studies train / validation", f"{len(train_dataset)} / {len(validation_dataset)}"),
            ("model", f"EIR, {num_parameters / 1e6:.2f} M parameters, fusion={config.fusion}, "
                      f"views={config.view_aggregation}, knowledge graph={config.use_knowledge_graph}"),
            ("vision backbone", f"{config.vision_config.model_type} {getattr(config.vision_config, 'hidden_sizes', '')}"),
            ("vision weights", f"{config.vision_weights or 'random initialisation'}; "
                               f"{'frozen' if settings.freeze_backbone else 'trained'}"
                               f"{', cached features' if settings.cache_backbone_features else ''}"),
            ("vocabulary", f"{config.vocab_size} SentencePiece pieces"),
            ("processes / device", f"{accelerator.num_processes} / {accelerator.device}"),
            ("mixed precision", settings.mixed_precision),
            ("epochs / batch size / steps", f"{settings.epochs} / {settings.batch_size} per process / {total_steps}"),
            ("learning rate / weight decay", f"{settings.learning_rate} / {settings.weight_decay}"),
            ("selection", f"{settings.selection_metric} on the validation split"),
            ("output", str(output_dir)),
            ("resumed from", str(resume_path) if resume_path else "-"),
        ],
    )

    # 4. Epochs.
    if state["epoch"] == 0:
        refresh_retrieval_bank(model, bank_loader, train_records, entity_ids, entity_nodes, accelerator)
    for epoch in range(state["epoch"] + 1, settings.epochs + 1):
        model.train()
        if settings.freeze_backbone:
            freeze_backbone(accelerator.unwrap_model(model).encoder.image_encoder.backbone)
        epoch_loss, epoch_batches = 0.0, 0
        progress = tqdm(train_loader, desc=f"epoch {epoch}/{settings.epochs}", disable=not accelerator.is_main_process)
        for batch in progress:
            if not batch:
                continue
            with accelerator.autocast():
                loss = model(**model_inputs(batch)).loss
            accelerator.backward(loss)
            if settings.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            state["global_step"] += 1
            epoch_loss += loss.item()
            epoch_batches += 1
            progress.set_postfix(loss=f"{loss.item():.3f}")
        if epoch_batches == 0:
            raise RuntimeError(f"Epoch {epoch} had no training batch; check that the training split has readable studies.")
        train_loss = epoch_loss / epoch_batches

        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "learning_rate": scheduler.get_last_lr()[0],
            "elapsed_s": round(time.perf_counter() - start_time, 1),
        }
        bank_due = settings.bank_refresh_epochs and epoch % settings.bank_refresh_epochs == 0
        evaluate_now = validation_records and (epoch % settings.eval_every_epochs == 0 or epoch == settings.epochs)
        if bank_due or evaluate_now:
            record["bank_size"] = refresh_retrieval_bank(model, bank_loader, train_records, entity_ids, entity_nodes, accelerator)

        if evaluate_now:
            metrics = validate(model, validation_loader, validation_records, processor, accelerator, settings)
            record["validation"] = metrics
            score = _selection_score(metrics, settings.selection_metric)
            if state["best_score"] is None or score > state["best_score"]:
                state["best_score"], state["best_epoch"] = score, epoch
                save_model_folder(accelerator.unwrap_model(model), processor, output_dir / "model", accelerator, recipe.dataset)
            if accelerator.is_main_process:
                logger.info("epoch %d: train loss %.4f, validation %s", epoch, train_loss, _short(metrics))
                print(f"epoch {epoch}: train loss {train_loss:.4f} | validation {_short(metrics)}", flush=True)
        elif accelerator.is_main_process:
            print(f"epoch {epoch}: train loss {train_loss:.4f}", flush=True)

        state["epoch"] = epoch
        state["history"].append(record)
        state["retrieval_bank_size"] = accelerator.unwrap_model(model).config.retrieval_bank_size
        checkpoint = output_dir / "checkpoints" / f"epoch-{epoch}"
        accelerator.save_state(str(checkpoint))
        if accelerator.is_main_process:
            processor.save_pretrained(checkpoint / "processor")
            (checkpoint / STATE_FILE).write_text(json.dumps(state, indent=2))
            _prune_checkpoints(output_dir / "checkpoints", settings.keep_checkpoints)
        accelerator.wait_for_everyone()

    if state["best_epoch"] is None:  # no validation split: keep the last epoch, with a bank of its weights
        refresh_retrieval_bank(model, bank_loader, train_records, entity_ids, entity_nodes, accelerator)
        save_model_folder(accelerator.unwrap_model(model), processor, output_dir / "model", accelerator, recipe.dataset)
        state["best_epoch"] = state["epoch"]

    summary = {
        "best_epoch": state["best_epoch"],
        "selection_metric": settings.selection_metric,
        "best_score": state["best_score"],
        "history": state["history"],
        "train_studies": len(train_dataset),
        "validation_studies": len(validation_dataset),
        "wall_time_s": round(time.perf_counter() - start_time, 1),
        "num_processes": accelerator.num_processes,
        "peak_memory_mib": peak_memory_mib(),
        "settings": asdict(settings),
    }
    if accelerator.is_main_process:
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
        print(
            f"Best model (epoch {state['best_epoch']}, {settings.selection_metric}) saved to {output_dir / 'model'}; "
            f"training took {summary['wall_time_s']} s, peak memory {summary['peak_memory_mib']} MiB"
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _short(metrics: dict[str, float]) -> str:
    keys = ("loss", "BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "distinct_fraction")
    return ", ".join(f"{key} {metrics[key]:.3f}" for key in keys if key in metrics)


@torch.no_grad()
def validate(
    model,
    loader: DataLoader,
    records: list[dict[str, Any]],
    processor: EIRProcessor,
    accelerator: Accelerator,
    settings,
) -> dict[str, float]:
    """Teacher-forced loss and generated-report metrics (without METEOR, for speed) on the validation split."""
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    losses = []
    for batch in loader:
        if not batch:
            continue
        with accelerator.autocast():
            loss = unwrapped(**model_inputs(batch)).loss
        losses.append(accelerator.gather_for_metrics(loss.detach()[None]))
    predictions, references = generate_reports(
        unwrapped, processor, loader, records, accelerator,
        max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams,
    )
    unwrapped.train()
    metrics = compute_report_metrics(predictions, references, protocol="raw", include_meteor=False)
    # METEOR is skipped here (NaN), and NaN is not valid JSON in the saved training state.
    metrics = {key: value for key, value in metrics.items() if isinstance(value, (int, float)) and value == value}
    metrics["loss"] = float(torch.cat(losses).mean()) if losses else float("nan")
    return metrics


TRAINING_DATA_FILE = "training_data.json"


def save_model_folder(
    model: EIRForReportGeneration,
    processor: EIRProcessor,
    folder: Path,
    accelerator: Accelerator,
    dataset: dict[str, Any],
) -> None:
    """Save weights (with the retrieval bank), config, generation config and processor to one folder.

    The folder also carries the model-side code and `auto_map` entries (`eir.hub.save_with_remote_code`),
    so it loads with `trust_remote_code=True` where the `eir` package is not installed.
    `training_data.json` records the data set and its loader options, so `eir evaluate` reloads
    the same splits.
    """
    if accelerator.is_main_process:
        save_with_remote_code(model, processor, folder)
        (folder / TRAINING_DATA_FILE).write_text(json.dumps({"dataset": dataset}, indent=2))
    accelerator.wait_for_everyone()


def load_training_data_records(model_dir: str | Path, data_dir: str | None) -> dict[str, list[dict[str, Any]]]:
    """Load the splits of the data set a saved model was trained on (from its `training_data.json`)."""
    path = Path(model_dir) / TRAINING_DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: `eir evaluate` needs the data set description that `eir train` writes into the model folder."
        )
    return load_split_records(json.loads(path.read_text())["dataset"], data_dir)
