"""Shared fixtures: offline mode, the real data root and a small model trained on real X-rays."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from eir.paths import default_data_dir  # noqa: E402

COVID_DIR_NAME = "covid-chestxray"
HISTORY = "Fever and dry cough for five days."


def covid_image(data_root: Path) -> Path:
    """Return the first JPEG of the real COVID-19 collection."""
    images = sorted((data_root / COVID_DIR_NAME / "images").glob("*.jpg"))
    assert images, f"no JPEG image under {data_root / COVID_DIR_NAME / 'images'}"
    return images[0]


def generate_text(model, processor, image: Path) -> tuple[list[int], str]:
    """Greedy report for one study with one view, as token ids and decoded text."""
    import torch

    inputs = processor(images=[[str(image)]], history=[HISTORY])
    model.eval()
    with torch.no_grad():
        output_ids = model.generate(**inputs, max_new_tokens=12, num_beams=1, do_sample=False)
    return output_ids[0].tolist(), processor.batch_decode(output_ids, skip_special_tokens=True)[0]


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = default_data_dir()
    if not (root / COVID_DIR_NAME / "metadata.csv").is_file():
        pytest.skip(f"real data not found under {root} (set EIR_DATA_DIR)")
    return root


@pytest.fixture(scope="session")
def trained_run_dir(tmp_path_factory, data_root) -> Path:
    """Train a small EIR on 16 real COVID-19 studies for 2 epochs (about 40 s on 2 CPU cores).

    Returns the run folder; the model folder is `<run>/model`.
    """
    from eir.cli import main

    run_dir = tmp_path_factory.mktemp("trained_run")
    exit_code = main(
        [
            "--log-level", "WARNING",
            "train",
            "--data-dir", str(data_root),
            "--output-dir", str(run_dir),
            "--epochs", "2",
            "--limit-train-studies", "16",
            "--limit-eval-studies", "4",
            "--eval-every-epochs", "1",
            "--max-new-tokens", "12",
        ]
    )
    assert exit_code == 0
    return run_dir


@pytest.fixture(scope="session")
def trained_model_dir(trained_run_dir) -> Path:
    return trained_run_dir / "model"


@pytest.fixture(scope="session")
def evaluated_model_dir(tmp_path_factory, trained_model_dir, data_root) -> Path:
    """A copy of the small model in its own run folder, with `metrics_test.json` beside it.

    The metrics come from `eir.evaluation.evaluate_model`, the function behind `eir evaluate`, on
    the first 6 test and 24 training studies, greedy decoding of 10 tokens and no METEOR (about
    10 s on 2 CPU cores). Returns the model folder; its parent contains the evaluation files.
    """
    import shutil

    from eir.evaluation import evaluate_model
    from eir.training import load_training_data_records

    run_dir = tmp_path_factory.mktemp("evaluated_run")
    model_dir = run_dir / "model"
    shutil.copytree(trained_model_dir, model_dir)
    records = load_training_data_records(model_dir, str(data_root))
    evaluate_model(
        model_dir,
        {"train": records["train"][:24], "test": records["test"][:6]},
        split="test",
        output_dir=run_dir,
        include_meteor=False,
        generation_kwargs={"max_new_tokens": 10, "num_beams": 1},
    )
    return model_dir
