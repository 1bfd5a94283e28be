"""Tests of the radiograph loader and `EIRImageProcessor` on files written to tmp_path and on real images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, PretrainedConfig

from processing_eir.image_processing_eir import EIRImageProcessor, ImageLoadError, load_radiograph

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

EXIF_ORIENTATION_TAG = 0x0112


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    with_pixel_data: bool = True,
) -> Path:
    """Write a 16-bit unsigned grayscale DICOM file; `pixels` is (H, W) or (frames, H, W)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.Rows = pixels.shape[-2]
    dataset.Columns = pixels.shape[-1]
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    if pixels.ndim == 3:
        dataset.NumberOfFrames = pixels.shape[0]
    if slope is not None:
        dataset.RescaleSlope = slope
        dataset.RescaleIntercept = intercept
    if window is not None:
        dataset.WindowCenter = window[0]
        dataset.WindowWidth = window[1]
    if with_pixel_data:
        dataset.PixelData = pixels.astype("<u2").tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def quadrant_image(height: int = 40, width: int = 80) -> np.ndarray:
    """Return a dark uint8 image whose top-left quarter is bright, to follow rotations."""
    pixels = np.full((height, width), 20, dtype=np.uint8)
    pixels[: height // 2, : width // 2] = 230
    return pixels


# --------------------------------------------------------------------------------------------------
# load_radiograph: PNG and JPEG modes
# --------------------------------------------------------------------------------------------------


def test_png_8bit_gray_scaled_by_255(tmp_path: Path) -> None:
    pixels = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(pixels).save(path)

    gray = load_radiograph(path)

    assert gray.dtype == np.float32
    assert gray.shape == (2, 2)
    np.testing.assert_allclose(gray, pixels / 255.0, atol=1e-6)


def test_png_16bit_scaled_by_65535(tmp_path: Path) -> None:
    pixels = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I")

    gray = load_radiograph(path)

    np.testing.assert_allclose(gray, pixels / 65535.0, atol=1e-6)
    # Dividing by 255 instead would clip everything above 255 to 1.
    assert gray[0, 1] == pytest.approx(1000 / 65535, abs=1e-6)


def test_png_rgb_uses_luma_weights(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)
    pixels[0, 1] = (0, 255, 0)
    pixels[1, 0] = (0, 0, 255)
    pixels[1, 1] = (255, 255, 255)
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels, mode="RGB").save(path)

    gray = load_radiograph(path)

    np.testing.assert_allclose(gray, [[0.299, 0.587], [0.114, 1.0]], atol=1e-5)


def test_png_rgba_composited_on_black(tmp_path: Path) -> None:
    pixels = np.zeros((1, 3, 4), dtype=np.uint8)
    pixels[0, 0] = (255, 255, 255, 255)
    pixels[0, 1] = (255, 255, 255, 0)
    pixels[0, 2] = (200, 200, 200, 102)
    path = tmp_path / "rgba.png"
    Image.fromarray(pixels, mode="RGBA").save(path)

    gray = load_radiograph(path)

    assert gray.shape == (1, 3)
    assert gray[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert gray[0, 1] == pytest.approx(0.0, abs=1e-6)
    assert gray[0, 2] == pytest.approx(200 / 255 * 102 / 255, abs=1e-4)


def test_png_palette_mapped_through_palette(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0] + [0] * (256 * 3 - 9))
    path = tmp_path / "palette.png"
    image.save(path)
    assert Image.open(path).mode == "P"

    gray = load_radiograph(path)

    np.testing.assert_allclose(gray, [[0.0, 1.0, 0.299]], atol=1e-5)


def test_png_gray_alpha_composited(tmp_path: Path) -> None:
    pixels = np.array([[[200, 255], [200, 0]]], dtype=np.uint8)  # (1, 2, LA)
    path = tmp_path / "gray_alpha.png"
    Image.fromarray(pixels, mode="LA").save(path)
    assert Image.open(path).mode == "LA"

    gray = load_radiograph(path)

    np.testing.assert_allclose(gray, [[200 / 255, 0.0]], atol=1e-5)


def test_jpeg_gray_and_rgb(tmp_path: Path) -> None:
    pixels = np.zeros((32, 32), dtype=np.uint8)
    pixels[:, 16:] = 200
    gray_path = tmp_path / "gray.jpg"
    rgb_path = tmp_path / "rgb.jpeg"
    Image.fromarray(pixels).save(gray_path, quality=95)
    Image.fromarray(np.stack([pixels] * 3, axis=-1), mode="RGB").save(rgb_path, quality=95)
    assert Image.open(gray_path).mode == "L"
    assert Image.open(rgb_path).mode == "RGB"

    for path in (gray_path, rgb_path):
        gray = load_radiograph(path)
        assert gray.shape == (32, 32)
        # JPEG is lossy, so compare block means away from the edge.
        assert gray[:, :12].mean() == pytest.approx(0.0, abs=0.03)
        assert gray[:, 20:].mean() == pytest.approx(200 / 255, abs=0.03)


@pytest.mark.parametrize(
    ("orientation", "bright_corner"),
    [(6, "top_right"), (8, "bottom_left")],
)
def test_jpeg_exif_orientation_applied(tmp_path: Path, orientation: int, bright_corner: str) -> None:
    path = tmp_path / f"orientation{orientation}.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    Image.fromarray(quadrant_image(40, 80)).save(path, exif=exif, quality=95)

    gray = load_radiograph(path)

    # Orientation 6 and 8 are quarter turns, so the stored 40x80 image is displayed as 80x40.
    assert gray.shape == (80, 40)
    quarters = {
        "top_left": gray[:40, :20].mean(),
        "top_right": gray[:40, 20:].mean(),
        "bottom_left": gray[40:, :20].mean(),
        "bottom_right": gray[40:, 20:].mean(),
    }
    assert max(quarters, key=quarters.get) == bright_corner
    assert quarters[bright_corner] > 0.8


def test_png_disguised_as_jpg_loads(tmp_path: Path) -> None:
    path = tmp_path / "actually_png.jpg"
    Image.fromarray(np.full((4, 4), 128, dtype=np.uint8)).save(path, format="PNG")

    gray = load_radiograph(path)

    np.testing.assert_allclose(gray, 128 / 255, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# load_radiograph: DICOM
# --------------------------------------------------------------------------------------------------


def test_dicom_monochrome2_min_max_window(tmp_path: Path) -> None:
    pixels = np.array([[0, 100], [200, 400]], dtype=np.uint16)
    path = write_dicom(tmp_path / "mono2.dcm", pixels)

    gray = load_radiograph(path)

    assert gray.dtype == np.float32
    np.testing.assert_allclose(gray, [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_dicom_monochrome1_inverted(tmp_path: Path) -> None:
    pixels = np.array([[0, 100], [200, 400]], dtype=np.uint16)
    path = write_dicom(tmp_path / "mono1.dcm", pixels, photometric="MONOCHROME1")

    gray = load_radiograph(path)

    np.testing.assert_allclose(gray, [[1.0, 0.75], [0.5, 0.0]], atol=1e-6)


def test_dicom_rescale_applied_before_window(tmp_path: Path) -> None:
    # Stored 0..1000 with slope 2 and intercept -1000 gives modality values -1000..1000. The LINEAR
    # window (center 0.5, width 1001) spans -500..500, which is stored 250..750. Without the rescale,
    # stored 250 and 500 would map to 0.75 and 1.0 instead of 0.0 and 0.5.
    pixels = np.array([[0, 250, 500], [750, 1000, 375]], dtype=np.uint16)
    path = write_dicom(tmp_path / "rescaled.dcm", pixels, slope=2.0, intercept=-1000.0, window=(0.5, 1001.0))

    gray = load_radiograph(path)

    np.testing.assert_allclose(gray, [[0.0, 0.0, 0.5], [1.0, 1.0, 0.25]], atol=1e-3)


def test_dicom_rescale_window_monochrome1(tmp_path: Path) -> None:
    pixels = np.array([[250, 500, 750]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "rescaled_mono1.dcm",
        pixels,
        photometric="MONOCHROME1",
        slope=2.0,
        intercept=-1000.0,
        window=(0.5, 1001.0),
    )

    gray = load_radiograph(path)

    np.testing.assert_allclose(gray, [[1.0, 0.5, 0.0]], atol=1e-3)


def test_dicom_found_by_magic_without_suffix(tmp_path: Path) -> None:
    pixels = np.array([[0, 10]], dtype=np.uint16)
    path = write_dicom(tmp_path / "radiograph.img", pixels)

    gray = load_radiograph(path)

    np.testing.assert_allclose(gray, [[0.0, 1.0]], atol=1e-6)


def test_dicom_multiframe_uses_first_frame(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frames = np.stack([np.array([[0, 100]], dtype=np.uint16), np.array([[100, 0]], dtype=np.uint16)])
    path = write_dicom(tmp_path / "frames.dcm", frames)

    with caplog.at_level(logging.WARNING):
        gray = load_radiograph(path)

    np.testing.assert_allclose(gray, [[0.0, 1.0]], atol=1e-6)
    assert "first frame" in caplog.text
    assert "frames.dcm" in caplog.text


def test_dicom_without_pixel_data_raises(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "header_only.dcm", np.zeros((2, 2), dtype=np.uint16), with_pixel_data=False)

    with pytest.raises(ImageLoadError, match="header_only.dcm") as error:
        load_radiograph(path)

    assert "no pixel data" in str(error.value)


# --------------------------------------------------------------------------------------------------
# load_radiograph: in-memory inputs and errors
# --------------------------------------------------------------------------------------------------


def test_in_memory_inputs() -> None:
    pixels = np.array([[0, 255]], dtype=np.uint8)

    from_pil = load_radiograph(Image.fromarray(pixels))
    from_numpy = load_radiograph(pixels)
    from_uint16 = load_radiograph(pixels.astype(np.uint16) * 257)
    from_tensor_chw = load_radiograph(torch.tensor([[[0.0, 1.0]]] * 3))  # (3, 1, 2) RGB in [0, 1]
    from_unbounded = load_radiograph(np.array([[-1000.0, 1000.0]]))

    for gray in (from_pil, from_numpy, from_uint16, from_tensor_chw, from_unbounded):
        assert gray.dtype == np.float32
        np.testing.assert_allclose(gray, [[0.0, 1.0]], atol=1e-5)


def test_four_dimensional_array_rejected() -> None:
    with pytest.raises(ImageLoadError, match="2-D or 3-D"):
        load_radiograph(np.zeros((2, 3, 8, 8), dtype=np.float32))


def test_missing_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "absent.png"

    with pytest.raises(ImageLoadError, match="absent.png") as error:
        load_radiograph(path)

    assert "not found" in str(error.value)


def test_text_file_named_png_raises(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("Findings: no acute cardiopulmonary process.\n")

    with pytest.raises(ImageLoadError, match="notes.png") as error:
        load_radiograph(path)

    assert "not an image format" in str(error.value)


def test_truncated_png_raises(tmp_path: Path) -> None:
    path = tmp_path / "truncated.png"
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:300])

    with pytest.raises(ImageLoadError, match="truncated.png") as error:
        load_radiograph(path)

    assert "corrupt" in str(error.value)


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_corrupt_dicom_raises(tmp_path: Path) -> None:
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 20)

    with pytest.raises(ImageLoadError, match="broken.dcm"):
        load_radiograph(path)


# --------------------------------------------------------------------------------------------------
# EIRImageProcessor
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("num_channels", [1, 3])
def test_processor_output_shape_and_dtype(size: int, num_channels: int) -> None:
    processor = EIRImageProcessor(size=size, num_channels=num_channels)

    output = processor(np.random.default_rng(0).random((50, 70)).astype(np.float32))

    assert output["pixel_values"].shape == (1, 1, num_channels, size, size)
    assert output["pixel_values"].dtype == torch.float32
    assert output["pixel_mask"].shape == (1, 1)
    assert output["pixel_mask"].dtype == torch.int64
    assert torch.isfinite(output["pixel_values"]).all()


def test_processor_normalizes_per_channel() -> None:
    processor = EIRImageProcessor(size=8, image_mean=[0.5, 0.25, 0.0], image_std=[0.5, 0.25, 2.0])

    output = processor(np.ones((8, 8), dtype=np.float32))

    pixel_values = output["pixel_values"][0, 0]
    torch.testing.assert_close(pixel_values[0], torch.full((8, 8), 1.0))
    torch.testing.assert_close(pixel_values[1], torch.full((8, 8), 3.0))
    torch.testing.assert_close(pixel_values[2], torch.full((8, 8), 0.5))


def test_pad_mode_keeps_aspect_ratio() -> None:
    wide = np.ones((40, 80), dtype=np.float32)
    wide[0, 0] = 0.0  # the padding value is the image minimum
    processor = EIRImageProcessor(size=64, resize_mode="pad", do_normalize=False, num_channels=1)

    image = processor(wide)["pixel_values"][0, 0, 0]  # (64, 64)

    # 40x80 scaled to 32x64 and centred: rows 0-15 and 48-63 are padding.
    assert torch.all(image[:16] == 0.0)
    assert torch.all(image[48:] == 0.0)
    assert image[17:47].mean() > 0.95


def test_stretch_mode_fills_square() -> None:
    wide = np.ones((40, 80), dtype=np.float32)
    wide[0, 0] = 0.0
    processor = EIRImageProcessor(size=64, resize_mode="stretch", do_normalize=False, num_channels=1)

    image = processor(wide)["pixel_values"][0, 0, 0]

    assert image[:16, 8:].mean() > 0.95
    assert image[48:].mean() > 0.95


def test_flat_list_is_one_study() -> None:
    processor = EIRImageProcessor(size=16)
    views = [np.zeros((8, 8), dtype=np.uint8), np.full((8, 8), 255, dtype=np.uint8)]

    output = processor(views)

    assert output["pixel_values"].shape == (1, 2, 3, 16, 16)
    assert output["pixel_mask"].tolist() == [[1, 1]]


def test_batch_mask_for_one_and_two_views(tmp_path: Path) -> None:
    frontal = tmp_path / "frontal.png"
    lateral = tmp_path / "lateral.png"
    Image.fromarray(quadrant_image()).save(frontal)
    Image.fromarray(quadrant_image().T.copy()).save(lateral)
    processor = EIRImageProcessor(size=32)

    output = processor([[frontal], [frontal, lateral]])

    assert output["pixel_values"].shape == (2, 2, 3, 32, 32)
    assert output["pixel_mask"].tolist() == [[1, 0], [1, 1]]
    assert torch.all(output["pixel_values"][0, 1] == 0)
    assert not torch.equal(output["pixel_values"][1, 0], output["pixel_values"][1, 1])


def test_extra_views_dropped_with_info(caplog: pytest.LogCaptureFixture) -> None:
    processor = EIRImageProcessor(size=16, max_views=2)
    views = [np.full((8, 8), value, dtype=np.uint8) for value in (0, 100, 200)]

    with caplog.at_level(logging.INFO, logger="processing_eir.image_processing_eir"):
        output = processor([views, views[:1]], return_tensors="np")

    assert output["pixel_values"].shape == (2, 2, 3, 16, 16)
    assert isinstance(output["pixel_values"], np.ndarray)
    assert output["pixel_mask"].tolist() == [[1, 1], [1, 0]]
    dropped_records = [record for record in caplog.records if "max_views" in record.getMessage()]
    assert len(dropped_records) == 1


def test_skip_masks_broken_view(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = tmp_path / "good.png"
    broken = tmp_path / "broken.png"
    Image.fromarray(quadrant_image()).save(good)
    broken.write_bytes(b"not an image")
    processor = EIRImageProcessor(size=16)

    with caplog.at_level(logging.WARNING):
        output = processor([[good, broken], [broken]], errors="skip")

    assert output["pixel_mask"].tolist() == [[1, 0], [0, 0]]
    assert torch.all(output["pixel_values"][0, 1] == 0)
    assert torch.all(output["pixel_values"][1] == 0)
    assert output["pixel_values"][0, 0].abs().sum() > 0
    assert "broken.png" in caplog.text

    with pytest.raises(ImageLoadError, match="broken.png"):
        processor([[good, broken]], errors="raise")


def test_invalid_options_rejected() -> None:
    with pytest.raises(ValueError, match="resize_mode"):
        EIRImageProcessor(resize_mode="crop")
    with pytest.raises(ValueError, match="num_channels"):
        EIRImageProcessor(num_channels=2)
    with pytest.raises(ValueError, match="image_mean"):
        EIRImageProcessor(num_channels=1, image_mean=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="errors"):
        EIRImageProcessor()(np.zeros((4, 4)), errors="ignore")
    with pytest.raises(ValueError, match="mixes"):
        EIRImageProcessor()([np.zeros((4, 4)), [np.zeros((4, 4))]])


def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    options = {
        "size": 96,
        "resize_mode": "stretch",
        "do_normalize": False,
        "image_mean": [0.4],
        "image_std": [0.3],
        "num_channels": 1,
        "max_views": 3,
        "resample": 3,
    }
    processor = EIRImageProcessor(**options)

    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    reloaded = EIRImageProcessor.from_pretrained(tmp_path)

    for key, value in options.items():
        assert saved[key] == value, key
        assert getattr(reloaded, key) == value, key
    assert saved["image_processor_type"] == "EIRImageProcessor"
    assert reloaded.model_input_names == ["pixel_values", "pixel_mask"]


def test_auto_image_processor_after_register(tmp_path: Path) -> None:
    class RoundTripConfig(PretrainedConfig):
        model_type = "eir-image-processor-round-trip"

    AutoConfig.register(RoundTripConfig.model_type, RoundTripConfig, exist_ok=True)
    AutoImageProcessor.register(RoundTripConfig, image_processor_classes={"pil": EIRImageProcessor}, exist_ok=True)
    RoundTripConfig().save_pretrained(tmp_path)
    EIRImageProcessor(size=48, max_views=4).save_pretrained(tmp_path)

    loaded = AutoImageProcessor.from_pretrained(tmp_path)

    assert isinstance(loaded, EIRImageProcessor)
    assert loaded.size == 48
    assert loaded.max_views == 4


# --------------------------------------------------------------------------------------------------
# Real images from the COVID-19 image data collection
# --------------------------------------------------------------------------------------------------

# (file name, format, mode) as stored in the collection. 000001-12.jpg is a PNG despite its suffix.
REAL_IMAGES = [
    ("000001-12.jpg", "PNG", "RGBA"),
    ("pneumocystis-pneumonia-2-PA.png", "PNG", "RGBA"),
    ("071d06607edf81d70c940e043bce34_jumbo.jpeg", "JPEG", "L"),
    ("000001-2.jpg", "JPEG", "RGB"),
    ("40779_2020_233_Fig2_HTML-a.png", "PNG", "RGB"),
]


def test_real_covid_images() -> None:
    from eir.paths import default_data_dir

    image_dir = default_data_dir() / "covid-chestxray" / "images"
    if not image_dir.is_dir():
        pytest.skip(f"COVID-19 image data collection not found at {image_dir}; set EIR_DATA_DIR.")
    paths = [image_dir / name for name, _, _ in REAL_IMAGES]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        pytest.skip(f"images missing from {image_dir}: {missing}")

    for path, (_, image_format, mode) in zip(paths, REAL_IMAGES):
        with Image.open(path) as image:
            assert (image.format, image.mode) == (image_format, mode), path.name
        gray = load_radiograph(path)
        assert gray.ndim == 2, path.name
        assert gray.min() >= 0.0, path.name
        assert gray.max() <= 1.0, path.name
        assert gray.std() > 0.05, f"{path.name} looks blank"
        with Image.open(path) as image:
            reference = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        if mode == "RGBA":
            alpha = np.asarray(Image.open(path))[..., 3]
            opaque = alpha == 255
            np.testing.assert_allclose(gray[opaque], reference[opaque], atol=1 / 255 + 1e-4)
            assert np.all(gray[alpha == 0] == 0.0)
        else:
            np.testing.assert_allclose(gray, reference, atol=1 / 255 + 1e-4)

    processor = EIRImageProcessor(size=64, max_views=2)
    output = processor([paths[:2], paths[2:4], paths[4:]])

    assert output["pixel_values"].shape == (3, 2, 3, 64, 64)
    assert output["pixel_mask"].tolist() == [[1, 1], [1, 1], [1, 0]]
    assert torch.isfinite(output["pixel_values"]).all()
