"""The `eir` command: help texts, generate (single, batch, broken input) and evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eir.cli import build_parser, main


@pytest.mark.parametrize("command", ["train", "evaluate", "generate"])
def test_every_option_has_help(command):
    parser = build_parser()
    subparser = parser._subparsers._group_actions[0].choices[command]
    for action in subparser._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 10, f"{command} {action.option_strings} lacks a help text"


def test_console_script_help():
    completed = subprocess.run([str(Path(sys.executable).parent / "eir"), "train", "--help"], capture_output=True, text=True)
    assert completed.returncode == 0
    assert "--learning-rate" in completed.stdout
    assert "studies per optimisation step" in completed.stdout


def _covid_images(data_root: Path, count: int) -> list[str]:
    return [str(path) for path in sorted((data_root / "covid-chestxray" / "images").iterdir())[:count]]


def test_generate_single_study_json(trained_model_dir, data_root, capsys):
    images = _covid_images(data_root, 2)
    code = main(["generate", "--model", str(trained_model_dir), "--image", images[0], "--image", images[1],
                 "--history", "Sex: male. Age: 70.", "--max-new-tokens", "15", "--json"])
    assert code == 0
    output = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert output["images"] == images
    assert output["history"] == "Sex: male. Age: 70."
    assert isinstance(output["report"], str) and output["report"]


def test_generate_plain_text_is_deterministic(trained_model_dir, data_root, capsys):
    image = _covid_images(data_root, 1)[0]
    arguments = ["generate", "--model", str(trained_model_dir), "--image", image, "--max-new-tokens", "15"]
    main(arguments)
    first = capsys.readouterr().out
    main(arguments)
    assert capsys.readouterr().out == first


def test_generate_batch_folder_with_broken_study(trained_model_dir, data_root, tmp_path, capsys):
    images = _covid_images(data_root, 3)
    for name, files in {"study_a": images[:2], "study_b": images[2:3]}.items():
        folder = tmp_path / name
        folder.mkdir()
        for index, image in enumerate(files):
            (folder / f"view{index}{Path(image).suffix}").symlink_to(image)
    (tmp_path / "study_a" / "history.txt").write_text("Fever and cough for 5 days.")
    (tmp_path / "study_c").mkdir()
    (tmp_path / "study_c" / "view0.png").write_bytes(b"broken")

    code = main(["generate", "--model", str(trained_model_dir), "--studies", str(tmp_path), "--json", "--max-new-tokens", "10"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    by_study = {line["study_id"]: line for line in lines}
    assert set(by_study) == {"study_a", "study_b", "study_c"}
    assert by_study["study_a"]["history"] == "Fever and cough for 5 days."
    assert by_study["study_b"]["report"]
    assert "no readable image" in by_study["study_c"]["error"]


def test_generate_jsonl_list(trained_model_dir, data_root, tmp_path, capsys):
    images = _covid_images(data_root, 2)
    studies = tmp_path / "studies.jsonl"
    studies.write_text("\n".join(json.dumps({"study_id": f"s{i}", "images": [image], "history": ""}) for i, image in enumerate(images)))
    assert main(["generate", "--model", str(trained_model_dir), "--studies", str(studies), "--max-new-tokens", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("]")[0] for line in lines] == ["[s0", "[s1"]


def test_generate_invalid_jsonl_names_line(trained_model_dir, tmp_path):
    studies = tmp_path / "studies.jsonl"
    studies.write_text('{"study_id": "a", "images": ["x.png"]}\n{not json}\n')
    with pytest.raises(SystemExit, match="studies.jsonl:2: invalid JSON"):
        main(["generate", "--model", str(trained_model_dir), "--studies", str(studies)])


def test_generate_without_image_fails_clearly(trained_model_dir):
    with pytest.raises(SystemExit, match="pass --image FILE"):
        main(["generate", "--model", str(trained_model_dir)])


def test_evaluate_prints_table_with_baselines(trained_model_dir, data_root, tmp_path, capsys):
    code = main(["--log-level", "WARNING", "evaluate", "--model", str(trained_model_dir), "--data-dir", str(data_root),
                 "--split", "validation", "--max-new-tokens", "12", "--output-dir", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    for system in ("EIR", "most frequent training report", "random training report", "nearest training image"):
        assert system in printed
    results = json.loads((tmp_path / "metrics_validation.json").read_text())
    assert results["num_studies"] == 37  # every validation study of the shipped split, never truncated
    eir_row = results["systems"]["EIR"]
    for metric in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "distinct_fraction"):
        assert 0.0 <= eir_row[metric] <= 10.0, metric
    predictions = (tmp_path / "predictions_validation.jsonl").read_text().splitlines()
    assert len(predictions) == 37


def test_console_error_is_one_line(tmp_path):
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "eir"), "generate", "--model", str(tmp_path / "missing"), "--image", "x.png"],
        capture_output=True, text=True,
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("eir: error: --model")
    assert "Traceback" not in completed.stderr


def test_generate_rejects_image_with_studies(trained_model_dir, tmp_path):
    with pytest.raises(SystemExit, match="not both"):
        main(["generate", "--model", str(trained_model_dir), "--image", "a.png", "--studies", str(tmp_path)])
