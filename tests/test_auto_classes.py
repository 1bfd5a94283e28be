"""The transformers Auto classes load a model folder saved by `eir train`, with the package imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)

import eir  # noqa: F401  (registers the Auto classes)
from configuration_eir import EIRConfig
from modeling_eir import EIRForReportGeneration
from processing_eir import EIRImageProcessor, EIRProcessor, EIRTokenizer

from conftest import covid_image, generate_text  # noqa: E402


@pytest.mark.parametrize(
    ("auto_class", "expected_class"),
    [
        (AutoConfig, EIRConfig),
        (AutoModel, EIRForReportGeneration),
        (AutoModelForImageTextToText, EIRForReportGeneration),
        (AutoProcessor, EIRProcessor),
        (AutoImageProcessor, EIRImageProcessor),
        (AutoTokenizer, EIRTokenizer),
    ],
)
def test_auto_class_loads_package_class(trained_model_dir, auto_class, expected_class):
    loaded = auto_class.from_pretrained(trained_model_dir)
    assert type(loaded) is expected_class


def test_auto_processor_parts(trained_model_dir):
    processor = AutoProcessor.from_pretrained(trained_model_dir)
    assert type(processor.tokenizer) is EIRTokenizer
    assert type(processor.image_processor) is EIRImageProcessor
    direct = EIRProcessor.from_pretrained(trained_model_dir)
    assert processor.max_history_length == direct.max_history_length
    assert processor.max_report_length == direct.max_report_length
    assert processor.tokenizer("no acute disease").input_ids == direct.tokenizer("no acute disease").input_ids


def test_auto_model_generates_like_direct_load(trained_model_dir, data_root):
    image = covid_image(data_root)
    auto_ids, auto_text = generate_text(
        AutoModelForImageTextToText.from_pretrained(trained_model_dir), AutoProcessor.from_pretrained(trained_model_dir), image
    )
    direct_ids, direct_text = generate_text(
        EIRForReportGeneration.from_pretrained(trained_model_dir), EIRProcessor.from_pretrained(trained_model_dir), image
    )
    assert auto_ids == direct_ids
    assert auto_text == direct_text


def test_retrieval_bank_survives_auto_load(trained_model_dir):
    config = json.loads((trained_model_dir / "config.json").read_text())
    model = AutoModel.from_pretrained(trained_model_dir)
    assert config["retrieval_bank_size"] > 0
    assert model.config.retrieval_bank_size == config["retrieval_bank_size"]


def test_model_packages_alone_register(trained_model_dir, tmp_path):
    """Importing only the three model packages (not `eir`) is enough for the Auto classes."""
    script = (
        "import sys\n"
        "import configuration_eir, modeling_eir, processing_eir\n"
        "from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor\n"
        "folder = sys.argv[1]\n"
        "loaded = [AutoConfig.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder),\n"
        "          AutoProcessor.from_pretrained(folder)]\n"
        "print(' '.join(type(item).__module__ for item in loaded))\n"
        "print('eir' in sys.modules)\n"
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    completed = subprocess.run(
        [sys.executable, "-c", script, str(trained_model_dir)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    modules_line, eir_imported = completed.stdout.strip().splitlines()[-2:]
    assert modules_line.split() == [
        "configuration_eir.configuration_eir",
        "modeling_eir.modeling_eir",
        "processing_eir.processing_eir",
    ]
    assert eir_imported == "False"
