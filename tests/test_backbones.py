"""Offline backbone weight loading: C2L, MoCo, torchvision and Hugging Face sources, channel adaptation, safety."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import ResNetConfig, ResNetForImageClassification, ResNetModel

from eir.backbones import (
    FIRST_CONVOLUTION_KEY,
    BackboneWeightsError,
    adapt_first_convolution,
    load_backbone_weights,
    torchvision_to_transformers,
)
from eir.c2l import C2LModel

TINY_BASIC = {"layer_type": "basic", "embedding_size": 8, "hidden_sizes": [8, 16, 24, 32], "depths": [1, 2, 1, 1]}
TINY_BOTTLENECK = {"layer_type": "bottleneck", "embedding_size": 8, "hidden_sizes": [16, 24, 32, 40], "depths": [2, 1, 1, 1]}


def tiny_backbone(num_channels: int = 3, **overrides) -> ResNetModel:
    settings = {**TINY_BASIC, **overrides}
    return ResNetModel(ResNetConfig(num_channels=num_channels, **settings))


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every tensor, batch-norm buffers included, seed-dependent values so a load is visible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model


def to_torchvision_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of the documented mapping, written independently of eir.backbones, to build torchvision-style files."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("embedder.embedder.convolution."):
            new = "conv1." + key.rsplit(".", 1)[1]
        elif key.startswith("embedder.embedder.normalization."):
            new = "bn1." + key.rsplit(".", 1)[1]
        else:
            parts = key.split(".")  # encoder.stages.S.layers.B.(layer.Z|shortcut).(convolution|normalization).P
            stage, block = int(parts[2]) + 1, parts[4]
            if parts[5] == "shortcut":
                index = "0" if parts[6] == "convolution" else "1"
                new = f"layer{stage}.{block}.downsample.{index}.{parts[7]}"
            else:
                number = int(parts[6]) + 1
                kind = "conv" if parts[7] == "convolution" else "bn"
                new = f"layer{stage}.{block}.{kind}{number}.{parts[8]}"
        renamed[new] = value
    renamed["fc.weight"] = torch.randn(10, 4)
    renamed["fc.bias"] = torch.zeros(10)
    return renamed


def assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("config", [TINY_BASIC, TINY_BOTTLENECK], ids=["basic", "bottleneck"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_state_dict_maps_every_key(tmp_path, config, suffix):
    source = randomised(tiny_backbone(**config), seed=1)
    torchvision_state = to_torchvision_names(source.state_dict())
    path = tmp_path / f"resnet{suffix}"
    if suffix == ".pth":
        torch.save(torchvision_state, path)
    else:
        save_file({key: value.contiguous() for key, value in torchvision_state.items()}, str(path))

    target = tiny_backbone(**config)
    report = load_backbone_weights(target, path)

    assert report.source_format == "torchvision"
    assert report.missing_keys == []
    assert report.unexpected_keys == []
    assert report.dropped_keys == ["fc.bias", "fc.weight"]
    assert_same_weights(target, source.state_dict())


def test_mapping_table_covers_downsample():
    state = {"layer2.0.downsample.0.weight": torch.zeros(1), "layer2.0.downsample.1.running_var": torch.zeros(1),
             "layer4.1.conv3.weight": torch.zeros(1), "layer1.0.bn2.bias": torch.zeros(1), "fc.weight": torch.zeros(1)}
    mapped, dropped, unmatched = torchvision_to_transformers(state)
    assert sorted(mapped) == sorted([
        "encoder.stages.1.layers.0.shortcut.convolution.weight",
        "encoder.stages.1.layers.0.shortcut.normalization.running_var",
        "encoder.stages.3.layers.1.layer.2.convolution.weight",
        "encoder.stages.0.layers.0.layer.1.normalization.bias",
    ])
    assert dropped == ["fc.weight"]
    assert unmatched == []


@pytest.mark.parametrize("branch", ["student", "teacher"])
def test_c2l_checkpoint_with_module_prefix(tmp_path, branch):
    c2l = C2LModel(ResNetConfig(**TINY_BASIC), queue_size=8, embedding_size=4)
    randomised(c2l.teacher, seed=2)
    randomised(c2l.student, seed=3)
    state = {f"module.{key}": value.contiguous() for key, value in c2l.state_dict().items()}
    path = tmp_path / "c2l.safetensors"
    save_file(state, str(path))

    target = tiny_backbone()
    report = load_backbone_weights(target, path, c2l_branch=branch)

    assert report.source_format == "c2l"
    assert report.missing_keys == []
    assert report.unexpected_keys == []
    assert any(key.startswith(f"{branch}.head.") for key in report.dropped_keys)
    assert "queue" in report.dropped_keys
    assert_same_weights(target, getattr(c2l, branch).backbone.state_dict())


def test_moco_layout_checkpoint(tmp_path):
    student = randomised(tiny_backbone(), seed=4)
    teacher = randomised(tiny_backbone(), seed=5)
    state = {f"module.encoder_q.{key}": value for key, value in to_torchvision_names(student.state_dict()).items()}
    state.update({f"module.encoder_k.{key}": value for key, value in to_torchvision_names(teacher.state_dict()).items()})
    path = tmp_path / "moco.pth"
    torch.save({"state_dict": state, "epoch": 200}, path)

    target = tiny_backbone()
    report = load_backbone_weights(target, path, c2l_branch="teacher")

    assert report.source_format == "moco"
    assert report.missing_keys == []
    assert report.unexpected_keys == []
    assert_same_weights(target, teacher.state_dict())


def test_hf_backbone_folder(tmp_path):
    source = randomised(tiny_backbone(), seed=6)
    source.save_pretrained(tmp_path / "backbone")
    target = tiny_backbone()
    report = load_backbone_weights(target, tmp_path / "backbone")
    assert report.source_format == "transformers"
    assert report.missing_keys == []
    assert report.unexpected_keys == []
    assert_same_weights(target, source.state_dict())


def test_hf_classification_folder_strips_prefix(tmp_path):
    classifier = ResNetForImageClassification(ResNetConfig(num_labels=3, **TINY_BASIC))
    randomised(classifier.resnet, seed=7)
    classifier.save_pretrained(tmp_path / "classifier")
    target = tiny_backbone()
    report = load_backbone_weights(target, tmp_path / "classifier")
    assert report.source_format == "transformers-classification"
    assert report.missing_keys == []
    assert report.unexpected_keys == []
    assert report.dropped_keys
    assert all(key.startswith("classifier.") for key in report.dropped_keys)
    assert_same_weights(target, classifier.resnet.state_dict())


def test_rgb_weights_into_gray_model_sum_kernels(tmp_path):
    source = randomised(tiny_backbone(num_channels=3), seed=8)
    source.save_pretrained(tmp_path / "rgb")
    target = tiny_backbone(num_channels=1)
    report = load_backbone_weights(target, tmp_path / "rgb")
    assert report.adapted_keys == [FIRST_CONVOLUTION_KEY]
    expected = source.state_dict()[FIRST_CONVOLUTION_KEY].sum(dim=1, keepdim=True)
    assert torch.equal(target.state_dict()[FIRST_CONVOLUTION_KEY], expected)

    # A gray image repeated on 3 channels gives the same features in both models.
    source.eval(), target.eval()
    gray = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        rgb_features = source(pixel_values=gray.repeat(1, 3, 1, 1)).last_hidden_state
        gray_features = target(pixel_values=gray).last_hidden_state
    torch.testing.assert_close(gray_features, rgb_features, rtol=1e-4, atol=1e-4)


def test_gray_kernel_into_rgb_model():
    weight = torch.randn(4, 1, 3, 3)
    adapted = adapt_first_convolution(weight, 3)
    assert adapted.shape == (4, 3, 3, 3)
    torch.testing.assert_close(adapted.sum(dim=1, keepdim=True), weight)


class _RunsCode:
    """A pickle payload that would create a file when unpickled unsafely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_rejected(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "malicious.pth"
    torch.save({"conv1.weight": _RunsCode(marker)}, path)

    with pytest.raises(BackboneWeightsError, match="weights_only=True"):
        load_backbone_weights(tiny_backbone(), path)
    assert not marker.exists()


def test_shape_mismatch_names_the_fix(tmp_path):
    tiny_backbone(**TINY_BOTTLENECK).save_pretrained(tmp_path / "other")
    with pytest.raises(BackboneWeightsError, match="depths and hidden_sizes"):
        load_backbone_weights(tiny_backbone(), tmp_path / "other")


def test_missing_and_unexpected_keys_reported(tmp_path, caplog):
    state = randomised(tiny_backbone(), seed=9).state_dict()
    dropped_key = "encoder.stages.3.layers.0.layer.1.convolution.weight"
    partial = {key: value for key, value in state.items() if key != dropped_key}
    partial["extra.weight"] = torch.zeros(2)
    path = tmp_path / "partial.safetensors"
    save_file(partial, str(path))

    with caplog.at_level(logging.WARNING, logger="eir.backbones"):
        report = load_backbone_weights(tiny_backbone(), path)
    assert report.missing_keys == [dropped_key]
    assert report.unexpected_keys == ["extra.weight"]
    assert dropped_key in caplog.text and "extra.weight" in caplog.text


def test_missing_source_is_reported(tmp_path):
    with pytest.raises(BackboneWeightsError, match=re.escape(str(tmp_path / "absent.pth"))):
        load_backbone_weights(tiny_backbone(), tmp_path / "absent.pth")
