"""Findings of training reports for the knowledge graph, and the retrieval bank built from them.

Each training report contributes up to `max_entities_per_report` findings. A finding is one
sentence of the report that mentions a general chest node (by the keywords below), and it is
linked to the most specific node it mentions. This keyword matcher stands in for the entity extractor
of DCL (Li et al., CVPR 2023), which used RadGraph.

NOTE: keyword matching sees no negation scope: "No pleural effusion." becomes a finding linked to
"effusion", with the negation kept in its tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

# Keywords per general node, most specific nodes first: a sentence links to the first node
# whose keyword it contains.
NODE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("cardiomegaly", "enlarged heart", "heart is enlarged", "cardiac enlargement"),
    "pneumothorax": ("pneumothorax", "pneumothoraces"),
    "effusion": ("effusion",),
    "consolidation": ("consolidation", "consolidative"),
    "pneumonia": ("pneumonia", "infiltrate", "infection", "infectious"),
    "atelectasis": ("atelectasis", "atelectatic", "collapse"),
    "edema": ("edema", "oedema", "vascular congestion", "congestion"),
    "opacity": ("opacity", "opacities", "opacification", "ground-glass", "ground glass", "haziness", "shadowing"),
    "nodule": ("nodule", "nodular"),
    "mass": ("mass", "lesion", "tumor", "tumour"),
    "emphysema": ("emphysema", "hyperinflat", "hyperexpan", "copd"),
    "fibrosis": ("fibrosis", "fibrotic", "scarring", "scar", "interstitial", "reticular"),
    "granuloma": ("granuloma", "calcified", "calcification"),
    "thickening": ("thickening",),
    "fracture": ("fracture",),
    "device": (
        "tube", "catheter", "pacemaker", "picc", "central line", "central venous", "clip", "wire", "sternotomy",
        "stent", "device", "defibrillator",
    ),
    "spine": ("spine", "spinal", "vertebra", "spondylo", "degenerative", "scoliosis", "kyphosis"),
    "aorta": ("aorta", "aortic"),
    "hilum": ("hilum", "hilar"),
    "diaphragm": ("diaphragm", "hemidiaphragm", "costophrenic"),
    "pleura": ("pleura", "pleural"),
    "heart": ("heart", "cardiac", "cardiomediastinal"),
    "mediastinum": ("mediastinum", "mediastinal"),
    "bone": ("bone", "osseous", "bony", "rib", "clavicle", "skeletal"),
    "soft tissue": ("soft tissue", "subcutaneous"),
    "lung": ("lung", "pulmonary", "lobe", "parenchyma", "airspace", "air space", "bronch"),
    "chest": ("chest", "thorax", "thoracic"),
}

_SENTENCE_END = re.compile(r"(?<=[.;!?])\s+|\n+")
# A keyword matches at the start of a word, so "effusions" matches "effusion". Device keywords must
# match whole words (plural allowed), so "tuberculosis" does not match "tube".
_WHOLE_WORD_NODES = {"device"}
_NODE_PATTERNS = {
    node: re.compile(
        r"\b(?:" + "|".join(re.escape(keyword) for keyword in keywords) + ")"
        + (r"s?\b" if node in _WHOLE_WORD_NODES else "")
    )
    for node, keywords in NODE_KEYWORDS.items()
}


def split_sentences(report: str) -> list[str]:
    """Split a report into sentences at '.', ';', '!' or '?' followed by white space, and at line breaks.

    A decimal point as in "3.5 cm" is not followed by white space, so it does not split.
    """
    return [sentence.strip() for sentence in _SENTENCE_END.split(report) if sentence.strip()]


def extract_findings(report: str, node_names: Sequence[str], max_findings: int) -> list[tuple[str, int]]:
    """Return up to `max_findings` (sentence, node index) pairs of a report, in report order.

    Only nodes present in `node_names` are linked; sentences that mention none are skipped.
    """
    node_index = {name: i for i, name in enumerate(node_names)}
    findings: list[tuple[str, int]] = []
    for sentence in split_sentences(report):
        lowered = sentence.lower()
        for node, pattern in _NODE_PATTERNS.items():
            if node in node_index and pattern.search(lowered):
                findings.append((sentence, node_index[node]))
                break
        if len(findings) == max_findings:
            break
    return findings


def encode_findings(
    reports: Sequence[str],
    tokenizer,
    node_names: Sequence[str],
    max_findings: int,
    max_finding_tokens: int,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise the findings of each report for the retrieval bank.

    Returns `entity_ids` of shape (N, max_findings, max_finding_tokens), padded with
    `pad_token_id`, and `entity_nodes` of shape (N, max_findings), -1 for padding.
    """
    entity_ids = torch.full((len(reports), max_findings, max_finding_tokens), pad_token_id, dtype=torch.int32)
    entity_nodes = torch.full((len(reports), max_findings), -1, dtype=torch.long)
    for row, report in enumerate(reports):
        findings = extract_findings(report, node_names, max_findings)
        if not findings:
            continue
        encoded = tokenizer([sentence for sentence, _ in findings], add_special_tokens=False)["input_ids"]
        for column, ((_, node), ids) in enumerate(zip(findings, encoded)):
            ids = ids[:max_finding_tokens]
            entity_ids[row, column, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
            entity_nodes[row, column] = node
    return entity_ids, entity_nodes
