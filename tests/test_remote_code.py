"""Saved model folders load with `trust_remote_code=True` where the EIR packages cannot be imported."""

from __future__ import annotations

import filecmp
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eir.hub import (
    CONFIG_AUTO_MAP,
    IMAGE_PROCESSOR_AUTO_MAP,
    PROCESSOR_AUTO_MAP,
    REMOTE_CODE_FILES,
    TOKENIZER_AUTO_MAP,
    prepare_hub_folder,
)

from conftest import HISTORY, covid_image, generate_text  # noqa: E402


# Runs in a fresh interpreter, from a working directory outside the repository. The EIR packages
# are installed in editable mode in the test environment, so a meta path finder emulates "not
# installed": it rejects them before any other import happens.
REMOTE_LOADING_SCRIPT = r'''
import importlib.abc
import json
import sys

BLOCKED = {"eir", "configuration_eir", "modeling_eir", "processing_eir"}


class RejectEirPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"{fullname} is blocked to emulate an environment without the EIR packages")
        return None


sys.meta_path.insert(0, RejectEirPackages())

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)

report_path, image, history, folders = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
report = {"blocked": [], "folders": {}}
for name in sorted(BLOCKED):
    try:
        __import__(name)
    except ImportError:
        report["blocked"].append(name)

for folder in folders:
    entry = {}
    try:
        AutoConfig.from_pretrained(folder)
        entry["without_trust"] = "loaded"
    except ValueError as error:
        entry["without_trust"] = type(error).__name__
    loaded = {
        "AutoConfig": AutoConfig.from_pretrained(folder, trust_remote_code=True),
        "AutoModel": AutoModel.from_pretrained(folder, trust_remote_code=True),
        "AutoModelForImageTextToText": AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True),
        "AutoProcessor": AutoProcessor.from_pretrained(folder, trust_remote_code=True),
        "AutoImageProcessor": AutoImageProcessor.from_pretrained(folder, trust_remote_code=True),
        "AutoTokenizer": AutoTokenizer.from_pretrained(folder, trust_remote_code=True),
    }
    entry["classes"] = {key: [type(value).__module__, type(value).__name__] for key, value in loaded.items()}
    processor = loaded["AutoProcessor"]
    entry["processor_parts"] = [type(processor.image_processor).__name__, type(processor.tokenizer).__name__]
    for key in ("AutoModel", "AutoModelForImageTextToText"):
        model = loaded[key]
        model.eval()
        inputs = processor(images=[[image]], history=[history])
        with torch.no_grad():
            output_ids = model.generate(**inputs, max_new_tokens=12, num_beams=1, do_sample=False)
        entry[key + "_ids"] = output_ids[0].tolist()
        entry[key + "_text"] = processor.batch_decode(output_ids, skip_special_tokens=True)[0]
    report["folders"][folder] = entry

report["eir_modules_loaded"] = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
with open(report_path, "w", encoding="utf-8") as handle:
    json.dump(report, handle)
'''

EXPECTED_CLASSES = {
    "AutoConfig": "EIRConfig",
    "AutoModel": "EIRForReportGeneration",
    "AutoModelForImageTextToText": "EIRForReportGeneration",
    "AutoProcessor": "EIRProcessor",
    "AutoImageProcessor": "EIRImageProcessor",
    "AutoTokenizer": "EIRTokenizer",
}


def test_model_folder_has_flat_code(trained_model_dir):
    for file_name, module_name in REMOTE_CODE_FILES.items():
        source = Path(importlib.import_module(module_name).__file__)
        assert (trained_model_dir / file_name).is_file(), f"{file_name} missing"
        assert filecmp.cmp(trained_model_dir / file_name, source, shallow=False), f"{file_name} differs from {source}"


def test_model_folder_auto_map(trained_model_dir):
    config = json.loads((trained_model_dir / "config.json").read_text())
    processor_config = json.loads((trained_model_dir / "processor_config.json").read_text())
    tokenizer_config = json.loads((trained_model_dir / "tokenizer_config.json").read_text())
    assert config["auto_map"] == CONFIG_AUTO_MAP
    assert processor_config["auto_map"] == PROCESSOR_AUTO_MAP
    assert processor_config["image_processor"]["auto_map"] == IMAGE_PROCESSOR_AUTO_MAP
    assert tokenizer_config["auto_map"] == TOKENIZER_AUTO_MAP
    # Every entry names a class that exists in the flat file it points to.
    for reference in [*CONFIG_AUTO_MAP.values(), *IMAGE_PROCESSOR_AUTO_MAP.values(), TOKENIZER_AUTO_MAP["AutoTokenizer"][0]]:
        module_file, class_name = reference.split(".")
        assert f"class {class_name}(" in (trained_model_dir / f"{module_file}.py").read_text()


def test_remote_code_without_packages(trained_model_dir, tmp_path, data_root):
    """Load a trained model folder and its Hub folder through every Auto class without the EIR packages.

    The packages are installed in editable mode in the test environment, so "not installed" is
    emulated: a fresh interpreter first installs a `sys.meta_path` finder that raises ImportError
    for `eir`, `configuration_eir`, `modeling_eir` and `processing_eir` (see
    `REMOTE_LOADING_SCRIPT`). It runs offline, with an empty Hugging Face cache and module cache,
    from a folder outside the repository. Its greedy report for a real COVID-19 radiograph must
    equal the package model's.
    """
    hub_dir = prepare_hub_folder(trained_model_dir, tmp_path / "hub", include_evaluation=False)
    image = covid_image(data_root)
    report_path = tmp_path / "remote_loading_report.json"
    work_dir = tmp_path / "elsewhere"
    work_dir.mkdir()
    environment = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_MODULES_CACHE", "HF_HOME")
    }
    environment.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(tmp_path / "hf_home"),
            "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
        }
    )
    completed = subprocess.run(
        [sys.executable, "-c", REMOTE_LOADING_SCRIPT, str(report_path), str(image), HISTORY, str(trained_model_dir), str(hub_dir)],
        cwd=work_dir, env=environment, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(report_path.read_text(encoding="utf-8"))

    assert report["blocked"] == ["configuration_eir", "eir", "modeling_eir", "processing_eir"]
    assert report["eir_modules_loaded"] == []

    from modeling_eir import EIRForReportGeneration
    from processing_eir import EIRProcessor

    expected_ids, expected_text = generate_text(
        EIRForReportGeneration.from_pretrained(trained_model_dir), EIRProcessor.from_pretrained(trained_model_dir), image
    )
    assert set(report["folders"]) == {str(trained_model_dir), str(hub_dir)}
    for folder, entry in report["folders"].items():
        assert entry["without_trust"] == "ValueError", folder
        for auto_class, class_name in EXPECTED_CLASSES.items():
            module_name, loaded_name = entry["classes"][auto_class]
            assert loaded_name == class_name, (folder, auto_class)
            assert module_name.startswith("transformers_modules."), (folder, auto_class, module_name)
        assert entry["processor_parts"] == ["EIRImageProcessor", "EIRTokenizer"]
        for key in ("AutoModel", "AutoModelForImageTextToText"):
            assert entry[key + "_ids"] == expected_ids, (folder, key)
            assert entry[key + "_text"] == expected_text, (folder, key)


@pytest.mark.parametrize("file_name", ["config.json", "processor_config.json", "tokenizer_config.json"])
def test_save_with_remote_code_missing_file(tmp_path, file_name):
    from eir.hub import ModelFolderError, add_auto_map

    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        content = {"image_processor": {}} if name == "processor_config.json" else {}
        (tmp_path / name).write_text(json.dumps(content))
    (tmp_path / file_name).unlink()
    with pytest.raises(ModelFolderError, match=file_name):
        add_auto_map(tmp_path)
