"""Every Python block of docs/usage.md runs as written, offline, against a small trained model.

Each block runs in its own interpreter, in a temporary folder used in place of the repository
root, which links `metrics/`, `scripts/` and `model_cards/` from the checkout, so relative paths in
the examples resolve and their outputs land in the temporary folder. `EIR_EXAMPLE_MODEL` points to
a model folder with `metrics_test.json` beside it and `EIR_EXAMPLE_IMAGE` to a real
COVID-19 radiograph. A block preceded by `<!-- no-run: REASON -->`
is skipped with that reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
USAGE_DOC = REPOSITORY_ROOT / "docs" / "usage.md"
LINKED_FOLDERS = ("metrics", "scripts", "model_cards")
PLACEHOLDER_SECTIONS = ("## Generation", "## Training with Seq2SeqTrainer", "## PEFT LoRA", "## Datasets")

_FENCE = re.compile(r"^```python\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_NO_RUN = re.compile(r"<!--\s*no-run\s*:?\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class CodeBlock:
    heading: str
    line: int
    code: str
    skip_reason: str | None


def extract_python_blocks(text: str) -> list[CodeBlock]:
    """Return the ```python blocks of a Markdown text with their section and skip marker."""
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()]
        prose_before = re.sub(r"^```.*?^```\s*$", "", before, flags=re.MULTILINE | re.DOTALL)
        headings = re.findall(r"^#+ .*$", prose_before, flags=re.MULTILINE)
        previous_lines = [line for line in before.splitlines() if line.strip()]
        marker = _NO_RUN.search(previous_lines[-1]) if previous_lines else None
        blocks.append(
            CodeBlock(
                heading=headings[-1].lstrip("# ") if headings else "(top)",
                line=before.count("\n") + 1,
                code=match.group(1),
                skip_reason=marker.group(1) if marker else None,
            )
        )
    return blocks


BLOCKS = extract_python_blocks(USAGE_DOC.read_text(encoding="utf-8"))


def test_doc_has_examples():
    headings = {block.heading for block in BLOCKS}
    for expected in ("Auto classes", "Remote code", "Hub folder and model card", "Report metrics with `evaluate`"):
        assert expected in headings, f"no Python example under '## {expected}'"


def test_doc_keeps_placeholder_sections():
    text = USAGE_DOC.read_text(encoding="utf-8")
    for heading in PLACEHOLDER_SECTIONS:
        assert re.search(rf"^{re.escape(heading)}$", text, flags=re.MULTILINE), heading


def test_skip_markers_give_reason():
    for block in BLOCKS:
        if block.skip_reason is not None:
            assert block.skip_reason, f"docs/usage.md line {block.line}: <!-- no-run --> without a reason"


def test_extract_python_blocks():
    text = (
        "# A\n```python\nprint(1)\n```\n\n<!-- no-run: needs a GPU -->\n```python\nprint(2)\n```\n"
        "## B\n```bash\n# a shell comment, not a heading\nls\n```\n```python\nprint(3)\n```\n"
    )
    blocks = extract_python_blocks(text)
    assert [block.code for block in blocks] == ["print(1)\n", "print(2)\n", "print(3)\n"]
    assert [block.skip_reason for block in blocks] == [None, "needs a GPU", None]
    assert [block.heading for block in blocks] == ["A", "A", "B"]


@pytest.fixture(scope="module")
def example_environment(evaluated_model_dir, data_root) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("HF_MODULES_CACHE", "PYTHONPATH")}
    environment.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "EIR_EXAMPLE_MODEL": str(evaluated_model_dir),
            "EIR_DATA_DIR": str(data_root),
            "EIR_EXAMPLE_IMAGE": str(data_root / "covid-chestxray" / "images" / "000001-12.jpg"),
        }
    )
    return environment


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{block.line}-{block.heading}" for block in BLOCKS])
def test_usage_example_runs(block, example_environment, tmp_path):
    if block.skip_reason is not None:
        pytest.skip(f"marked no-run: {block.skip_reason}")
    work_dir = tmp_path / "repository"
    work_dir.mkdir()
    for name in LINKED_FOLDERS:
        (work_dir / name).symlink_to(REPOSITORY_ROOT / name, target_is_directory=True)
    environment = {**example_environment, "HF_HOME": str(tmp_path / "hf_home")}
    completed = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=work_dir, env=environment, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, (
        f"docs/usage.md line {block.line} ({block.heading}) failed:\n{completed.stderr[-4000:]}"
    )
