"""Checks of the JSON Lines study file that `eir generate --studies` reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from eir.cli import collect_studies


def _collect(path: Path) -> list[dict]:
    return collect_studies(argparse.Namespace(studies=str(path), image=None, history=""))


def _write_lines(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "studies.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_valid_lines(tmp_path):
    path = _write_lines(
        tmp_path,
        [
            json.dumps({"study_id": "a", "images": ["a/frontal.png", "/abs/lateral.png"], "history": "Cough."}),
            "",
            json.dumps({"images": "b.png", "history": None}),
            json.dumps({"study_id": 7, "images": ["c.png"]}),
        ],
    )
    studies = _collect(path)
    assert studies[0] == {"study_id": "a", "images": [str(tmp_path / "a/frontal.png"), "/abs/lateral.png"], "history": "Cough."}
    assert studies[1] == {"study_id": "3", "images": [str(tmp_path / "b.png")], "history": ""}
    assert studies[2] == {"study_id": "7", "images": [str(tmp_path / "c.png")], "history": ""}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('["a.png"]', "expected a JSON object"),
        ('"a.png"', "expected a JSON object"),
        ("{not json", "invalid JSON"),
        ('{"history": "Cough."}', "`images` must be a non-empty list"),
        ('{"images": []}', "`images` must be a non-empty list"),
        ('{"images": [1, 2]}', "`images` must be a non-empty list"),
        ('{"images": ["a.png", ""]}', "`images` must be a non-empty list"),
        ('{"images": {"frontal": "a.png"}}', "`images` must be a non-empty list"),
        ('{"images": ["a.png"], "history": ["Cough."]}', "`history` must be a string or null"),
        ('{"images": ["a.png"], "history": 3}', "`history` must be a string or null"),
    ],
)
def test_invalid_line_names_file_and_line(tmp_path, line, message):
    path = _write_lines(tmp_path, [json.dumps({"images": ["ok.png"]}), line])
    with pytest.raises(SystemExit) as error:
        _collect(path)
    assert str(error.value).startswith(f"{path}:2: ")
    assert message in str(error.value)
