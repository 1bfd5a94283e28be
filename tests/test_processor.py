"""EIRProcessor on real images and real report text, and the knowledge-graph findings."""

from __future__ import annotations

import pytest
import torch

from configuration_eir.configuration_eir import DEFAULT_KNOWLEDGE_GRAPH_NODES
from eir.knowledge import encode_findings, extract_findings, split_sentences
from processing_eir import EIRImageProcessor, EIRProcessor, patient_group_id, train_eir_tokenizer

REPORTS = [
    "The heart is normal in size. No pleural effusion or pneumothorax.",
    "Bilateral patchy opacities, 3.5 cm nodule at T11-T12. Normal chest x-XXXX.",
    "Right lower lobe consolidation. Sternotomy wires.",
] * 20


@pytest.fixture(scope="module")
def processor(tmp_path_factory) -> EIRProcessor:
    tokenizer = train_eir_tokenizer(REPORTS, tmp_path_factory.mktemp("tokenizer"), vocab_size=400)
    return EIRProcessor(EIRImageProcessor(size=64), tokenizer, max_history_length=16, max_report_length=24)


@pytest.fixture(scope="module")
def real_images(data_root):
    images = sorted((data_root / "covid-chestxray" / "images").iterdir())
    return [str(path) for path in images[:3]]


def test_processor_batch(processor, real_images):
    batch = processor(
        images=[[real_images[0], real_images[1]], [real_images[2]]],
        history=["Sex: male. Age: 65.", ""],
        reports=REPORTS[:2],
        patient_ids=["12", "40"],
    )
    assert batch["pixel_values"].shape == (2, 2, 3, 64, 64)
    assert batch["pixel_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["history_input_ids"].shape[0] == 2
    assert batch["history_attention_mask"][1].sum() == 1  # an empty history is one EOS token
    assert batch["labels"].shape[0] == 2
    assert batch["labels"].shape[1] <= 24
    assert (batch["labels"][batch["labels"] != -100] >= 0).all()
    assert batch["group_ids"].tolist() == [patient_group_id("12"), patient_group_id("40")]


def test_labels_end_with_eos_and_pad_with_minus_100(processor):
    batch = processor(reports=["Clear lungs.", REPORTS[1]])
    short = batch["labels"][0]
    length = int((short != -100).sum())
    assert short[length - 1].item() == processor.tokenizer.eos_token_id
    assert (short[length:] == -100).all()


def test_batch_size_mismatch_named(processor, real_images):
    with pytest.raises(ValueError, match="`history`"):
        processor(images=[[real_images[0]], [real_images[1]]], history=["only one"])


def test_skip_broken_image_keeps_study(processor, real_images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    batch = processor(images=[[str(broken), real_images[0]]], errors="skip")
    assert batch["pixel_mask"].tolist() == [[0, 1]]


def test_patient_group_id_stable():
    assert patient_group_id("17") == patient_group_id("17")
    assert patient_group_id("17") != patient_group_id("18")
    assert 0 <= patient_group_id("17") < 2**63


def test_processor_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    reloaded = EIRProcessor.from_pretrained(tmp_path)
    assert reloaded.max_history_length == 16
    assert reloaded.max_report_length == 24
    assert reloaded.image_processor.size == 64
    assert reloaded.tokenizer(REPORTS[1])["input_ids"] == processor.tokenizer(REPORTS[1])["input_ids"]


def test_split_sentences_keeps_decimals():
    assert split_sentences("A 3.5 cm nodule. No effusion.\nStable.") == ["A 3.5 cm nodule.", "No effusion.", "Stable."]


def test_extract_findings_links_nodes():
    nodes = list(DEFAULT_KNOWLEDGE_GRAPH_NODES)
    findings = extract_findings(REPORTS[0] + " Portable support view.", nodes, max_findings=8)
    assert findings == [
        ("The heart is normal in size.", nodes.index("heart")),
        ("No pleural effusion or pneumothorax.", nodes.index("pneumothorax")),
    ]
    assert len(extract_findings(" ".join(REPORTS[:3]), nodes, max_findings=2)) == 2


def test_encode_findings_shapes(processor):
    nodes = list(DEFAULT_KNOWLEDGE_GRAPH_NODES)
    entity_ids, entity_nodes = encode_findings(REPORTS[:3] + ["Nothing to link here"], processor.tokenizer, nodes, 4, 6, 0)
    assert entity_ids.shape == (4, 4, 6)
    assert entity_nodes.shape == (4, 4)
    assert (entity_nodes[3] == -1).all()
    assert (entity_ids[3] == 0).all()
    assert entity_nodes[0, 0].item() == nodes.index("heart")
    assert entity_ids.dtype == torch.int32


def test_findings_on_real_iu_reports(data_root):
    from eir.data import load_study_dataset

    dataset = load_study_dataset("iu_xray", data_dir=data_root, require_images=False)
    reports = dataset["train"]["report"][:500]
    nodes = list(DEFAULT_KNOWLEDGE_GRAPH_NODES)
    linked = [extract_findings(report, nodes, max_findings=8) for report in reports]
    with_findings = sum(1 for findings in linked if findings)
    # Measured: nearly every IU report mentions the heart, lungs or pleura.
    assert with_findings / len(reports) > 0.9
    used_nodes = {node for findings in linked for _, node in findings}
    assert {nodes.index("heart"), nodes.index("lung"), nodes.index("pneumothorax")} <= used_nodes


def test_truncated_report_has_no_eos(processor):
    long_report = " ".join(REPORTS[:3]) * 3
    batch = processor(reports=[long_report, "Clear lungs."])
    eos = processor.tokenizer.eos_token_id
    assert batch["labels"].shape[1] == processor.max_report_length
    assert eos not in batch["labels"][0].tolist()
    assert (batch["labels"][0] != -100).all()
    assert eos in batch["labels"][1].tolist()


def test_tuberculosis_is_not_a_device():
    nodes = list(DEFAULT_KNOWLEDGE_GRAPH_NODES)
    assert extract_findings("No evidence of tuberculosis.", nodes, max_findings=8) == []
    assert extract_findings("Two chest tubes in place.", nodes, max_findings=8) == [("Two chest tubes in place.", nodes.index("device"))]
