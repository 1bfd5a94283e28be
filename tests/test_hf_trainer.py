"""Seq2SeqTrainer with EIRDataCollator and report metrics, on real COVID-19 collection studies."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction, Seq2SeqTrainingArguments

from eir.data import load_study_dataset
from eir.hf_trainer import EIRDataCollator, build_compute_metrics, build_seq2seq_trainer
from eir.studies import StudyDataset
from modeling_eir import EIRForReportGeneration
from processing_eir import EIRProcessor, patient_group_id

METRIC_KEYS = ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "distinct_fraction", "num_samples")


@pytest.fixture(scope="module")
def covid_dataset(data_root):
    return load_study_dataset("covid_chestxray", data_dir=data_root)


@pytest.fixture(scope="module")
def processor(trained_model_dir) -> EIRProcessor:
    return EIRProcessor.from_pretrained(trained_model_dir)


def _arguments(output_dir, **overrides) -> Seq2SeqTrainingArguments:
    settings = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        predict_with_generate=True,
        generation_max_length=12,
        generation_num_beams=1,
        report_to=[],
        remove_unused_columns=False,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return Seq2SeqTrainingArguments(**settings)


def test_collator_batches_study_records(covid_dataset, processor):
    rows = covid_dataset["train"].select(range(3)).to_list()
    batch = EIRDataCollator(processor)(rows)

    assert batch["pixel_values"].shape[:2] == batch["pixel_mask"].shape
    assert batch["pixel_values"].shape[0] == 3
    assert batch["pixel_mask"].sum(dim=1).min() >= 1
    assert batch["labels"].shape[0] == 3
    assert batch["history_input_ids"].shape == batch["history_attention_mask"].shape
    assert batch["group_ids"].tolist() == [patient_group_id(row["patient_id"]) for row in rows]


def test_collator_drops_study_without_images(covid_dataset, processor, tmp_path):
    rows = covid_dataset["train"].select(range(2)).to_list()
    rows[1] = {**rows[1], "image_paths": [str(tmp_path / "missing.png")]}
    batch = EIRDataCollator(processor)(rows)

    assert batch["pixel_values"].shape[0] == 1
    assert batch["labels"].shape[0] == 1
    assert batch["group_ids"].tolist() == [patient_group_id(rows[0]["patient_id"])]


def test_collator_drops_study_with_empty_image_list(covid_dataset, processor):
    rows = covid_dataset["train"].select(range(2)).to_list()
    rows[0] = {**rows[0], "image_paths": []}
    batch = EIRDataCollator(processor)(rows)
    assert batch["group_ids"].tolist() == [patient_group_id(rows[1]["patient_id"])]
    with pytest.raises(ValueError, match="no study with images"):
        EIRDataCollator(processor)(rows[:1])


def test_collator_matches_study_dataset_items(covid_dataset, processor):
    records = covid_dataset["train"].select(range(2)).to_list()
    from_records = EIRDataCollator(processor)(records)
    from_tensors = EIRDataCollator(processor)([StudyDataset(records, processor)[index] for index in range(2)])

    torch.testing.assert_close(from_records["pixel_values"], from_tensors["pixel_values"])
    assert torch.equal(from_records["labels"], from_tensors["labels"])


def test_compute_metrics_on_exact_predictions(processor):
    reports = ["Bilateral patchy opacities in the lower zones.", "No pleural effusion. Heart size is normal."]
    labels = processor(reports=reports)["labels"].numpy()
    # Generated ids start with the decoder start token and are padded with the pad id.
    predictions = np.full((2, labels.shape[1] + 3), processor.tokenizer.pad_token_id)
    predictions[:, 0] = processor.tokenizer.bos_token_id
    predictions[:, 1 : labels.shape[1] + 1] = np.where(labels < 0, processor.tokenizer.pad_token_id, labels)

    metrics = build_compute_metrics(processor)(EvalPrediction(predictions=predictions, label_ids=labels))

    assert metrics["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["num_samples"] == 2
    assert math.isnan(metrics["METEOR"])


def test_compute_metrics_rejects_logits(processor):
    compute_metrics = build_compute_metrics(processor)
    with pytest.raises(ValueError, match="predict_with_generate"):
        compute_metrics(EvalPrediction(predictions=np.zeros((2, 3, 5)), label_ids=np.zeros((2, 3), dtype=np.int64)))


def test_trainer_requires_kept_columns(trained_model_dir, processor, tmp_path):
    model = EIRForReportGeneration.from_pretrained(trained_model_dir)
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        build_seq2seq_trainer(model, processor, _arguments(tmp_path, remove_unused_columns=True))


def test_trainer_trains_and_evaluates_with_generate(trained_model_dir, processor, covid_dataset, tmp_path):
    model = EIRForReportGeneration.from_pretrained(trained_model_dir)
    studies = covid_dataset["train"].select(range(4))
    args = _arguments(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=4)
    trainer = build_seq2seq_trainer(model, processor, args, train_dataset=studies, eval_dataset=studies)

    trainer.train()

    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evaluations) == 1
    for key in METRIC_KEYS:
        assert f"eval_{key}" in evaluations[0], sorted(evaluations[0])
    assert evaluations[0]["eval_num_samples"] == 4
    assert math.isfinite(evaluations[0]["eval_loss"])
    train_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(train_losses) == 4
    assert all(math.isfinite(loss) for loss in train_losses)
    # Every step sees the same four studies (one batch), so four steps must fit them better.
    assert train_losses[-1] < train_losses[0]
    # The model's loss is a batch mean, so Trainer must divide it for gradient accumulation itself.
    assert trainer.model_accepts_loss_kwargs is False


def test_trainer_epoch_evaluation_on_record_list(trained_model_dir, processor, covid_dataset, tmp_path):
    model = EIRForReportGeneration.from_pretrained(trained_model_dir)
    records = covid_dataset["validation"].select(range(4)).to_list()
    args = _arguments(tmp_path, num_train_epochs=1, eval_strategy="epoch", gradient_accumulation_steps=2, per_device_train_batch_size=2)
    trainer = build_seq2seq_trainer(model, processor, args, train_dataset=records, eval_dataset=records)

    trainer.train()

    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evaluations) == 1
    assert math.isfinite(evaluations[0]["eval_loss"])
    assert "eval_BLEU-4" in evaluations[0]
    assert trainer.state.global_step == 1


def test_collator_error_names_unreadable_studies(covid_dataset, processor, tmp_path):
    rows = covid_dataset["train"].select(range(2)).to_list()
    missing = [str(tmp_path / "missing-a.png"), str(tmp_path / "missing-b.png")]
    rows = [{**row, "image_paths": [path]} for row, path in zip(rows, missing)]
    with pytest.raises(ValueError, match="Remove these studies from the dataset") as error:
        EIRDataCollator(processor)(rows)
    for row, path in zip(rows, missing):
        assert row["study_id"] in str(error.value)
        assert path in str(error.value)


def test_collator_error_counts_none_items(processor):
    with pytest.raises(ValueError, match="2 items that the dataset returned as None"):
        EIRDataCollator(processor)([None, None])


def test_trainer_drops_studies_without_image_files(trained_model_dir, processor, covid_dataset, tmp_path):
    model = EIRForReportGeneration.from_pretrained(trained_model_dir)
    studies = covid_dataset["train"].select(range(3))
    missing_id = studies[1]["study_id"]
    broken = studies.map(lambda row: {"image_paths": [str(tmp_path / "missing.png")]} if row["study_id"] == missing_id else {})
    records = broken.to_list()

    trainer = build_seq2seq_trainer(model, processor, _arguments(tmp_path), train_dataset=broken, eval_dataset=records)

    assert missing_id not in trainer.train_dataset["study_id"]
    assert len(trainer.train_dataset) == 2
    assert [record["study_id"] for record in trainer.eval_dataset] == [studies[0]["study_id"], studies[2]["study_id"]]
    kept = build_seq2seq_trainer(model, processor, _arguments(tmp_path), train_dataset=records, drop_missing_images=False)
    assert len(kept.train_dataset) == 3


def test_trainer_leaves_model_generation_config(trained_model_dir, processor, covid_dataset, tmp_path):
    model = EIRForReportGeneration.from_pretrained(trained_model_dir)
    saved = model.generation_config.to_dict()
    assert saved["max_new_tokens"] is not None
    studies = covid_dataset["validation"].select(range(2))
    trainer = build_seq2seq_trainer(model, processor, _arguments(tmp_path, generation_max_length=5), eval_dataset=studies)

    output = trainer.predict(studies)
    trainer.save_model(str(tmp_path / "saved"))

    # Evaluation generates with max_length=5, start token included.
    assert output.predictions.shape[1] == 5
    assert model.generation_config.to_dict() == saved
    written = json.loads((tmp_path / "saved" / "generation_config.json").read_text())
    assert written["max_new_tokens"] == saved["max_new_tokens"]
    assert "max_length" not in written or written["max_length"] == saved.get("max_length")
