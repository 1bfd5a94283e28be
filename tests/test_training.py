"""Training on real chest X-rays: smoke run, checkpoints, resume, broken images, two processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eir.training
from eir.cli import main
from modeling_eir import EIRForReportGeneration
from processing_eir import EIRProcessor

SMOKE_OPTIONS = ["--limit-train-studies", "16", "--limit-eval-studies", "4", "--eval-every-epochs", "1", "--max-new-tokens", "12"]


def test_smoke_run_outputs(trained_run_dir):
    model_dir = trained_run_dir / "model"
    for name in ("config.json", "model.safetensors", "generation_config.json", "processor_config.json", "tokenizer.model", "training_data.json"):
        assert (model_dir / name).is_file(), name
    summary = json.loads((trained_run_dir / "training_summary.json").read_text())
    assert summary["train_studies"] == 16
    assert summary["validation_studies"] == 4
    assert [record["epoch"] for record in summary["history"]] == [1, 2]
    assert summary["history"][1]["train_loss"] < summary["history"][0]["train_loss"]
    assert (trained_run_dir / "split.csv").is_file()
    assert (trained_run_dir / "checkpoints" / "epoch-2" / "trainer_state.json").is_file()


def test_split_file_is_patient_disjoint(trained_run_dir):
    import csv

    with open(trained_run_dir / "split.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    splits_of_patient: dict[str, set[str]] = {}
    for row in rows:
        splits_of_patient.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of_patient.values())
    assert {row["split"] for row in rows} == {"train", "validation", "test"}


def test_saved_model_reloads_and_generates_same_text(trained_model_dir, data_root):
    model = EIRForReportGeneration.from_pretrained(trained_model_dir).eval()
    processor = EIRProcessor.from_pretrained(trained_model_dir)
    assert model.config.retrieval_bank_size == 16
    image = sorted((data_root / "covid-chestxray" / "images").iterdir())[0]
    inputs = processor(images=[str(image)], history=["Sex: female. Age: 54. View: PA."], patient_ids=["unknown"])
    first = processor.batch_decode(model.generate(**inputs, max_new_tokens=20))
    again = EIRForReportGeneration.from_pretrained(trained_model_dir).eval()
    second = processor.batch_decode(again.generate(**inputs, max_new_tokens=20))
    assert first == second
    assert first[0].strip()


def test_special_tokens_agree_with_tokenizer(trained_model_dir):
    model = EIRForReportGeneration.from_pretrained(trained_model_dir)
    tokenizer = EIRProcessor.from_pretrained(trained_model_dir).tokenizer
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.bos_token_id == tokenizer.bos_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.vocab_size == len(tokenizer)
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}) == 4


def test_training_never_reads_test_split(tmp_path, data_root, monkeypatch):
    seen_studies: list[str] = []
    original = eir.training.StudyDataset

    class RecordingDataset(original):
        def __init__(self, records, *args, **kwargs):
            seen_studies.extend(record["split"] for record in records)
            super().__init__(records, *args, **kwargs)

    monkeypatch.setattr(eir.training, "StudyDataset", RecordingDataset)
    main(["--log-level", "WARNING", "train", "--data-dir", str(data_root), "--output-dir", str(tmp_path), "--epochs", "1",
          "--limit-train-studies", "4", "--limit-eval-studies", "2", "--eval-every-epochs", "1", "--max-new-tokens", "4"])
    assert seen_studies
    assert "test" not in seen_studies


def test_resume_continues_from_checkpoint(tmp_path, data_root):
    common = ["--log-level", "WARNING", "train", "--data-dir", str(data_root), "--output-dir", str(tmp_path), *SMOKE_OPTIONS]
    main([*common, "--epochs", "1"])
    state = json.loads((tmp_path / "checkpoints" / "epoch-1" / "trainer_state.json").read_text())
    assert state["epoch"] == 1
    main([*common, "--epochs", "2", "--resume-from", "latest"])
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert [record["epoch"] for record in summary["history"]] == [1, 2]
    assert summary["history"][0] == state["history"][0]  # epoch 1 was not trained again
    resumed_state = json.loads((tmp_path / "checkpoints" / "epoch-2" / "trainer_state.json").read_text())
    assert resumed_state["global_step"] == 2 * state["global_step"]


def test_resume_without_checkpoint_fails_clearly(tmp_path, data_root):
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        main(["train", "--data-dir", str(data_root), "--output-dir", str(tmp_path), "--resume-from", "latest", *SMOKE_OPTIONS])


def _copy_covid_with_broken_image(data_root: Path, target: Path) -> str:
    """Link the real COVID collection into `target`, replacing the first training study's image with garbage."""
    from eir.data import load_study_dataset

    source = data_root / "covid-chestxray"
    destination = target / "covid-chestxray"
    (destination / "images").mkdir(parents=True)
    for name in ("metadata.csv", "splits.csv", "SCHEMA.md", "images_manifest.csv"):
        if (source / name).exists():
            shutil.copy(source / name, destination / name)
    first_train = load_study_dataset("covid_chestxray", data_dir=data_root)["train"][0]
    broken_names = {Path(path).name for path in first_train["image_paths"]}
    for image in (source / "images").iterdir():
        link = destination / "images" / image.name
        if image.name in broken_names:
            link.write_bytes(b"this is not an image")
        else:
            link.symlink_to(image)
    return first_train["study_id"]


def test_broken_image_does_not_stop_training(tmp_path, data_root, caplog):
    broken_root = tmp_path / "data"
    broken_study = _copy_covid_with_broken_image(data_root, broken_root)
    with caplog.at_level("WARNING"):
        main(["train", "--data-dir", str(broken_root), "--output-dir", str(tmp_path / "run"), "--epochs", "1",
              "--limit-train-studies", "6", "--limit-eval-studies", "2", "--eval-every-epochs", "1", "--max-new-tokens", "4"])
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["history"][0]["train_loss"] > 0
    assert any(broken_study in record.getMessage() for record in caplog.records)
    assert EIRForReportGeneration.from_pretrained(tmp_path / "run" / "model").config.retrieval_bank_size == 5


def test_two_cpu_processes_with_accelerate_launch(tmp_path, data_root):
    accelerate = Path(sys.executable).parent / "accelerate"
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "29533",
        "-m", "eir.cli", "--log-level", "WARNING", "train", "--data-dir", str(data_root), "--output-dir", str(tmp_path),
        "--epochs", "1", "--limit-train-studies", "12", "--limit-eval-studies", "4", "--eval-every-epochs", "1", "--max-new-tokens", "6",
    ]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["num_processes"] == 2
    # The cosine schedule ends near 0 after the last step. A schedule stepped twice per optimizer
    # step would have passed 0 halfway and climbed back to the peak learning rate.
    assert summary["history"][-1]["learning_rate"] < 0.1 * summary["settings"]["learning_rate"]
    model = EIRForReportGeneration.from_pretrained(tmp_path / "model")
    # Both processes embed their shard; the gathered bank covers all 12 training studies once.
    assert model.config.retrieval_bank_size == 12
    assert torch.isfinite(model.encoder.knowledge_graph.bank_embeddings).all()


def test_new_run_rejects_old_checkpoints(tmp_path, data_root):
    common = ["--log-level", "WARNING", "train", "--data-dir", str(data_root), "--output-dir", str(tmp_path), "--epochs", "1",
              "--limit-train-studies", "4", "--limit-eval-studies", "2", "--eval-every-epochs", "1", "--max-new-tokens", "4"]
    main(common)
    with pytest.raises(FileExistsError, match="--resume-from latest"):
        main(common)
    main([*common, "--overwrite"])
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["epoch-1"]


def test_misspelt_recipe_key_rejected(tmp_path, data_root):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("dataset:\n  name: covid_chestxray\nmodel:\n  view_agregation: mean\n")
    with pytest.raises(ValueError, match="view_agregation"):
        main(["train", "--recipe", str(recipe), "--data-dir", str(data_root), "--output-dir", str(tmp_path / "run")])


def test_unknown_selection_metric_rejected_before_training(tmp_path, data_root):
    with pytest.raises(ValueError, match="selection_metric"):
        main(["train", "--data-dir", str(data_root), "--output-dir", str(tmp_path), "--selection-metric", "METEOR"])
    assert not (tmp_path / "checkpoints").exists()
