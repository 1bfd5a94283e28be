"""Tests for the SentencePiece report tokenizer (`processing_eir.tokenization_eir`)."""

from __future__ import annotations

import logging
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from eir.paths import default_data_dir
from processing_eir.tokenization_eir import EIRTokenizer, train_eir_tokenizer

SYNTHETIC_TEXTS = [
    "The heart is normal in size. No pleural effusion or pneumothorax.",
    "Normal chest x-XXXX.",
    "Degenerative changes of the thoracic spine at T11-T12.",
    "A 3.5 cm nodule is seen in the right upper lobe.",
    "The lungs are clear. No focal consolidation.",
    "Heart size is mildly enlarged. Stable calcified granuloma in the left lower lobe.",
    "There is a small left pleural effusion with adjacent atelectasis.",
    "Mediastinal contours are within normal limits. Interval removal of XXXX catheter.",
    "Bony structures are intact, 2 mm, 10 mm, 25 cm.",
] * 10

ROUND_TRIP_TEXTS = [
    "3.5 cm",
    "T11-T12",
    "Normal chest x-XXXX.",
    "The heart is normal in size. No pleural effusion or pneumothorax.",
    "two  spaces",
    "first line\nsecond line",
    " leading and trailing ",
    "tab\tseparated",
    "5 µm",
    "35 °C, naïve, 10 × 12 mm → stable",
    "肺 ✓",
    "x .",
]

REPORT_ARCHIVE = default_data_dir() / "openi" / "NLMCXR_reports.tgz"
REAL_FINDINGS_COUNT = 400


def read_findings(archive: Path, limit: int) -> list[str]:
    """Return up to `limit` non-empty FINDINGS texts from the IU X-ray report archive, in archive order."""
    findings: list[str] = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".xml")):
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            root = ET.fromstring(handle.read())
            for element in root.iter("AbstractText"):
                if element.get("Label") == "FINDINGS" and element.text and element.text.strip():
                    findings.append(element.text)
            if len(findings) >= limit:
                break
    return findings[:limit]


def raw_processor(tokenizer: EIRTokenizer) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tokenizer.vocab_file))


@pytest.fixture(scope="module")
def synthetic_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> EIRTokenizer:
    return train_eir_tokenizer(SYNTHETIC_TEXTS, tmp_path_factory.mktemp("synthetic"), vocab_size=400)


@pytest.fixture(scope="module")
def real_findings() -> list[str]:
    if not REPORT_ARCHIVE.is_file():
        pytest.skip(f"IU X-ray report archive not found at {REPORT_ARCHIVE}; set EIR_DATA_DIR to the data folder")
    return read_findings(REPORT_ARCHIVE, REAL_FINDINGS_COUNT)


@pytest.fixture(scope="module")
def real_tokenizer(real_findings: list[str], tmp_path_factory: pytest.TempPathFactory) -> EIRTokenizer:
    return train_eir_tokenizer(real_findings, tmp_path_factory.mktemp("real"), vocab_size=1000)


@pytest.fixture(params=["synthetic", "real"])
def tokenizer(request: pytest.FixtureRequest) -> EIRTokenizer:
    return request.getfixturevalue(f"{request.param}_tokenizer")


def test_special_token_ids_fixed(tokenizer: EIRTokenizer) -> None:
    assert tokenizer.pad_token_id == 0
    assert tokenizer.bos_token_id == 1
    assert tokenizer.eos_token_id == 2
    assert tokenizer.unk_token_id == 3
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
    )
    processor = raw_processor(tokenizer)
    assert (processor.pad_id(), processor.bos_id(), processor.eos_id(), processor.unk_id()) == (0, 1, 2, 3)
    assert [processor.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]


def test_vocab_size_matches_model(tokenizer: EIRTokenizer) -> None:
    processor = raw_processor(tokenizer)
    assert tokenizer.vocab_size == processor.get_piece_size()
    assert len(tokenizer) == processor.get_piece_size()
    assert len(tokenizer.get_vocab()) == len(tokenizer)


def test_real_vocab_size_as_requested(real_tokenizer: EIRTokenizer) -> None:
    assert len(real_tokenizer) == 1000


def test_ids_match_raw_sentencepiece(synthetic_tokenizer: EIRTokenizer) -> None:
    processor = raw_processor(synthetic_tokenizer)
    for text in ROUND_TRIP_TEXTS + SYNTHETIC_TEXTS[:9]:
        expected = processor.encode(text)
        assert synthetic_tokenizer.encode(text, add_special_tokens=False) == expected, text
        assert synthetic_tokenizer(text)["input_ids"] == expected + [2], text


def test_real_ids_match_raw_sentencepiece(real_tokenizer: EIRTokenizer, real_findings: list[str]) -> None:
    processor = raw_processor(real_tokenizer)
    encoded = real_tokenizer(real_findings, add_special_tokens=False)["input_ids"]
    assert encoded == processor.encode(real_findings)


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip_exact(tokenizer: EIRTokenizer, text: str) -> None:
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_real_findings_round_trip(real_tokenizer: EIRTokenizer, real_findings: list[str]) -> None:
    encoded = real_tokenizer(real_findings)["input_ids"]
    decoded = real_tokenizer.batch_decode(encoded, skip_special_tokens=True)
    mismatches = [(text, output) for text, output in zip(real_findings, decoded) if text != output]
    assert mismatches == []


def test_unseen_characters_use_bytes(synthetic_tokenizer: EIRTokenizer) -> None:
    tokens = synthetic_tokenizer.tokenize("µ")
    assert tokens == ["▁", "<0xC2>", "<0xB5>"]


def test_deidentification_marker_one_piece(tokenizer: EIRTokenizer) -> None:
    tokens = tokenizer.tokenize("Normal chest x-XXXX.")
    assert "XXXX" in tokens
    assert "X" not in tokens


def test_decode_keeps_special_tokens(synthetic_tokenizer: EIRTokenizer) -> None:
    ids = synthetic_tokenizer("3.5 cm")["input_ids"]
    assert synthetic_tokenizer.decode(ids) == "3.5 cm</s>"
    assert synthetic_tokenizer.decode([1] + ids + [0, 0], skip_special_tokens=True) == "3.5 cm"
    assert synthetic_tokenizer.decode([1] + ids) == "<s>3.5 cm</s>"


def test_add_bos_and_add_eos_flags(synthetic_tokenizer: EIRTokenizer) -> None:
    vocab_file = synthetic_tokenizer.vocab_file
    body = synthetic_tokenizer.encode("3.5 cm", add_special_tokens=False)

    both = EIRTokenizer(vocab_file, add_bos=True)
    assert both("3.5 cm")["input_ids"] == [1] + body + [2]
    assert both("3.5 cm", return_special_tokens_mask=True)["special_tokens_mask"] == [1] + [0] * len(body) + [1]

    neither = EIRTokenizer(vocab_file, add_eos=False)
    assert neither("3.5 cm")["input_ids"] == body
    assert synthetic_tokenizer("3.5 cm", add_special_tokens=False)["input_ids"] == body


def test_training_deterministic(tmp_path: Path) -> None:
    first = train_eir_tokenizer(SYNTHETIC_TEXTS, tmp_path / "first", vocab_size=350)
    second = train_eir_tokenizer(SYNTHETIC_TEXTS, tmp_path / "second", vocab_size=350)
    assert first.get_vocab() == second.get_vocab()
    assert (tmp_path / "first" / "tokenizer.model").read_bytes() == (tmp_path / "second" / "tokenizer.model").read_bytes()


def test_save_load_same_ids(synthetic_tokenizer: EIRTokenizer, tmp_path: Path) -> None:
    original = EIRTokenizer(synthetic_tokenizer.vocab_file, add_bos=True)
    original.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.model").is_file()
    assert (tmp_path / "tokenizer_config.json").is_file()

    reloaded = EIRTokenizer.from_pretrained(tmp_path)
    assert isinstance(reloaded, EIRTokenizer)
    assert reloaded.add_bos is True
    assert reloaded.add_eos is True
    assert len(reloaded) == len(original)
    assert reloaded.get_vocab() == original.get_vocab()
    for text in ROUND_TRIP_TEXTS:
        assert reloaded(text)["input_ids"] == original(text)["input_ids"], text


def test_trained_folder_loads(synthetic_tokenizer: EIRTokenizer) -> None:
    folder = Path(synthetic_tokenizer.vocab_file).parent
    reloaded = EIRTokenizer.from_pretrained(folder)
    assert reloaded("T11-T12")["input_ids"] == synthetic_tokenizer("T11-T12")["input_ids"]


def test_auto_tokenizer_after_register(synthetic_tokenizer: EIRTokenizer) -> None:
    from transformers import AutoTokenizer

    from configuration_eir import EIRConfig

    AutoTokenizer.register(EIRConfig, slow_tokenizer_class=EIRTokenizer, exist_ok=True)
    folder = Path(synthetic_tokenizer.vocab_file).parent
    loaded = AutoTokenizer.from_pretrained(folder)
    assert isinstance(loaded, EIRTokenizer)
    assert loaded("3.5 cm")["input_ids"] == synthetic_tokenizer("3.5 cm")["input_ids"]


def test_batch_padding(synthetic_tokenizer: EIRTokenizer) -> None:
    texts = ["3.5 cm", "The heart is normal in size. No pleural effusion or pneumothorax."]
    lengths = [len(synthetic_tokenizer(text)["input_ids"]) for text in texts]
    batch = synthetic_tokenizer(texts, padding=True, return_tensors="pt")

    assert set(batch.keys()) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["input_ids"].dtype == torch.long
    positions = torch.arange(max(lengths))
    for row, length in enumerate(lengths):
        expected_mask = (positions < length).long()
        assert torch.equal(batch["attention_mask"][row], expected_mask)
        assert batch["input_ids"][row, length - 1].item() == 2
        assert (batch["input_ids"][row, length:] == 0).all()


def test_truncation_keeps_eos(synthetic_tokenizer: EIRTokenizer) -> None:
    text = "The heart is normal in size. No pleural effusion or pneumothorax."
    full = synthetic_tokenizer(text)["input_ids"]
    truncated = synthetic_tokenizer(text, truncation=True, max_length=6)["input_ids"]
    assert len(full) > 6
    assert len(truncated) == 6
    assert truncated[:-1] == full[:5]
    assert truncated[-1] == 2


def test_large_vocab_lowered_with_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="processing_eir.tokenization_eir"):
        tokenizer = train_eir_tokenizer(SYNTHETIC_TEXTS, tmp_path, vocab_size=20000)
    assert 260 < len(tokenizer) < 20000
    assert "fewer than vocab_size=20000" in caplog.text


def test_bpe_round_trip(tmp_path: Path) -> None:
    tokenizer = train_eir_tokenizer(SYNTHETIC_TEXTS, tmp_path, vocab_size=350, model_type="bpe")
    processor = raw_processor(tokenizer)
    for text in ROUND_TRIP_TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == processor.encode(text), text
        assert tokenizer.decode(ids) == text


def test_small_vocab_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_eir_tokenizer(SYNTHETIC_TEXTS, tmp_path, vocab_size=100)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"texts": ["", "  "]}, "no non-empty texts"),
        ({"model_type": "wordpiece"}, "model_type must be one of"),
        ({"character_coverage": 0.0}, "character_coverage must be in"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer"),
        ({"user_defined_symbols": ["<pad>"]}, "must not contain the special tokens"),
    ],
)
def test_invalid_training_arguments(tmp_path: Path, arguments: dict, message: str) -> None:
    call = {"texts": SYNTHETIC_TEXTS, "output_dir": tmp_path, **arguments}
    with pytest.raises(ValueError, match=message):
        train_eir_tokenizer(**call)


def test_missing_model_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SentencePiece model file not found"):
        EIRTokenizer(tmp_path / "absent.model")
