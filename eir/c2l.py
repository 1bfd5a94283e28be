"""Comparing to Learn (C2L): self-supervised pre-training of a ResNet on radiographs.

C2L (Zhou H.-Y., Yu S., Bian C., Hu Y., Ma K., Zheng Y., "Comparing to Learn: Surpassing ImageNet
Pretraining on Radiographs By Comparing Image Representations", MICCAI 2020, arXiv:2007.07423)
trains a student encoder against a momentum (EMA) teacher with a MoCo-style queue of negative
features, and mixes both the input images and the teacher features.

This module holds the method: the student and teacher networks (`C2LModel`), the contrastive
loss (`c2l_loss`), the radiograph augmentation (`RadiographAugmentation`) and the pre-training
image dataset (`RadiographDataset`). The training loop is `scripts/pretrain_c2l.py`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from transformers import AutoModel, ResNetConfig

from processing_eir import ImageLoadError, load_radiograph
from processing_eir.image_processing_eir import GRAY_IMAGENET_MEAN, GRAY_IMAGENET_STD, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

logger = logging.getLogger(__name__)

RADIOGRAPH_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")

# The small backbone is the vision_config of eir/recipes/quickstart_covid.yaml, so a backbone
# pre-trained with `--backbone resnet-small` loads into that recipe's model without key changes.
BACKBONE_CONFIGS: dict[str, dict[str, Any]] = {
    "resnet50": {
        "layer_type": "bottleneck",
        "embedding_size": 64,
        "hidden_sizes": [256, 512, 1024, 2048],
        "depths": [3, 4, 6, 3],
    },
    "resnet-small": {
        "layer_type": "basic",
        "embedding_size": 32,
        "hidden_sizes": [32, 64, 128, 256],
        "depths": [1, 1, 1, 1],
    },
}


def build_backbone_config(name: str, num_channels: int = 3) -> ResNetConfig:
    """Return the transformers `ResNetConfig` of a named backbone (`resnet50` or `resnet-small`)."""
    if name not in BACKBONE_CONFIGS:
        raise ValueError(f"backbone: expected one of {sorted(BACKBONE_CONFIGS)}, got {name!r}.")
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels: expected 1 or 3, got {num_channels!r}.")
    return ResNetConfig(num_channels=num_channels, **BACKBONE_CONFIGS[name])


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


class ProjectionHead(nn.Module):
    """Two-layer MLP from pooled backbone features to the contrastive embedding (MoCo v2 style)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.activation = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(features)))


class C2LEncoder(nn.Module):
    """A transformers ResNet backbone plus the projection head; returns L2-normalised embeddings."""

    def __init__(self, backbone_config: ResNetConfig, embedding_size: int = 128):
        super().__init__()
        self.backbone = AutoModel.from_config(backbone_config)
        feature_size = int(backbone_config.hidden_sizes[-1])
        self.head = ProjectionHead(feature_size, feature_size, embedding_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone(pixel_values=pixel_values).pooler_output.flatten(1)  # (N, C)
        return F.normalize(self.head(pooled), dim=1)  # (N, embedding_size)


@dataclass
class C2LOutput:
    """Loss of one C2L step and the parts needed after the optimiser step.

    Attributes:
        loss: weighted average of the three contrastive terms (see `c2l_loss`).
        terms: the three terms, detached, for logging.
        keys: unmixed teacher embeddings (N, embedding_size) to enqueue after the step.
        mixup_lambda: the mixing coefficient drawn for this batch.
    """

    loss: torch.Tensor
    terms: dict[str, float]
    keys: torch.Tensor
    mixup_lambda: float


def info_nce(queries: torch.Tensor, positives: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with one positive per query and the queue rows as negatives (all inputs L2-normalised).

    queries, positives: (N, D); queue: (K, D). Returns the mean over the N queries.
    """
    positive_logits = (queries * positives).sum(dim=1, keepdim=True)  # (N, 1)
    negative_logits = queries @ queue.t()  # (N, K)
    logits = torch.cat([positive_logits, negative_logits], dim=1) / temperature  # (N, 1 + K)
    targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, targets)


def c2l_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    permutation: torch.Tensor,
    mixup_lambda: float,
    queue: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""Return the C2L loss and its three terms.

    With x the batch, \pi a permutation of it and \lambda ~ Beta(\alpha, \alpha), the student sees
    the mixed images \tilde{x} = \lambda x + (1 - \lambda) x_\pi and outputs the queries q. The
    teacher sees another augmentation of the unmixed images and outputs the keys k; its features
    are mixed with the same \lambda: \tilde{k} = normalise(\lambda k + (1 - \lambda) k_\pi).
    With NCE(q, p) the InfoNCE of query q, positive p and the queue as negatives, at temperature
    \tau:

        L_mix = NCE(q, \tilde{k})    the homogeneous pair: mixed student and mixed teacher features
        L_a   = NCE(q, k)            heterogeneous pair with the first source image
        L_b   = NCE(q, k_\pi)        heterogeneous pair with the second source image
        L     = (L_mix + 2 \lambda L_a + 2 (1 - \lambda) L_b) / 3

    The weights sum to 1, so L is a weighted average of the three terms and the plain average at
    \lambda = 1/2. The heterogeneous terms carry the mixup weights, as mixup weights two labels.

    NOTE: this reading of the three terms follows the description of C2L by Zhou et al. (MICCAI
    2020, arXiv:2007.07423), whose exact weighting of the terms was not checked against their code.
    """
    mixed_keys = F.normalize(mixup_lambda * keys + (1.0 - mixup_lambda) * keys[permutation], dim=1)
    term_mix = info_nce(queries, mixed_keys, queue, temperature)
    term_a = info_nce(queries, keys, queue, temperature)
    term_b = info_nce(queries, keys[permutation], queue, temperature)
    loss = (term_mix + 2.0 * mixup_lambda * term_a + 2.0 * (1.0 - mixup_lambda) * term_b) / 3.0
    terms = {"mix": float(term_mix.detach()), "a": float(term_a.detach()), "b": float(term_b.detach())}
    return loss, terms


class C2LModel(nn.Module):
    """Student, EMA teacher and the queue of negative teacher embeddings.

    Args:
        backbone_config: config of the transformers ResNet used by both networks.
        embedding_size: size of the L2-normalised contrastive embedding.
        queue_size: number of teacher embeddings kept as negatives.
        momentum: EMA coefficient m of the teacher update, teacher = m * teacher + (1 - m) * student.
        temperature: softmax temperature of the InfoNCE terms.
        mixup_alpha: parameter of the Beta(alpha, alpha) distribution of the mixing coefficient.
        teacher_bn_splits: the teacher encodes the shuffled batch in this many sub-batches (see `forward`).
    """

    def __init__(
        self,
        backbone_config: ResNetConfig,
        embedding_size: int = 128,
        queue_size: int = 16384,
        momentum: float = 0.999,
        temperature: float = 0.07,
        mixup_alpha: float = 1.0,
        teacher_bn_splits: int = 2,
    ):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}.")
        if temperature <= 0:
            raise ValueError(f"temperature: expected a positive value, got {temperature}.")
        if queue_size < 1 or embedding_size < 1:
            raise ValueError(f"queue_size and embedding_size: expected positive sizes, got {queue_size} and {embedding_size}.")
        if mixup_alpha <= 0:
            raise ValueError(f"mixup_alpha: expected a positive Beta parameter, got {mixup_alpha}.")
        if teacher_bn_splits < 1:
            raise ValueError(f"teacher_bn_splits: expected at least 1, got {teacher_bn_splits}.")
        self.momentum = momentum
        self.temperature = temperature
        self.mixup_alpha = mixup_alpha
        self.teacher_bn_splits = teacher_bn_splits

        self.student = C2LEncoder(backbone_config, embedding_size)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)

        queue = F.normalize(torch.randn(queue_size, embedding_size), dim=1)
        self.register_buffer("queue", queue)  # (K, D)
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_teacher(self) -> None:
        """Move each teacher parameter towards the student's by EMA; BN running statistics are the teacher's own."""
        for teacher_parameter, student_parameter in zip(self.teacher.parameters(), self.student.parameters()):
            teacher_parameter.mul_(self.momentum).add_(student_parameter.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest queue rows with `keys` (N, D), wrapping around the end of the queue."""
        keys = keys.detach().to(self.queue.dtype)
        queue_size = self.queue.shape[0]
        if keys.shape[0] > queue_size:
            keys = keys[-queue_size:]
        start = int(self.queue_pointer)
        positions = (torch.arange(keys.shape[0], device=keys.device) + start) % queue_size
        self.queue[positions] = keys
        self.queue_pointer.fill_((start + keys.shape[0]) % queue_size)

    @torch.no_grad()
    def _teacher_keys(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode with the teacher in shuffled sub-batches, so its batch-norm statistics differ from the student's.

        This is the one-device equivalent of MoCo's shuffled batch norm: the batch is permuted,
        each sub-batch is normalised with its own statistics, and the keys are put back in order.
        Without it the student can match keys through the shared batch statistics.
        """
        batch = pixel_values.shape[0]
        order = torch.randperm(batch, device=pixel_values.device)
        splits = max(1, min(self.teacher_bn_splits, batch // 2))
        shuffled_keys = torch.cat([self.teacher(chunk) for chunk in pixel_values[order].chunk(splits)])
        keys = torch.empty_like(shuffled_keys)
        keys[order] = shuffled_keys
        return keys

    def forward(self, student_view: torch.Tensor, teacher_view: torch.Tensor) -> C2LOutput:
        """Compute the C2L loss of a batch from two augmentations (N, C, H, W) of the same images."""
        batch = student_view.shape[0]
        if batch < 2:
            raise ValueError(f"C2L needs at least 2 images per batch to mix, got {batch}.")

        # 1. Mixup of the student's input with a shuffled copy of the batch.
        mixup_lambda = float(np.random.beta(self.mixup_alpha, self.mixup_alpha))
        permutation = torch.randperm(batch, device=student_view.device)
        mixed_view = mixup_lambda * student_view + (1.0 - mixup_lambda) * student_view[permutation]
        queries = self.student(mixed_view)  # (N, D)

        # 2. Teacher keys of the unmixed images (no gradient).
        keys = self._teacher_keys(teacher_view)  # (N, D)

        # 3. The three contrastive terms against the queue.
        queue = self.queue.clone().detach()
        loss, terms = c2l_loss(queries, keys, permutation, mixup_lambda, queue, self.temperature)
        return C2LOutput(loss=loss, terms=terms, keys=keys, mixup_lambda=mixup_lambda)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class AugmentationSettings:
    """Random augmentation of a radiograph for contrastive pre-training.

    Attributes:
        image_size: side of the square output, in pixels.
        crop_scale: range of the crop area as a fraction of the image area.
        crop_ratio: range of the crop aspect ratio (width / height).
        max_rotation: largest rotation either way, in degrees.
        brightness: largest additive brightness change, in units of the [0, 1] intensity range.
        contrast: largest relative contrast change around the image mean (0.2 is x0.8 to x1.2).
        horizontal_flip: flip left-right with probability 0.5. Off by default because laterality
            is part of a chest radiograph (heart on the left, situs inversus, "R"/"L" markers).
        num_channels: output channels; the gray image is repeated for 3.
    """

    image_size: int = 224
    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    max_rotation: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2
    horizontal_flip: bool = False
    num_channels: int = 3


class RadiographAugmentation:
    """Random resized crop, small rotation, brightness and contrast jitter, optional flip, normalisation.

    Works on the gray float images of `load_radiograph` with PIL and numpy only. There is no
    colour jitter because radiographs are gray. Normalisation uses the same statistics as
    `EIRImageProcessor`: ImageNet for 3 channels, their average for 1 channel.
    """

    def __init__(self, settings: AugmentationSettings, generator: random.Random | None = None):
        self.settings = settings
        self.random = generator or random.Random()
        if settings.num_channels == 3:
            self.mean, self.std = np.asarray(IMAGENET_DEFAULT_MEAN), np.asarray(IMAGENET_DEFAULT_STD)
        else:
            self.mean, self.std = np.asarray(GRAY_IMAGENET_MEAN), np.asarray(GRAY_IMAGENET_STD)

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Return (left, top, right, bottom) of a random crop; the whole image after 10 failed draws."""
        area = height * width
        low, high = self.settings.crop_scale
        log_ratio = (math.log(self.settings.crop_ratio[0]), math.log(self.settings.crop_ratio[1]))
        for _ in range(10):
            target_area = area * self.random.uniform(low, high)
            ratio = math.exp(self.random.uniform(*log_ratio))
            crop_width = int(round(math.sqrt(target_area * ratio)))
            crop_height = int(round(math.sqrt(target_area / ratio)))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                left = self.random.randint(0, width - crop_width)
                top = self.random.randint(0, height - crop_height)
                return left, top, left + crop_width, top + crop_height
        return 0, 0, width, height

    def __call__(self, gray: np.ndarray) -> torch.Tensor:
        """Augment a float32 HxW image in [0, 1] into a normalised (C, image_size, image_size) tensor."""
        settings = self.settings
        height, width = gray.shape
        image = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32))  # mode "F"
        background = float(gray.min())

        # 1. Random resized crop, then a small rotation that fills the corners with the background.
        box = self._crop_box(height, width)
        image = image.resize((settings.image_size, settings.image_size), Image.Resampling.BILINEAR, box=box)
        if settings.max_rotation > 0:
            angle = self.random.uniform(-settings.max_rotation, settings.max_rotation)
            image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=background)
        pixels = np.asarray(image, dtype=np.float32)
        if settings.horizontal_flip and self.random.random() < 0.5:
            pixels = pixels[:, ::-1]

        # 2. Contrast around the mean, then brightness, in the [0, 1] intensity range.
        contrast = 1.0 + self.random.uniform(-settings.contrast, settings.contrast)
        brightness = self.random.uniform(-settings.brightness, settings.brightness)
        pixels = np.clip((pixels - pixels.mean()) * contrast + pixels.mean() + brightness, 0.0, 1.0)

        # 3. Channels and normalisation.
        channels = np.repeat(pixels[None], settings.num_channels, axis=0)  # (C, S, S)
        channels = (channels - self.mean[:, None, None]) / self.std[:, None, None]
        return torch.from_numpy(channels.astype(np.float32))


def find_radiographs(folder: str | Path) -> list[Path]:
    """Return every PNG, JPEG and DICOM file under `folder` (recursively), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} not found. Pass a folder of PNG, JPEG or DICOM radiographs.")
    return sorted(path for path in root.rglob("*") if path.is_file() and path.suffix.lower() in RADIOGRAPH_SUFFIXES)


def _downscale(gray: np.ndarray, max_side: int) -> np.ndarray:
    height, width = gray.shape
    if max(height, width) <= max_side:
        return gray
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


class RadiographDataset(Dataset):
    """Radiograph files as pairs of augmented views (student view, teacher view).

    An unreadable file is logged and skipped, never fatal: with `preload` every file is decoded
    once at construction and unreadable ones are dropped from the list; without it the item is
    None and `collate_view_pairs` drops it.

    Args:
        paths: image files (PNG, JPEG or DICOM).
        augmentation: the random augmentation applied independently to each view.
        preload: decode every file at construction and keep it in memory as float16.
        max_side: longest side of the kept images, in pixels; larger images are downscaled once
            before cropping, which bounds memory and the cost of each crop.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        augmentation: RadiographAugmentation,
        preload: bool = True,
        max_side: int = 512,
    ):
        self.augmentation = augmentation
        self.max_side = max_side
        self.preload = preload
        self.skipped: list[str] = []
        self.paths = [str(path) for path in paths]
        self._images: list[np.ndarray] = []
        if preload:
            readable = []
            for path in self.paths:
                gray = self._read(path)
                if gray is not None:
                    readable.append(path)
                    self._images.append(gray.astype(np.float16))
            self.paths = readable
        if self.skipped:
            logger.warning("Skipped %d unreadable image file(s), for example %s.", len(self.skipped), self.skipped[:3])

    def _read(self, path: str) -> np.ndarray | None:
        try:
            return _downscale(load_radiograph(path), self.max_side)
        except ImageLoadError as error:
            logger.warning("Skipping unreadable image %s: %s", path, error)
            self.skipped.append(path)
            return None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        gray = self._images[index].astype(np.float32) if self.preload else self._read(self.paths[index])
        if gray is None:
            return None
        return self.augmentation(gray), self.augmentation(gray)


def collate_view_pairs(items: list[tuple[torch.Tensor, torch.Tensor] | None]) -> dict[str, torch.Tensor]:
    """Stack view pairs into `student_view` and `teacher_view` (N, C, H, W); None items are dropped."""
    items = [item for item in items if item is not None]
    if not items:
        return {}
    return {
        "student_view": torch.stack([item[0] for item in items]),
        "teacher_view": torch.stack([item[1] for item in items]),
    }


def step_decay_factor(epoch: int, total_epochs: int, milestones: Sequence[float], gamma: float) -> float:
    """Return the learning-rate factor of a 0-based epoch: `gamma` per milestone (a fraction of the epochs) passed."""
    passed = sum(1 for fraction in milestones if epoch >= max(1, math.ceil(fraction * total_epochs)))
    return gamma**passed


__all__ = [
    "AugmentationSettings",
    "BACKBONE_CONFIGS",
    "C2LEncoder",
    "C2LModel",
    "C2LOutput",
    "RadiographAugmentation",
    "RadiographDataset",
    "build_backbone_config",
    "c2l_loss",
    "collate_view_pairs",
    "find_radiographs",
    "info_nce",
    "step_decay_factor",
]
