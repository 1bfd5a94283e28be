"""C2L pre-training: loss terms, EMA teacher, queue, augmentation, the script on files and on real radiographs."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import ResNetConfig

from configuration_eir import EIRConfig
from eir.backbones import load_backbone_weights
from eir.c2l import (
    AugmentationSettings,
    C2LModel,
    RadiographAugmentation,
    RadiographDataset,
    build_backbone_config,
    c2l_loss,
    find_radiographs,
    info_nce,
    step_decay_factor,
)
from eir.recipes import load_recipe
from modeling_eir import EIRForReportGeneration

REPOSITORY = Path(__file__).resolve().parents[1]
TINY = ResNetConfig(layer_type="basic", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])


def load_script():
    spec = importlib.util.spec_from_file_location("pretrain_c2l", REPOSITORY / "scripts" / "pretrain_c2l.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pretrain_c2l"] = module
    spec.loader.exec_module(module)
    return module


def write_dicom(path: Path, pixels: np.ndarray) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.SamplesPerPixel, dataset.PhotometricInterpretation = "DX", 1, "MONOCHROME2"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
    dataset.PixelData = pixels.astype("<u2").tobytes()
    dataset.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).Rows == pixels.shape[0]
    return path


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    """Six readable radiograph files (PNG, JPEG, DICOM, in sub-folders) and one corrupt PNG."""
    folder = tmp_path / "radiographs"
    (folder / "nested").mkdir(parents=True)
    generator = np.random.default_rng(0)
    for index in range(4):
        pixels = generator.integers(0, 256, size=(60 + 4 * index, 72), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / ("nested" if index % 2 else ".") / f"image{index}.png")
    Image.fromarray(generator.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(folder / "colour.jpg")
    write_dicom(folder / "nested" / "scan.dcm", generator.integers(0, 4096, size=(70, 66)))
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    (folder / "notes.txt").write_text("not an image")
    return folder


# ---------------------------------------------------------------------------------------------
# Loss, teacher, queue
# ---------------------------------------------------------------------------------------------


def test_info_nce_matches_definition():
    generator = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(3, 4, generator=generator), dim=1)
    positives = F.normalize(torch.randn(3, 4, generator=generator), dim=1)
    queue = F.normalize(torch.randn(5, 4, generator=generator), dim=1)
    expected = 0.0
    for query, positive in zip(queries, positives):
        logits = torch.cat([(query @ positive)[None], queue @ query]) / 0.2
        expected += -torch.log_softmax(logits, dim=0)[0] / 3
    torch.testing.assert_close(info_nce(queries, positives, queue, 0.2), expected)


def test_c2l_loss_weights_the_three_terms():
    generator = torch.Generator().manual_seed(1)
    queries = F.normalize(torch.randn(4, 8, generator=generator), dim=1)
    keys = F.normalize(torch.randn(4, 8, generator=generator), dim=1)
    queue = F.normalize(torch.randn(6, 8, generator=generator), dim=1)
    permutation = torch.tensor([2, 3, 0, 1])

    for mixup_lambda in (0.5, 0.8):
        loss, terms = c2l_loss(queries, keys, permutation, mixup_lambda, queue, 0.07)
        mixed = F.normalize(mixup_lambda * keys + (1 - mixup_lambda) * keys[permutation], dim=1)
        assert terms["mix"] == pytest.approx(float(info_nce(queries, mixed, queue, 0.07)), rel=1e-5)
        assert terms["a"] == pytest.approx(float(info_nce(queries, keys, queue, 0.07)), rel=1e-5)
        assert terms["b"] == pytest.approx(float(info_nce(queries, keys[permutation], queue, 0.07)), rel=1e-5)
        expected = (terms["mix"] + 2 * mixup_lambda * terms["a"] + 2 * (1 - mixup_lambda) * terms["b"]) / 3
        assert float(loss) == pytest.approx(expected, rel=1e-5)
    loss, terms = c2l_loss(queries, keys, permutation, 0.5, queue, 0.07)
    assert float(loss) == pytest.approx(sum(terms.values()) / 3, rel=1e-5)


def test_step_gradients_only_reach_student():
    torch.manual_seed(0)
    model = C2LModel(TINY, embedding_size=16, queue_size=10)
    output = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    assert torch.isfinite(output.loss)
    assert 0.0 <= output.mixup_lambda <= 1.0
    assert output.keys.shape == (4, 16)
    torch.testing.assert_close(output.keys.norm(dim=1), torch.ones(4))
    output.loss.backward()
    assert all(parameter.grad is None for parameter in model.teacher.parameters())
    assert all(parameter.grad is not None for parameter in model.student.parameters())


def test_teacher_update_is_ema():
    model = C2LModel(TINY, queue_size=4, momentum=0.9)
    with torch.no_grad():
        for parameter in model.student.parameters():
            parameter.add_(1.0)
    before = [parameter.clone() for parameter in model.teacher.parameters()]
    model.update_teacher()
    for old, new, student in zip(before, model.teacher.parameters(), model.student.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * student)


def test_queue_wraps_around():
    model = C2LModel(TINY, embedding_size=2, queue_size=5)
    model.enqueue(torch.full((3, 2), 1.0))
    model.enqueue(torch.full((4, 2), 2.0))
    assert int(model.queue_pointer) == 2
    assert model.queue[:, 0].tolist() == [2.0, 2.0, 1.0, 2.0, 2.0]


def test_teacher_keys_come_back_in_batch_order():
    torch.manual_seed(0)
    model = C2LModel(TINY, queue_size=4, teacher_bn_splits=2)
    model.teacher.eval()  # running statistics: sub-batches then give the same keys as one batch
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model._teacher_keys(images), model.teacher(images))


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="momentum"):
        C2LModel(TINY, momentum=1.0)
    with pytest.raises(ValueError, match="backbone"):
        build_backbone_config("resnet18")


def test_step_decay_at_60_and_80_percent():
    factors = [step_decay_factor(epoch, 10, [0.6, 0.8], 0.1) for epoch in range(10)]
    assert factors[:6] == [1.0] * 6
    assert factors[6:8] == pytest.approx([0.1, 0.1])
    assert factors[8:] == pytest.approx([0.01, 0.01])
    assert step_decay_factor(0, 1, [0.6, 0.8], 0.1) == 1.0


def test_small_backbone_matches_quickstart_recipe():
    vision = load_recipe("quickstart_covid").model["vision_config"]
    small = build_backbone_config("resnet-small")
    for key in ("layer_type", "embedding_size", "hidden_sizes", "depths", "num_channels"):
        assert getattr(small, key) == vision[key], key


# ---------------------------------------------------------------------------------------------
# Augmentation and data
# ---------------------------------------------------------------------------------------------


def test_augmentation_shape_and_no_flip_by_default():
    gray = np.zeros((50, 50), dtype=np.float32)
    gray[:, :10] = 1.0  # bright band on the left
    identity = AugmentationSettings(
        image_size=50, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), max_rotation=0.0, brightness=0.0, contrast=0.0,
    )
    augment = RadiographAugmentation(identity, random.Random(0))
    for _ in range(8):
        output = augment(gray)
        assert output.shape == (3, 50, 50)
        assert output.dtype == torch.float32
        assert output[0, :, :5].mean() > output[0, :, -5:].mean()

    flipping = RadiographAugmentation(AugmentationSettings(**{**identity.__dict__, "horizontal_flip": True}), random.Random(0))
    outputs = [flipping(gray) for _ in range(16)]
    assert any(output[0, :, -5:].mean() > output[0, :, :5].mean() for output in outputs)


def test_augmentation_is_random_and_bounded():
    gray = np.random.default_rng(0).random((120, 90), dtype=np.float32)
    augment = RadiographAugmentation(AugmentationSettings(image_size=64, num_channels=1), random.Random(1))
    first, second = augment(gray), augment(gray)
    assert first.shape == (1, 64, 64)
    assert not torch.equal(first, second)
    assert torch.isfinite(first).all()


def test_dataset_finds_and_skips(image_folder):
    paths = find_radiographs(image_folder)
    assert sorted(path.name for path in paths) == ["broken.png", "colour.jpg", "image0.png", "image1.png", "image2.png",
                                                   "image3.png", "scan.dcm"]
    augment = RadiographAugmentation(AugmentationSettings(image_size=32))
    dataset = RadiographDataset(paths, augment)
    assert len(dataset) == 6
    assert [Path(path).name for path in dataset.skipped] == ["broken.png"]
    student, teacher = dataset[0]
    assert student.shape == (3, 32, 32)
    assert teacher.shape == (3, 32, 32)

    lazy = RadiographDataset(paths, augment, preload=False)
    assert lazy[paths.index(image_folder / "broken.png")] is None


# ---------------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------------


def test_help_names_units(capsys):
    script = load_script()
    with pytest.raises(SystemExit):
        script.main(["--help"])
    text = capsys.readouterr().out
    for fragment in ("--resume-from", "in pixels", "in degrees", "Default: 0.999", "laterality", "--teacher-bn-splits"):
        assert fragment in text, fragment


def test_script_on_folder_skips_unreadable(tmp_path, image_folder):
    script = load_script()
    output_dir = tmp_path / "run"
    assert script.main([
        "--image-dir", str(image_folder), "--backbone", "resnet-small", "--image-size", "32", "--epochs", "1",
        "--batch-size", "3", "--queue-size", "8", "--output-dir", str(output_dir), "--log-level", "WARNING",
    ]) == 0
    summary = json.loads((output_dir / "pretraining_summary.json").read_text())
    assert summary["images"] == 6
    assert [Path(path).name for path in summary["skipped_images"]] == ["broken.png"]
    assert math.isfinite(summary["final_loss"])
    arguments = json.loads((output_dir / "args.json").read_text())
    assert arguments["queue_size"] == 8
    assert arguments["horizontal_flip"] is False


def test_real_images_pretrain_resume_and_load(tmp_path, data_root):
    """Two epochs on six real training-split COVID-19 radiographs, one more after a resume, then into EIR."""
    script = load_script()
    output_dir = tmp_path / "c2l"
    options = [
        "--dataset", "covid_chestxray", "--data-dir", str(data_root), "--limit-images", "6", "--backbone", "resnet-small",
        "--image-size", "64", "--batch-size", "3", "--queue-size", "8", "--output-dir", str(output_dir),
        "--log-level", "WARNING",
    ]
    assert script.main([*options, "--epochs", "2"]) == 0
    first = json.loads((output_dir / "pretraining_summary.json").read_text())
    assert [record["epoch"] for record in first["history"]] == [1, 2]
    assert first["images"] == 6
    assert (output_dir / "checkpoints" / "epoch-2" / "c2l_state.json").is_file()
    assert json.loads((output_dir / "args.json").read_text())["split"] == "train"

    assert script.main([*options, "--epochs", "3", "--resume-from", "latest"]) == 0
    resumed = json.loads((output_dir / "pretraining_summary.json").read_text())
    assert [record["epoch"] for record in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == first["history"][:2]
    assert resumed["global_step"] == 3 * 2
    # Epoch 3 of 3 is past the 60% milestone: rate x0.1.
    assert resumed["history"][2]["learning_rate"] == pytest.approx(0.003)

    backbone_dir = output_dir / "backbone"
    for name in ("config.json", "model.safetensors", "c2l_checkpoint.safetensors"):
        assert (backbone_dir / name).is_file(), name
    recipe = load_recipe("quickstart_covid")
    model = EIRForReportGeneration(EIRConfig(**{**recipe.model, "vision_weights": str(backbone_dir)}))
    report = load_backbone_weights(model.encoder.image_encoder.backbone, backbone_dir)
    assert report.missing_keys == []
    assert report.unexpected_keys == []
    teacher = load_backbone_weights(model.encoder.image_encoder.backbone, backbone_dir / "c2l_checkpoint.safetensors",
                                    c2l_branch="teacher")
    assert teacher.source_format == "c2l"
    assert teacher.missing_keys == []


def test_split_images_only(data_root):
    """The default pre-training source holds training-split images only, none of validation or test."""
    from eir.data import load_study_dataset

    script = load_script()
    arguments = script.build_parser().parse_args(["--dataset", "covid_chestxray", "--data-dir", str(data_root)])
    paths = set(script.collect_image_paths(arguments))
    splits = load_study_dataset("covid_chestxray", data_dir=data_root)
    held_out = {path for split in ("validation", "test") for record in splits[split] for path in record["image_paths"]}
    assert paths
    assert not paths & held_out
