"""Image processor for EIR: loads chest radiographs and batches the views of each study.

A study is one examination with one or more views (for example PA and lateral). The processor turns
image files, PIL images, numpy arrays or torch tensors into `pixel_values` of shape
(batch, views, channels, height, width) plus a `pixel_mask` of shape (batch, views) that marks which
view slots hold a real image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.processing_utils import ImagesKwargs

logger = logging.getLogger(__name__)

ImageSource = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

RESIZE_MODES = ("pad", "stretch")
ERROR_MODES = ("raise", "skip")
DICOM_SUFFIXES = (".dcm", ".dicom")
# A DICOM Part 10 file has a 128-byte preamble followed by these four bytes.
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128

# ITU-R BT.601 luma weights, the same ones PIL uses for `convert("L")`.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Single-channel statistics: the average of the three ImageNet per-channel values, for a
# single-channel encoder whose first convolution was adapted from an ImageNet RGB one.
GRAY_IMAGENET_MEAN = (round(sum(IMAGENET_DEFAULT_MEAN) / 3, 4),)
GRAY_IMAGENET_STD = (round(sum(IMAGENET_DEFAULT_STD) / 3, 4),)

PALETTE_AND_COLOUR_MODES = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageLoadError(ValueError):
    """Error raised when a radiograph cannot be read. The message names the file, the cause and the fix."""


class EIRImageProcessorKwargs(ImagesKwargs, total=False):
    """Options of `EIRImageProcessor` on top of the standard image-processor keyword arguments."""

    resize_mode: str | None
    num_channels: int | None
    max_views: int | None


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _describe(source: Any) -> str:
    """Return a short name of an image source for messages: the path, or the object's type."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"<{type(source).__name__} of shape {tuple(source.shape)}>"
    return f"<{type(source).__name__}>"


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with path.open("rb") as handle:
        handle.seek(DICOM_MAGIC_OFFSET)
        return handle.read(len(DICOM_MAGIC)) == DICOM_MAGIC


def _window_min_max(array: np.ndarray) -> np.ndarray:
    """Map the array's minimum to 0 and its maximum to 1. A constant array becomes all zeros."""
    array = array.astype(np.float64)
    low = float(array.min())
    high = float(array.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.float32)
    return ((array - low) / (high - low)).astype(np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Convert an HxWx3 float array to HxW gray with the BT.601 weights."""
    return rgb[..., :3].astype(np.float32) @ LUMA_WEIGHTS


def _pil_to_gray(image: Image.Image, name: str) -> np.ndarray:
    """Convert a PIL image of any supported mode to float32 HxW in [0, 1], after EXIF orientation."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode

    if mode in PALETTE_AND_COLOUR_MODES:
        # Palette images may carry transparency, which RGBA keeps. The other modes have no alpha.
        has_alpha = mode in ("PA", "La") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode

    if mode == "1":
        return np.asarray(image, dtype=np.float32)
    if mode == "L":
        return np.asarray(image, dtype=np.float32) / 255.0
    if mode == "LA":
        gray_alpha = np.asarray(image, dtype=np.float32) / 255.0
        # Composite on black: a transparent pixel becomes 0.
        return gray_alpha[..., 0] * gray_alpha[..., 1]
    if mode == "RGB":
        return _luminance(np.asarray(image, dtype=np.float32) / 255.0)
    if mode == "RGBA":
        rgba = np.asarray(image, dtype=np.float32) / 255.0
        return _luminance(rgba[..., :3]) * rgba[..., 3]
    if mode in SIXTEEN_BIT_MODES:
        # 16-bit containers are scaled by their full range 0..65535.
        return np.asarray(image).astype(np.float32) / 65535.0
    if mode == "I":
        # Some Pillow versions and formats give 16-bit data as 32-bit "I", so 0..65535 is read as 16-bit.
        values = np.asarray(image).astype(np.int64)
        if values.min() >= 0 and values.max() <= 65535:
            return (values / 65535.0).astype(np.float32)
        logger.warning("%s: 32-bit integer pixel values exceed 16 bits, windowing by min/max.", name)
        return _window_min_max(values)
    if mode == "F":
        return _array_to_unit_range(np.asarray(image, dtype=np.float32), name)

    raise ImageLoadError(
        f"Unsupported image mode {mode!r} in {name}. Expected a grayscale, RGB, RGBA, palette or "
        "16-bit image; convert the file to PNG (grayscale or RGB) and try again."
    )


def _array_to_unit_range(array: np.ndarray, name: str) -> np.ndarray:
    """Scale a 2-D array to [0, 1] by its dtype: 8- and 16-bit by their full range, others by min/max."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageLoadError(
                f"{name} contains NaN or infinite pixel values; replace them before passing the image."
            )
        if array.size and array.min() >= 0.0 and array.max() <= 1.0:
            return array.astype(np.float32)
    # Signed or wide integers and floats outside [0, 1] have no fixed range.
    return _window_min_max(array)


def _array_to_gray(array: np.ndarray, name: str) -> np.ndarray:
    """Convert an HxW, HxWxC or CxHxW array (C in 1, 3, 4) to float32 HxW in [0, 1]."""
    if array.ndim == 3:
        if array.shape[-1] in (1, 3, 4):
            channels_last = array
        elif array.shape[0] in (1, 3, 4):
            channels_last = np.moveaxis(array, 0, -1)
        else:
            raise ImageLoadError(
                f"Cannot find the channel axis of {name}: expected 1, 3 or 4 channels first or last. "
                "Pass an HxW, HxWxC or CxHxW array."
            )
        if channels_last.shape[-1] == 1:
            array = channels_last[..., 0]
        else:
            unit = _array_to_unit_range(channels_last, name)
            gray = _luminance(unit)
            if channels_last.shape[-1] == 4:
                gray = gray * unit[..., 3]
            return gray.astype(np.float32)
    if array.ndim != 2:
        raise ImageLoadError(
            f"Expected a 2-D or 3-D image array for {name}, got {array.ndim} dimensions. "
            "Pass each view as its own array, in a list, to give a study several views."
        )
    if array.size == 0:
        raise ImageLoadError(f"{name} is empty (shape {array.shape}); pass an image with pixels.")
    return _array_to_unit_range(array, name)


def _apply_dicom_window(values: np.ndarray, dataset: Any, name: str) -> np.ndarray:
    """Map modality values to [0, 1] with the first VOI window of the file, as DICOM PS3.3 C.11.2.1.2 defines it."""
    center = dataset.WindowCenter
    width = dataset.WindowWidth
    center = float(center[0] if isinstance(center, Sequence) and not isinstance(center, str) else center)
    width = float(width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width)
    function = str(dataset.get("VOILUTFunction", "LINEAR")).upper()

    if function == "SIGMOID":
        if width <= 0:
            raise ImageLoadError(f"{name}: WindowWidth must be positive for SIGMOID, got {width}.")
        return (1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ImageLoadError(f"{name}: WindowWidth must be positive for LINEAR_EXACT, got {width}.")
        return np.clip((values - center) / width + 0.5, 0.0, 1.0).astype(np.float32)
    if width < 1:
        raise ImageLoadError(f"{name}: WindowWidth must be at least 1 for a LINEAR window, got {width}.")
    if width == 1:
        return (values > center - 0.5).astype(np.float32)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0).astype(np.float32)


def _load_dicom(path: Path) -> np.ndarray:
    """Read a DICOM radiograph as float32 HxW in [0, 1], where 1 is the brightest displayed value.

    Steps: first frame only, Modality LUT or RescaleSlope/RescaleIntercept, then the first VOI window
    (WindowCenter/WindowWidth) when the file has one, else a VOI LUT table followed by min/max,
    else min/max of the image. MONOCHROME1 (where low values are bright) is inverted at the end.
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi
    except ImportError as error:
        raise ImageLoadError(
            f"Reading the DICOM file {path} requires pydicom, which is not installed. "
            "Install it with `pip install pydicom`."
        ) from error

    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as error:
        raise ImageLoadError(
            f"Could not read the DICOM file {path}: {error}. Check that the file is a complete DICOM file."
        ) from error

    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise ImageLoadError(
            f"The DICOM file {path} has no pixel data (it may be a structured report or a header-only file). "
            "Pass the DICOM file of the image itself."
        )
    try:
        pixels = dataset.pixel_array
    except (AttributeError, ValueError, RuntimeError, NotImplementedError) as error:
        raise ImageLoadError(
            f"Could not decode the pixel data of the DICOM file {path}: {error}. A compressed transfer syntax "
            "may need an extra decoder such as pylibjpeg or python-gdcm; otherwise the file is damaged."
        ) from error
    if pixels.size == 0:
        raise ImageLoadError(f"The DICOM file {path} has empty pixel data. Pass a file that contains an image.")

    samples_per_pixel = int(dataset.get("SamplesPerPixel", 1))
    number_of_frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if number_of_frames > 1:
        logger.warning("%s has %d frames; only the first frame is used.", path, number_of_frames)
        pixels = pixels[0]

    if samples_per_pixel > 1:
        # pydicom 3 returns colour pixel data as RGB, and colour images carry no modality or VOI LUT.
        # NOTE: the colour and VOI LUT Sequence branches have not been run on real DICOM files.
        return _luminance(_window_min_max(pixels))

    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        gray = _apply_dicom_window(values, dataset, str(path))
    elif dataset.get("VOILUTSequence"):
        gray = _window_min_max(apply_voi(values, dataset))
    else:
        gray = _window_min_max(values)

    if str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        gray = 1.0 - gray
    return gray.astype(np.float32)


def _load_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise ImageLoadError(f"Image file not found: {path}. Check the path and the data folder.")
    if not path.is_file():
        raise ImageLoadError(f"Image path {path} is not a file. Pass the path of a PNG, JPEG or DICOM file.")

    try:
        is_dicom = _is_dicom_file(path)
    except OSError as error:
        raise ImageLoadError(f"Could not open {path}: {error}. Check the file permissions.") from error
    if is_dicom:
        return _load_dicom(path)

    try:
        with Image.open(path) as image:
            image.load()
            return _pil_to_gray(image, str(path))
    except UnidentifiedImageError as error:
        raise ImageLoadError(
            f"Could not read {path}: it is not an image format that Pillow recognises. "
            "Pass a PNG, JPEG or DICOM file."
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageLoadError):
            raise
        raise ImageLoadError(
            f"Could not decode {path}: {error}. The file is probably truncated or corrupt; "
            "re-export or re-download it."
        ) from error


def load_radiograph(image: ImageSource) -> np.ndarray:
    """Load one radiograph as a float32 HxW array in [0, 1], where 1 is bright (bone).

    Accepts a path to a PNG, JPEG or DICOM file (DICOM is recognised by a `.dcm`/`.dicom` suffix
    or the `DICM` marker at byte 128), a PIL image, a numpy array or a torch tensor (HxW, HxWxC or
    CxHxW). Colour becomes gray with the BT.601 luma weights, and alpha is composited on black.
    EXIF orientation is applied. 8-bit values are divided by 255 and 16-bit values by 65535. Float
    arrays already in [0, 1] are kept, and arrays of other types or ranges are scaled by min/max.

    Raises:
        ImageLoadError: the file is missing, unreadable, corrupt, of an unsupported mode, or a DICOM
            file without pixel data.
    """
    name = _describe(image)
    if isinstance(image, (str, os.PathLike)):
        return _load_file(Path(image))
    if isinstance(image, Image.Image):
        return _pil_to_gray(image, name)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype == torch.bfloat16:
            image = image.float()
        image = image.numpy()
    if isinstance(image, np.ndarray):
        return _array_to_gray(image, name)
    raise ImageLoadError(
        f"Unsupported image input {name}. Pass a file path, a PIL image, a numpy array or a torch tensor."
    )


# --------------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------------


def _parse_resample(resample: int | str | PILImageResampling) -> int:
    if isinstance(resample, str):
        try:
            return int(PILImageResampling[resample.upper()])
        except KeyError:
            names = ", ".join(member.name.lower() for member in PILImageResampling)
            raise ValueError(f"Unknown resample filter {resample!r}; expected one of {names}.") from None
    try:
        return int(PILImageResampling(int(resample)))
    except ValueError:
        raise ValueError(
            f"Invalid resample value {resample!r}; expected a PIL resampling filter such as "
            f"{int(PILImageResampling.BILINEAR)} (bilinear)."
        ) from None


def _is_single_image(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor))


class EIRImageProcessor(PilBackend):
    """Image processor for chest radiograph studies with one or more views.

    Each view is loaded with `load_radiograph` (gray, [0, 1]), resized to `size` x `size`, repeated
    to `num_channels` channels and normalised with `image_mean`/`image_std`.

    Input structure of `__call__`:

    - one image (path, PIL image, array or tensor): a batch of one study with one view;
    - a flat list of images: ONE study whose views are the list items (not a batch of studies);
    - a list of lists: a batch of studies, each inner list holding the views of one study.

    Args:
        size: Side in pixels of the square output image.
        resize_mode: "pad" (default) scales the longest side to `size`, keeping the aspect ratio, and
            pads the short side symmetrically with the image's minimum (black for most radiographs).
            "stretch" resizes both sides to `size`. Padding is the default because stretching changes
            the proportions of the anatomy, and report findings such as cardiomegaly depend on the
            cardiothoracic ratio.
        do_normalize: Whether to apply `(x - image_mean) / image_std` per channel.
        image_mean: Per-channel mean, one value per channel. Defaults to the ImageNet mean for
            3 channels, or its average for 1 channel.
        image_std: Per-channel standard deviation, like `image_mean`.
        num_channels: 1, or 3 to repeat the gray image for encoders pretrained on RGB.
        max_views: Maximum number of views per study. Extra views are dropped in input order.
        resample: PIL resampling filter (a `PILImageResampling` value or its name).
    """

    model_input_names = ["pixel_values", "pixel_mask"]
    valid_kwargs = EIRImageProcessorKwargs

    def __init__(
        self,
        size: int = 224,
        resize_mode: Literal["pad", "stretch"] = "pad",
        do_normalize: bool = True,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        num_channels: int = 3,
        max_views: int = 2,
        resample: int | str | PILImageResampling = PILImageResampling.BILINEAR,
        **kwargs: Any,
    ) -> None:
        # PilBackend.__init__ would turn `size` into a height/width dict. This processor keeps the
        # square side as an int, so it initialises the shared base class directly.
        BaseImageProcessor.__init__(self, **kwargs)

        if isinstance(size, dict):
            height, width = size.get("height"), size.get("width")
            if height is None or height != width:
                raise ValueError(f"size must be a square side in pixels, got {size}.")
            size = height
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int (the square side in pixels), got {size!r}.")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}.")
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels!r}.")
        if isinstance(max_views, bool) or not isinstance(max_views, int) or max_views < 1:
            raise ValueError(f"max_views must be a positive int, got {max_views!r}.")

        if image_mean is None:
            image_mean = IMAGENET_DEFAULT_MEAN if num_channels == 3 else GRAY_IMAGENET_MEAN
        if image_std is None:
            image_std = IMAGENET_DEFAULT_STD if num_channels == 3 else GRAY_IMAGENET_STD
        image_mean = [float(value) for value in image_mean]
        image_std = [float(value) for value in image_std]
        for field, values in (("image_mean", image_mean), ("image_std", image_std)):
            if len(values) != num_channels:
                raise ValueError(
                    f"{field} must have one value per channel ({num_channels}), got {values}. "
                    f"Pass {num_channels} values or leave it unset for the default."
                )
        if any(value <= 0 for value in image_std):
            raise ValueError(f"image_std values must be positive, got {image_std}.")

        self.size = size
        self.resize_mode = resize_mode
        self.do_normalize = bool(do_normalize)
        self.image_mean = image_mean
        self.image_std = image_std
        self.num_channels = num_channels
        self.max_views = max_views
        self.resample = _parse_resample(resample)

    def _resize(self, gray: np.ndarray) -> np.ndarray:
        """Resize a float32 HxW image to `size` x `size` with the configured mode."""
        height, width = gray.shape
        image = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32))  # mode "F"
        if self.resize_mode == "stretch":
            resized = np.asarray(image.resize((self.size, self.size), resample=self.resample), dtype=np.float32)
            # Bicubic and Lanczos filters overshoot at sharp edges.
            return np.clip(resized, 0.0, 1.0)

        scale = self.size / max(height, width)
        new_height = max(1, min(self.size, round(height * scale)))
        new_width = max(1, min(self.size, round(width * scale)))
        resized = np.asarray(image.resize((new_width, new_height), resample=self.resample), dtype=np.float32)
        resized = np.clip(resized, 0.0, 1.0)

        canvas = np.full((self.size, self.size), float(gray.min()), dtype=np.float32)
        top = (self.size - new_height) // 2
        left = (self.size - new_width) // 2
        canvas[top : top + new_height, left : left + new_width] = resized
        return canvas

    def _process_view(self, gray: np.ndarray) -> np.ndarray:
        """Turn a gray HxW image into a normalised (C, size, size) array."""
        square = self._resize(gray)
        pixels = np.repeat(square[None], self.num_channels, axis=0)  # (C, size, size)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
            pixels = (pixels - mean) / std
        return pixels.astype(np.float32)

    @staticmethod
    def _as_studies(images: Any) -> list[list[Any]]:
        """Arrange the input as a list of studies, each a list of views (see the class docstring)."""
        if _is_single_image(images):
            return [[images]]
        if not isinstance(images, (list, tuple)):
            raise ValueError(
                f"images must be an image, a list of views of one study or a list of studies, got {type(images).__name__}."
            )
        if len(images) == 0:
            raise ValueError("images is an empty list; pass at least one image or one study.")
        nested = [isinstance(item, (list, tuple)) for item in images]
        if all(nested):
            return [list(study) for study in images]
        if any(nested):
            raise ValueError(
                "images mixes single images and lists; pass either a list of views of one study "
                "or a list of studies (a list of lists)."
            )
        return [list(images)]

    def preprocess(
        self,
        images: Any,
        return_tensors: str | None = "pt",
        errors: Literal["raise", "skip"] = "raise",
        **kwargs: Any,
    ) -> BatchFeature:
        """Load, resize and normalise the views of a batch of studies.

        Args:
            images: One image, a flat list of views of ONE study, or a list of studies (lists of views).
            return_tensors: "pt" for torch tensors, "np" or None for numpy arrays.
            errors: "raise" raises `ImageLoadError` for an image that fails to load. "skip" logs a
                warning naming the file and the reason, and masks the view out (zeros, mask 0). A study
                with no loadable view keeps an all-zero mask row.
            kwargs: Keyword arguments with value None are ignored, and others are ignored with a warning.

        Returns:
            `BatchFeature` with `pixel_values` float32 (batch, views, channels, size, size) and
            `pixel_mask` int64 (batch, views), where 1 marks a real view. `views` is the largest number
            of views in the batch, capped at `max_views`.
        """
        if errors not in ERROR_MODES:
            raise ValueError(f"errors must be one of {ERROR_MODES}, got {errors!r}.")
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        ignored = sorted(key for key, value in kwargs.items() if value is not None)
        if ignored:
            logger.warning("EIRImageProcessor ignores the keyword arguments %s.", ignored)

        studies = self._as_studies(images)
        longest = max(len(study) for study in studies)
        if longest > self.max_views:
            dropped = sum(max(0, len(study) - self.max_views) for study in studies)
            logger.info(
                "Dropped %d view(s) beyond max_views=%d; studies keep their first %d views.",
                dropped,
                self.max_views,
                self.max_views,
            )
        num_views = max(1, min(longest, self.max_views))

        pixel_values = np.zeros(
            (len(studies), num_views, self.num_channels, self.size, self.size), dtype=np.float32
        )  # (B, V, C, H, W)
        pixel_mask = np.zeros((len(studies), num_views), dtype=np.int64)  # (B, V)

        for study_index, study in enumerate(studies):
            for view_index, view in enumerate(study[:num_views]):
                try:
                    gray = load_radiograph(view)
                except ImageLoadError as error:
                    if errors == "raise":
                        raise
                    logger.warning("Skipping view %s of study %d: %s", _describe(view), study_index, error)
                    continue
                pixel_values[study_index, view_index] = self._process_view(gray)
                pixel_mask[study_index, view_index] = 1

        return BatchFeature(
            data={"pixel_values": pixel_values, "pixel_mask": pixel_mask}, tensor_type=return_tensors
        )

    def __call__(
        self,
        images: Any,
        return_tensors: str | None = "pt",
        errors: Literal["raise", "skip"] = "raise",
        **kwargs: Any,
    ) -> BatchFeature:
        """Process images; see `preprocess`."""
        return self.preprocess(images, return_tensors=return_tensors, errors=errors, **kwargs)


__all__ = ["EIRImageProcessor", "ImageLoadError", "load_radiograph"]
