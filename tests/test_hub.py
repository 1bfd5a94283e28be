"""Hub folder preparation (`scripts/push_to_hub.py`, `eir push`): files, model card metadata, upload call.

Nothing here contacts the network: the upload test replaces `huggingface_hub.HfApi` with a mock.
"""

from __future__ import annotations

import filecmp
import importlib
import importlib.util
import json
import math
import shutil
from pathlib import Path
from unittest import mock

import pytest
from huggingface_hub import ModelCard

from eir.cli import main as eir_main
from eir.hub import (
    REMOTE_CODE_FILES,
    REQUIRED_MODEL_FILES,
    ModelFolderError,
    prepare_hub_folder,
    upload_hub_folder,
)

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
SCRIPT_PATH = REPOSITORY_ROOT / "scripts" / "push_to_hub.py"
CARD_SECTIONS = (
    "## Model description",
    "## Training data and licence",
    "## Intended use and limitations",
    "## Evaluation",
    "## How to use",
)


def load_script():
    spec = importlib.util.spec_from_file_location("push_to_hub_script", SCRIPT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hub_dir(evaluated_model_dir, tmp_path_factory) -> Path:
    """Hub folder written by the script with --dry-run and the default metrics file."""
    output_dir = tmp_path_factory.mktemp("hub") / "eir-covid"
    exit_code = load_script().main(
        ["--log-level", "WARNING", "--model", str(evaluated_model_dir), "--output-dir", str(output_dir),
         "--repo-id", "example-lab/eir-covid", "--dry-run"]
    )
    assert exit_code == 0
    return output_dir


def test_hub_folder_complete(hub_dir):
    for name in (*REQUIRED_MODEL_FILES, "README.md"):
        assert (hub_dir / name).is_file(), f"{name} missing"
    generation_config = json.loads((hub_dir / "generation_config.json").read_text())
    assert generation_config["decoder_start_token_id"] == 1


def test_hub_folder_code_from_package(hub_dir):
    for file_name, module_name in REMOTE_CODE_FILES.items():
        source = Path(importlib.import_module(module_name).__file__)
        assert filecmp.cmp(hub_dir / file_name, source, shallow=False), file_name


def test_hub_folder_weights_unchanged(hub_dir, evaluated_model_dir):
    assert filecmp.cmp(hub_dir / "model.safetensors", evaluated_model_dir / "model.safetensors", shallow=False)
    assert filecmp.cmp(hub_dir / "tokenizer.model", evaluated_model_dir / "tokenizer.model", shallow=False)


def test_card_metadata(hub_dir):
    card = ModelCard.load(hub_dir / "README.md")
    assert card.data.license == "cc-by-nc-sa-4.0"
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-text-to-text"
    assert "radiology-report-generation" in card.data.tags
    assert "custom_code" in card.data.tags
    assert card.data.model_name == "eir-covid"


def test_card_eval_results_match_metrics(hub_dir, evaluated_model_dir):
    metrics = json.loads((evaluated_model_dir.parent / "metrics_test.json").read_text())
    model_row = metrics["systems"]["EIR"]
    card = ModelCard.load(hub_dir / "README.md")
    results = {result.metric_name: result for result in card.data.eval_results}

    expected_names = {name for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
                      if not math.isnan(model_row[name])}
    assert set(results) == expected_names
    assert "METEOR" not in results  # the fixture skips METEOR, so its NaN stays out of model-index
    for name, result in results.items():
        assert result.metric_value == pytest.approx(model_row[name], abs=5e-5), name
        assert result.dataset_split == "test"
        assert result.dataset_type == "covid_chestxray"
        assert result.task_type == "image-text-to-text"
    assert results["BLEU-4"].metric_type == "bleu"
    assert results["CIDEr"].metric_type == "cider"


def test_card_text(hub_dir, evaluated_model_dir):
    text = (hub_dir / "README.md").read_text()
    for section in CARD_SECTIONS:
        assert section in text
    assert "Protocol `raw`" in text
    assert "most frequent training report" in text
    assert "nearest training image" in text
    assert "not for clinical use" in text.lower() or "Not for clinical use" in text
    assert "non-commercial" in text
    assert "clinical note" in text
    assert 'repo = "example-lab/eir-covid"' in text
    assert "trust_remote_code=True" in text
    assert "{{" not in text
    assert "{%" not in text


def test_cli_push_default_paths(evaluated_model_dir, tmp_path, capsys):
    """`eir push` finds metrics_test.json in the model folder's parent and writes `hub` beside it."""
    run_dir = tmp_path / "run"
    shutil.copytree(evaluated_model_dir.parent, run_dir, ignore=shutil.ignore_patterns("hub"))
    assert eir_main(["--log-level", "WARNING", "push", "--model", str(run_dir / "model"), "--dry-run"]) == 0
    assert "Nothing uploaded" in capsys.readouterr().out
    card = ModelCard.load(run_dir / "hub" / "README.md")
    assert card.data.eval_results
    assert card.data.model_name == "eir-covid_chestxray"


def test_missing_metrics_file(trained_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="eir evaluate"):
        prepare_hub_folder(trained_model_dir, tmp_path / "hub", metrics_path=tmp_path / "metrics_test.json")


def test_no_evaluation_card(trained_model_dir, tmp_path):
    folder = prepare_hub_folder(trained_model_dir, tmp_path / "hub", include_evaluation=False, repo_id="lab/eir")
    card = ModelCard.load(folder / "README.md")
    assert card.data.eval_results is None
    assert "No evaluation results" in card.text


def test_unknown_dataset_needs_license(trained_model_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(trained_model_dir, model_dir)
    (model_dir / "training_data.json").write_text(json.dumps({"dataset": {"name": "private_archive"}}))
    with pytest.raises(ModelFolderError, match="--license"):
        prepare_hub_folder(model_dir, tmp_path / "hub", include_evaluation=False)
    folder = prepare_hub_folder(model_dir, tmp_path / "hub", include_evaluation=False, license="other")
    assert ModelCard.load(folder / "README.md").data.license == "other"


def test_dataset_ids_in_metadata(trained_model_dir, tmp_path):
    folder = prepare_hub_folder(
        trained_model_dir, tmp_path / "hub", include_evaluation=False, dataset_ids=("example/covid-cxr",)
    )
    assert ModelCard.load(folder / "README.md").data.datasets == ["example/covid-cxr"]


def test_upload_calls_upload_folder(hub_dir):
    with mock.patch("huggingface_hub.HfApi") as api_class:
        api_class.return_value.upload_folder.return_value = mock.Mock(commit_url="https://example.invalid/commit/1")
        url = upload_hub_folder(hub_dir, "example-lab/eir-covid", private=True)
    api = api_class.return_value
    api.create_repo.assert_called_once_with(repo_id="example-lab/eir-covid", repo_type="model", private=True, exist_ok=True)
    api.upload_folder.assert_called_once()
    upload_kwargs = api.upload_folder.call_args.kwargs
    assert upload_kwargs["folder_path"] == str(hub_dir)
    assert upload_kwargs["repo_id"] == "example-lab/eir-covid"
    assert upload_kwargs["repo_type"] == "model"
    assert url == "https://example.invalid/commit/1"


def test_script_uploads_only_with_repo_id(evaluated_model_dir, tmp_path):
    script = load_script()
    arguments = ["--log-level", "WARNING", "--model", str(evaluated_model_dir), "--output-dir", str(tmp_path / "hub")]
    with mock.patch("huggingface_hub.HfApi") as api_class:
        assert script.main([*arguments, "--repo-id", "example-lab/eir-covid", "--dry-run"]) == 0
        assert script.main(arguments) == 0
        assert not api_class.called
        assert script.main([*arguments, "--repo-id", "example-lab/eir-covid"]) == 0
    api_class.return_value.upload_folder.assert_called_once()
    assert api_class.return_value.upload_folder.call_args.kwargs["folder_path"] == str(tmp_path / "hub")


def test_upload_rejects_incomplete_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with mock.patch("huggingface_hub.HfApi") as api_class, pytest.raises(ModelFolderError, match="model.safetensors"):
        upload_hub_folder(tmp_path, "example-lab/eir-covid")
    assert not api_class.called


def test_script_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--model", "--output-dir", "--metrics", "--repo-id", "--dry-run", "--private", "--license"):
        assert option in help_text


def test_missing_template(trained_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="--template"):
        prepare_hub_folder(
            trained_model_dir, tmp_path / "hub", include_evaluation=False, template=tmp_path / "no_template.md"
        )


def test_card_describes_retrieval_bank(hub_dir, evaluated_model_dir):
    config = json.loads((evaluated_model_dir / "config.json").read_text())
    text = " ".join((hub_dir / "README.md").read_text().split())
    assert config["retrieval_bank_size"] > 0
    assert "The weights contain text of the training reports." in text
    assert "`encoder.knowledge_graph.bank_entity_ids`" in text
    assert f"for each of the {config['retrieval_bank_size']} training reports" in text
    assert f"up to {config['max_entities_per_report']} findings sentences" in text
    assert f"each truncated to {config['max_entity_length']} tokens" in text
    assert "The licence and data use terms of the training reports therefore apply to these weights." in text


def _copy_with_dataset(trained_model_dir: Path, tmp_path: Path, dataset: dict) -> Path:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_model_dir, model_dir)
    (model_dir / "training_data.json").write_text(json.dumps({"dataset": dataset}))
    return model_dir


def test_mimic_model_needs_allow_report_text(trained_model_dir, tmp_path):
    model_dir = _copy_with_dataset(trained_model_dir, tmp_path, {"name": "mimic_cxr"})
    with pytest.raises(ModelFolderError, match="PhysioNet Credentialed Health Data Use Agreement") as error:
        prepare_hub_folder(model_dir, tmp_path / "hub", include_evaluation=False, license="other")
    assert "--allow-report-text" in str(error.value)
    assert "bank_entity_ids" in str(error.value)
    assert not (tmp_path / "hub").exists()

    folder = prepare_hub_folder(model_dir, tmp_path / "hub", include_evaluation=False, license="other", allow_report_text=True)
    text = " ".join((folder / "README.md").read_text().split())
    assert "The target is the FINDINGS section of each report, and the clinical history is the INDICATION and HISTORY sections." in text


def test_cli_push_allow_report_text(trained_model_dir, tmp_path):
    model_dir = _copy_with_dataset(trained_model_dir, tmp_path, {"name": "mimic_cxr"})
    arguments = ["--log-level", "ERROR", "push", "--model", str(model_dir), "--no-evaluation", "--license", "other", "--dry-run"]
    with pytest.raises(ModelFolderError, match="--allow-report-text"):
        eir_main(arguments)
    assert eir_main([*arguments, "--allow-report-text"]) == 0
    assert (tmp_path / "hub" / "README.md").is_file()


@pytest.mark.parametrize(
    ("sections", "expected", "comparable"),
    [
        ({}, "The target is the FINDINGS and IMPRESSION sections of each report, and the clinical history is the INDICATION and COMPARISON sections.", False),
        ({"target_sections": ["FINDINGS"], "history_sections": ["INDICATION"]}, "The target is the FINDINGS section of each report, and the clinical history is the INDICATION section.", True),
        ({"target_sections": ["FINDINGS", "IMPRESSION"], "history_sections": []}, "The target is the FINDINGS and IMPRESSION sections of each report, and no clinical history is given.", False),
    ],
)
def test_iu_card_sections_from_training_data(trained_model_dir, tmp_path, sections, expected, comparable):
    model_dir = _copy_with_dataset(trained_model_dir, tmp_path, {"name": "iu_xray", **sections})
    folder = prepare_hub_folder(model_dir, tmp_path / "hub", include_evaluation=False)
    text = " ".join((folder / "README.md").read_text().split())
    assert expected in text
    assert ("not comparable" not in text) == comparable
    assert "The target is the FINDINGS section and the clinical history is the INDICATION section." not in text
