"""Cached backbone features: invalidation, serving through StudyDataset, and the same loss as with pixels."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from configuration_eir import EIRConfig
from eir.backbones import freeze_backbone
from eir.feature_cache import BackboneFeatureCache
from eir.studies import StudyCollator, StudyDataset, model_inputs
from modeling_eir import EIRForReportGeneration
from processing_eir import EIRImageProcessor, EIRProcessor, train_eir_tokenizer

TINY_VISION = {"model_type": "resnet", "layer_type": "basic", "embedding_size": 8, "hidden_sizes": [16, 32], "depths": [1, 1]}
REPORTS = [
    "The heart size is normal. The lungs are clear.",
    "Bilateral patchy opacities in the lower zones, consistent with pneumonia.",
    "Small left pleural effusion. No pneumothorax.",
    "Right lower lobe consolidation. Sternotomy wires.",
] * 20


def write_image(path: Path, seed: int, size: tuple[int, int] = (80, 96)) -> Path:
    generator = np.random.default_rng(seed)
    Image.fromarray(generator.integers(0, 256, size=size, dtype=np.uint8), mode="L").save(path)
    return path


@pytest.fixture()
def image_files(tmp_path) -> list[Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    return [write_image(folder / f"view{i}.png", seed=i) for i in range(5)]


@pytest.fixture(scope="module")
def processor(tmp_path_factory) -> EIRProcessor:
    tokenizer = train_eir_tokenizer(REPORTS, tmp_path_factory.mktemp("tokenizer"), vocab_size=300)
    return EIRProcessor(EIRImageProcessor(size=64), tokenizer, max_history_length=16, max_report_length=24)


def tiny_model(processor: EIRProcessor) -> EIRForReportGeneration:
    tokenizer = processor.tokenizer
    config = EIRConfig(
        vision_config=TINY_VISION, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=len(tokenizer),
        num_hidden_layers=1, history_num_layers=1, knowledge_graph_num_layers=1, fusion_num_layers=1, image_size=64,
        max_entities_per_report=3, max_entity_length=4, max_position_embeddings=64, dropout=0.1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        unk_token_id=tokenizer.unk_token_id,
    )
    torch.manual_seed(0)
    return EIRForReportGeneration(config)


def test_cache_reuses_stored_features(tmp_path, processor, image_files):
    backbone = tiny_model(processor).encoder.image_encoder.backbone
    cache = BackboneFeatureCache(backbone, processor.image_processor, tmp_path / "cache")
    assert cache.precompute(image_files) == 5
    assert len(list(cache.folder.glob("*.safetensors"))) == 5

    again = BackboneFeatureCache(backbone, processor.image_processor, tmp_path / "cache")
    assert again.folder == cache.folder
    assert again.precompute(image_files) == 0
    torch.testing.assert_close(again.get(image_files[0]), cache.get(image_files[0]))


def test_cache_invalidated_by_backbone_weights(tmp_path, processor, image_files):
    backbone = tiny_model(processor).encoder.image_encoder.backbone
    first = BackboneFeatureCache(backbone, processor.image_processor, tmp_path / "cache")
    first.precompute(image_files)
    before = first.get(image_files[0]).clone()

    with torch.no_grad():
        backbone.embedder.embedder.convolution.weight.mul_(2.0)
    changed = BackboneFeatureCache(backbone, processor.image_processor, tmp_path / "cache")

    assert changed.fingerprint != first.fingerprint
    assert changed.folder != first.folder
    assert changed.precompute(image_files) == 5
    assert not torch.allclose(changed.get(image_files[0]), before)


def test_cache_invalidated_by_batch_norm_statistics(tmp_path, processor, image_files):
    backbone = tiny_model(processor).encoder.image_encoder.backbone
    first = BackboneFeatureCache(backbone, processor.image_processor, tmp_path / "cache")
    with torch.no_grad():
        backbone.embedder.embedder.normalization.running_mean.add_(0.5)
    assert BackboneFeatureCache(backbone, processor.image_processor, tmp_path / "cache").fingerprint != first.fingerprint


@pytest.mark.parametrize("change", [{"size": 48}, {"resize_mode": "stretch"}, {"image_mean": [0.5] * 3}])
def test_cache_invalidated_by_preprocessing(tmp_path, processor, image_files, change):
    backbone = tiny_model(processor).encoder.image_encoder.backbone
    first = BackboneFeatureCache(backbone, processor.image_processor, tmp_path / "cache")
    first.precompute(image_files)
    other_processor = EIRImageProcessor(**{"size": 64, **change})
    second = BackboneFeatureCache(backbone, other_processor, tmp_path / "cache")
    assert second.folder != first.folder
    assert second.precompute(image_files) == 5


def test_cache_invalidated_by_file_change(tmp_path, processor, image_files):
    backbone = tiny_model(processor).encoder.image_encoder.backbone
    cache = BackboneFeatureCache(backbone, processor.image_processor, tmp_path / "cache", keep_in_memory=False)
    cache.precompute(image_files)
    before = cache.get(image_files[0]).clone()

    write_image(image_files[0], seed=99)
    stat = image_files[0].stat()
    os.utime(image_files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    assert cache.precompute(image_files) == 1
    assert not torch.allclose(cache.get(image_files[0]), before)


def test_unreadable_image_is_masked(tmp_path, processor, image_files):
    broken = tmp_path / "images" / "broken.png"
    broken.write_bytes(b"not a png")
    backbone = tiny_model(processor).encoder.image_encoder.backbone
    cache = BackboneFeatureCache(backbone, processor.image_processor, tmp_path / "cache")
    assert cache.precompute([*image_files, broken]) == 5
    assert cache.get(broken) is None

    features, mask = cache.study_features([broken, image_files[1]])
    assert mask.tolist() == [0, 1]
    assert torch.count_nonzero(features[0]) == 0
    assert cache.study_features([broken]) is None


def study_records(image_files: list[Path]) -> list[dict]:
    return [
        {"study_id": "s1", "patient_id": "p1", "image_paths": [str(image_files[0]), str(image_files[1])],
         "history": "Fever and cough.", "report": REPORTS[0]},
        {"study_id": "s2", "patient_id": "p2", "image_paths": [str(image_files[2])],
         "history": "Shortness of breath.", "report": REPORTS[1]},
        {"study_id": "s3", "patient_id": "p3", "image_paths": [str(image_files[3]), str(image_files[4])],
         "history": "", "report": REPORTS[2]},
    ]


def test_cached_features_give_same_loss_as_pixels(tmp_path, processor, image_files):
    model = tiny_model(processor)
    freeze_backbone(model.encoder.image_encoder.backbone)
    cached_model = copy.deepcopy(model)
    records = study_records(image_files)
    collator = StudyCollator(processor)

    cache = BackboneFeatureCache(cached_model.encoder.image_encoder.backbone, processor.image_processor, tmp_path / "cache")
    cache.precompute([path for record in records for path in record["image_paths"]])
    pixel_batch = collator([StudyDataset(records, processor)[i] for i in range(3)])
    feature_batch = collator([StudyDataset(records, processor, feature_cache=cache)[i] for i in range(3)])

    assert "pixel_values" not in feature_batch
    assert feature_batch["backbone_features"].shape[:2] == (3, 2)
    assert torch.equal(feature_batch["pixel_mask"], pixel_batch["pixel_mask"])
    assert torch.equal(feature_batch["labels"], pixel_batch["labels"])

    # Two training steps each, dropout on, eval-mode batch norm in the frozen backbone.
    losses = {}
    for name, network, batch in (("pixels", model, pixel_batch), ("features", cached_model, feature_batch)):
        optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-3)
        network.train()
        freeze_backbone(network.encoder.image_encoder.backbone)
        torch.manual_seed(1)
        losses[name] = []
        for _ in range(2):
            loss = network(**model_inputs(batch)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[name].append(loss.item())

    assert losses["features"] == pytest.approx(losses["pixels"], rel=1e-5, abs=1e-6)
    assert losses["features"][1] != losses["features"][0]
    for (name, parameter), (_, other) in zip(model.named_parameters(), cached_model.named_parameters()):
        torch.testing.assert_close(parameter, other, rtol=1e-4, atol=1e-5, msg=name)

    # The retrieval embedding agrees too.
    model.eval(), cached_model.eval()
    torch.testing.assert_close(
        cached_model.encode_images(None, feature_batch["pixel_mask"], backbone_features=feature_batch["backbone_features"]),
        model.encode_images(pixel_batch["pixel_values"], pixel_batch["pixel_mask"]),
        rtol=1e-5, atol=1e-5,
    )


def test_forward_needs_pixels_or_features(processor):
    model = tiny_model(processor)
    with pytest.raises(ValueError, match="backbone_features"):
        model(labels=torch.ones(1, 3, dtype=torch.long))
