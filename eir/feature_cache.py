"""On-disk cache of frozen backbone features per image.

When the vision backbone is frozen (eval-mode batch norm, no gradient), its output for an image
never changes during training, so it can be computed once and read back every epoch. This
module stores one safetensors file per image under

    <cache_dir>/<fingerprint>/<file key>.safetensors

The fingerprint is a SHA-256 over the backbone config, every backbone tensor (parameters and
batch-norm buffers) and the image processor's configuration, so changing the weights or the
preprocessing selects a new, empty folder. The file key is a SHA-256 over the absolute path, the
modification time in nanoseconds and the size of the image file, so an edited image is
recomputed. Stale folders are not deleted; remove `cache_dir` to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from processing_eir import EIRImageProcessor, ImageLoadError

logger = logging.getLogger(__name__)

FEATURES_KEY = "features"


def backbone_fingerprint(backbone: nn.Module, image_processor: EIRImageProcessor) -> str:
    """Return a SHA-256 hex digest of the backbone config and tensors and the image processor config."""
    digest = hashlib.sha256()
    config = getattr(backbone, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    processor_config = image_processor.to_dict()
    processor_config.pop("processor_class", None)
    digest.update(json.dumps(processor_config, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def image_file_key(path: str | os.PathLike) -> str:
    """Return a key of an image file from its absolute path, modification time (ns) and size."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return hashlib.sha256(f"{resolved}|{stat.st_mtime_ns}|{stat.st_size}".encode()).hexdigest()[:32]


class BackboneFeatureCache:
    """Compute, store and serve the backbone output (C, h, w) of single images.

    The backbone is run in eval mode under `torch.no_grad()`; the caller is responsible for
    keeping it frozen while the cache is in use (`eir.backbones.freeze_backbone`).

    Args:
        backbone: the vision backbone; its output `last_hidden_state` is cached.
        image_processor: the processor that turns a file into the backbone's input.
        cache_dir: root folder of the cache.
        batch_size: images per backbone forward when filling the cache.
        keep_in_memory: also keep served features in memory after the first read.
    """

    def __init__(
        self,
        backbone: nn.Module,
        image_processor: EIRImageProcessor,
        cache_dir: str | os.PathLike,
        batch_size: int = 16,
        keep_in_memory: bool = True,
    ):
        self.backbone = backbone
        self.image_processor = image_processor
        self.batch_size = batch_size
        self.keep_in_memory = keep_in_memory
        self.fingerprint = backbone_fingerprint(backbone, image_processor)
        self.folder = Path(cache_dir) / self.fingerprint[:24]
        self._memory: dict[str, torch.Tensor] = {}
        self._unreadable: set[str] = set()
        self.computed = 0

    def file_for(self, path: str | os.PathLike) -> Path:
        return self.folder / f"{image_file_key(path)}.safetensors"

    def precompute(self, paths: Iterable[str | os.PathLike], show_progress: bool = False) -> int:
        """Compute and store the features of every path not cached yet; return how many were computed.

        Unreadable images are logged and remembered, and `get` returns None for them.
        """
        missing = []
        seen = set()
        for path in paths:
            path = str(path)
            if path in seen or path in self._unreadable:
                continue
            seen.add(path)
            if not Path(path).is_file():
                logger.warning("Image %s not found; no backbone features cached for it.", path)
                self._unreadable.add(path)
            elif not self.file_for(path).is_file():
                missing.append(path)
        if not missing:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        was_training = self.backbone.training
        self.backbone.eval()
        device = next(self.backbone.parameters()).device
        starts = range(0, len(missing), self.batch_size)
        computed = 0
        for start in tqdm(starts, desc="caching backbone features", disable=not show_progress):
            chunk = missing[start : start + self.batch_size]
            pixels, readable_paths = self._load_pixels(chunk)
            if not readable_paths:
                continue
            with torch.no_grad():
                features = self.backbone(pixel_values=pixels.to(device)).last_hidden_state.float().cpu()  # (N, C, h, w)
            for path, feature in zip(readable_paths, features):
                save_file({FEATURES_KEY: feature.contiguous()}, str(self.file_for(path)), metadata={"image": path})
            computed += len(readable_paths)
        self.backbone.train(was_training)
        self.computed += computed
        logger.info("Cached backbone features of %d images in %s.", computed, self.folder)
        return computed

    def _load_pixels(self, paths: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        views, readable_paths = [], []
        for path in paths:
            try:
                encoded = self.image_processor([[path]], return_tensors="pt")
            except ImageLoadError as error:
                logger.warning("Skipping unreadable image %s: %s", path, error)
                self._unreadable.add(path)
                continue
            views.append(encoded["pixel_values"][0, 0])
            readable_paths.append(path)
        return (torch.stack(views) if views else torch.empty(0)), readable_paths

    def get(self, path: str | os.PathLike) -> torch.Tensor | None:
        """Return the cached features (C, h, w) of an image, computing them if needed; None if unreadable."""
        path = str(path)
        if path in self._memory:
            return self._memory[path]
        if path in self._unreadable:
            return None
        file = self.file_for(path) if Path(path).is_file() else None
        if file is None or not file.is_file():
            self.precompute([path])
            file = self.file_for(path) if path not in self._unreadable else None
            if file is None or not file.is_file():
                return None
        features = load_file(str(file))[FEATURES_KEY]
        if self.keep_in_memory:
            self._memory[path] = features
        return features

    def study_features(self, paths: Sequence[str | os.PathLike]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Return features (V, C, h, w) and a view mask (V,) of a study's first `max_views` images; None if none is readable."""
        paths = list(paths)[: self.image_processor.max_views]
        features = [self.get(path) for path in paths]
        readable = [feature for feature in features if feature is not None]
        if not readable:
            return None
        template = readable[0]
        stacked = torch.stack([feature if feature is not None else torch.zeros_like(template) for feature in features])
        mask = torch.tensor([feature is not None for feature in features], dtype=torch.long)
        return stacked, mask


__all__ = ["BackboneFeatureCache", "backbone_fingerprint", "image_file_key"]
