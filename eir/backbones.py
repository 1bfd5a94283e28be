"""Offline loading of pre-trained weights into the transformers ResNet backbone of EIR.

Three sources are recognised, all local, none downloaded:

1. C2L checkpoints (`eir.c2l`, written by `scripts/pretrain_c2l.py`): keys `student.backbone.*`
   and `teacher.backbone.*`, optionally behind a `module.` prefix. MoCo-layout checkpoints with
   `encoder_q.*` (student) and `encoder_k.*` (teacher) torchvision ResNets are read too. The
   projection head keys (`*.head.*`, torchvision `fc.*`) are dropped.
2. torchvision-style ResNet state dicts (`.pth`/`.pt`/`.bin` read with
   `torch.load(..., weights_only=True)`, or `.safetensors`), mapped onto the transformers names
   with `TORCHVISION_TO_TRANSFORMERS` below.
3. Hugging Face folders: a `ResNetModel` folder (`save_pretrained`), or a full
   `ResNetForImageClassification` folder whose `resnet.` prefix is stripped and whose
   `classifier.*` keys are dropped.

Checkpoints are never unpickled with arbitrary code: `.pth` files go through
`torch.load(weights_only=True)`, which rejects pickles that reference anything but tensors and
plain containers.

A single-channel model loading 3-channel weights gets the sum of the RGB kernels of the first
convolution, because a gray image repeated on three channels then gives the same activations.
A 3-channel model loading 1-channel weights gets the kernel divided by 3 on each channel, for
the same reason.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

logger = logging.getLogger(__name__)

FIRST_CONVOLUTION_KEY = "embedder.embedder.convolution.weight"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

# torchvision ResNet name -> transformers ResNetModel name. X, Y, Z are the stage (1-based in
# torchvision), the block and the convolution (1-based in torchvision); transformers counts all
# three from 0, and the downsample branch is called `shortcut`.
#
#   conv1.weight                      -> embedder.embedder.convolution.weight
#   bn1.{weight,bias,running_*,...}   -> embedder.embedder.normalization.*
#   layerX.Y.convZ.weight             -> encoder.stages.{X-1}.layers.Y.layer.{Z-1}.convolution.weight
#   layerX.Y.bnZ.*                    -> encoder.stages.{X-1}.layers.Y.layer.{Z-1}.normalization.*
#   layerX.Y.downsample.0.weight      -> encoder.stages.{X-1}.layers.Y.shortcut.convolution.weight
#   layerX.Y.downsample.1.*           -> encoder.stages.{X-1}.layers.Y.shortcut.normalization.*
#   fc.*                              -> dropped (classifier)
TORCHVISION_TO_TRANSFORMERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^conv1\.weight$"), "embedder.embedder.convolution.weight"),
    (re.compile(r"^bn1\.(\w+)$"), "embedder.embedder.normalization.{0}"),
    (re.compile(r"^layer(\d)\.(\d+)\.conv(\d)\.weight$"), "encoder.stages.{0-1}.layers.{1}.layer.{2-1}.convolution.weight"),
    (re.compile(r"^layer(\d)\.(\d+)\.bn(\d)\.(\w+)$"), "encoder.stages.{0-1}.layers.{1}.layer.{2-1}.normalization.{3}"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.0\.weight$"), "encoder.stages.{0-1}.layers.{1}.shortcut.convolution.weight"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.1\.(\w+)$"), "encoder.stages.{0-1}.layers.{1}.shortcut.normalization.{2}"),
)
TORCHVISION_DROPPED = re.compile(r"^fc\.")


class BackboneWeightsError(ValueError):
    """Error raised when backbone weights cannot be read or do not fit the backbone."""


@dataclass
class WeightLoadReport:
    """Record of the tensors `load_backbone_weights` loaded, left out and adapted.

    Attributes:
        source: the file or folder read.
        source_format: "c2l", "moco", "torchvision", "transformers" or "transformers-classification".
        loaded_keys: backbone keys that received a tensor.
        missing_keys: backbone keys the source did not provide (they keep their initial values).
        unexpected_keys: source keys that match no backbone key.
        dropped_keys: source keys left out on purpose (projection head, classifier, the other C2L branch).
        adapted_keys: keys whose tensor was adapted to another number of input channels.
    """

    source: str
    source_format: str
    loaded_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    dropped_keys: list[str] = field(default_factory=list)
    adapted_keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a `.safetensors` file or a pickle-based `.pth`/`.pt`/`.bin`/`.ckpt` file.

    Pickle files are read with `torch.load(weights_only=True)` only. A checkpoint that wraps the
    weights in `{"state_dict": ...}` or `{"model": ...}` is unwrapped.

    Raises:
        BackboneWeightsError: the file is missing, of an unknown type, rejected as unsafe or contains no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"Backbone weights file {path} not found. Pass an existing .safetensors or .pth file.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state = load_file(str(path))
    elif suffix in PICKLE_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as error:
            raise BackboneWeightsError(
                f"Rejected {path}: torch.load(weights_only=True) failed ({error.__class__.__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}). The file is corrupt or contains pickled "
                "objects other than tensors, which are not loaded because unpickling can run arbitrary code. "
                "Re-save the weights as a plain state dict or as .safetensors."
            ) from error
    else:
        raise BackboneWeightsError(
            f"Backbone weights file {path}: expected a .safetensors or {'/'.join(PICKLE_SUFFIXES)} file, got {suffix!r}."
        )

    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise BackboneWeightsError(f"{path} contains no tensors; expected a state dict of a ResNet or a C2L checkpoint.")
    return tensors


def _read_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Read the weights of a Hugging Face model folder (single or sharded safetensors, or pytorch_model.bin)."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return read_state_dict(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(folder / shard))
        return state
    if (folder / "pytorch_model.bin").is_file():
        return read_state_dict(folder / "pytorch_model.bin")
    raise BackboneWeightsError(
        f"Backbone folder {folder} contains no model.safetensors, model.safetensors.index.json or pytorch_model.bin. "
        "Pass a folder written by save_pretrained, or a weights file."
    )


# ---------------------------------------------------------------------------------------------
# Key mapping
# ---------------------------------------------------------------------------------------------


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _fill_template(template: str, groups: tuple[str, ...]) -> str:
    """Fill `{i}` and `{i-1}` placeholders of a mapping template with the matched groups."""

    def substitute(match: re.Match[str]) -> str:
        value = groups[int(match.group(1))]
        return str(int(value) - 1) if match.group(2) else value

    return re.sub(r"\{(\d)(-1)?\}", substitute, template)


def torchvision_to_transformers(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Rename torchvision ResNet keys to transformers `ResNetModel` keys.

    Returns the mapped state dict, the dropped keys (`fc.*`) and the keys that match no rule.
    """
    mapped: dict[str, torch.Tensor] = {}
    dropped, unmatched = [], []
    for key, value in state.items():
        if TORCHVISION_DROPPED.match(key):
            dropped.append(key)
            continue
        for pattern, template in TORCHVISION_TO_TRANSFORMERS:
            match = pattern.match(key)
            if match:
                mapped[_fill_template(template, match.groups())] = value
                break
        else:
            unmatched.append(key)
    return mapped, dropped, unmatched


def _is_torchvision_layout(state: dict[str, torch.Tensor]) -> bool:
    return "conv1.weight" in state or any(key.startswith("layer1.") for key in state)


def _select_branch(
    state: dict[str, torch.Tensor], branch: str, prefixes: dict[str, str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Keep the keys of one network of a two-network checkpoint; return them without the prefix and the other keys."""
    prefix = prefixes[branch]
    selected = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    others = [key for key in state if not key.startswith(prefix)]
    return selected, others


def normalise_backbone_state(
    state: dict[str, torch.Tensor], c2l_branch: str = "student"
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Bring any recognised layout to transformers `ResNetModel` keys.

    Returns the state dict, the name of the detected format and the keys dropped on purpose.
    """
    if c2l_branch not in ("student", "teacher"):
        raise ValueError(f"c2l_branch: expected 'student' or 'teacher', got {c2l_branch!r}.")
    state = _strip_prefix(state, "module.")
    dropped: list[str] = []

    if any(key.startswith(("student.", "teacher.")) for key in state):
        branch, others = _select_branch(state, c2l_branch, {"student": "student.", "teacher": "teacher."})
        dropped += others
        dropped += [f"{c2l_branch}.{key}" for key in branch if not key.startswith("backbone.")]
        backbone = {key[len("backbone.") :]: value for key, value in branch.items() if key.startswith("backbone.")}
        return backbone, "c2l", dropped

    if any(key.startswith(("encoder_q.", "encoder_k.")) for key in state):
        branch, others = _select_branch(state, c2l_branch, {"student": "encoder_q.", "teacher": "encoder_k."})
        mapped, head, unmatched = torchvision_to_transformers(branch)
        dropped += others + head
        return {**mapped, **{key: branch[key] for key in unmatched}}, "moco", dropped

    if _is_torchvision_layout(state):
        mapped, head, unmatched = torchvision_to_transformers(state)
        return {**mapped, **{key: state[key] for key in unmatched}}, "torchvision", head

    if any(key.startswith("resnet.") for key in state):
        dropped = [key for key in state if not key.startswith("resnet.")]
        backbone = {key[len("resnet.") :]: value for key, value in state.items() if key.startswith("resnet.")}
        return backbone, "transformers-classification", dropped

    return state, "transformers", dropped


def adapt_first_convolution(weight: torch.Tensor, num_channels: int) -> torch.Tensor:
    """Adapt a first-convolution kernel (out, in, k, k) to `num_channels` inputs.

    3 -> 1: sum of the RGB kernels. 1 -> 3: the kernel divided by 3 on each channel. Both keep
    the response to a gray image (equal values on all channels) unchanged.
    """
    in_channels = weight.shape[1]
    if in_channels == num_channels:
        return weight
    if in_channels == 3 and num_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if in_channels == 1 and num_channels == 3:
        return weight.repeat(1, 3, 1, 1) / 3.0
    raise BackboneWeightsError(
        f"First convolution: cannot adapt a kernel with {in_channels} input channels to {num_channels}; "
        "expected 1 or 3 on both sides."
    )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_backbone_weights(backbone: nn.Module, source: str | Path, c2l_branch: str = "student") -> WeightLoadReport:
    """Load weights from a local file or folder into a transformers ResNet backbone, in place.

    Args:
        backbone: a transformers `ResNetModel` (for EIR: `model.encoder.image_encoder.backbone`).
        source: a C2L checkpoint, a torchvision-style state dict (.pth or .safetensors), or a
            Hugging Face folder of a `ResNetModel` or `ResNetForImageClassification`. A C2L
            output folder (with `c2l_checkpoint.safetensors` beside its `config.json`) is read as
            a Hugging Face folder, which holds the student backbone.
        c2l_branch: "student" or "teacher", the network taken from a C2L or MoCo checkpoint.

    Returns the report of loaded, missing, unexpected, dropped and adapted keys (also logged).

    Raises:
        BackboneWeightsError: the source cannot be read, or a tensor's shape does not fit the
            backbone (for example weights of a ResNet-50 for a ResNet-18 config).
    """
    path = Path(source)
    if path.is_dir():
        state = _read_folder(path)
    elif path.exists():
        state = read_state_dict(path)
    else:
        raise BackboneWeightsError(f"Backbone weights {path} not found. Pass a local file or folder; nothing is downloaded.")
    state, source_format, dropped = normalise_backbone_state(state, c2l_branch)

    target = backbone.state_dict()
    num_channels = target[FIRST_CONVOLUTION_KEY].shape[1] if FIRST_CONVOLUTION_KEY in target else None
    adapted = []
    if num_channels is not None and FIRST_CONVOLUTION_KEY in state:
        weight = state[FIRST_CONVOLUTION_KEY]
        if weight.dim() == 4 and weight.shape[1] != num_channels:
            state[FIRST_CONVOLUTION_KEY] = adapt_first_convolution(weight, num_channels)
            adapted.append(FIRST_CONVOLUTION_KEY)

    mismatched = [
        f"{key}: source {tuple(value.shape)}, backbone {tuple(target[key].shape)}"
        for key, value in state.items()
        if key in target and tuple(value.shape) != tuple(target[key].shape)
    ]
    if mismatched:
        raise BackboneWeightsError(
            f"Backbone weights {path} do not fit the backbone ({len(mismatched)} shape mismatches, first: "
            f"{mismatched[:3]}). Use a vision_config with the same depths and hidden_sizes as the weights."
        )

    result = backbone.load_state_dict(state, strict=False)
    report = WeightLoadReport(
        source=str(path),
        source_format=source_format,
        loaded_keys=sorted(key for key in state if key in target),
        missing_keys=sorted(result.missing_keys),
        unexpected_keys=sorted(result.unexpected_keys),
        dropped_keys=sorted(dropped),
        adapted_keys=adapted,
    )
    _log_report(report)
    return report


def _log_report(report: WeightLoadReport) -> None:
    logger.info(
        "Loaded %d backbone tensors from %s (%s); %d missing, %d unexpected, %d dropped (heads), adapted: %s.",
        len(report.loaded_keys), report.source, report.source_format, len(report.missing_keys),
        len(report.unexpected_keys), len(report.dropped_keys), report.adapted_keys or "none",
    )
    if report.missing_keys:
        logger.warning("Backbone keys missing from %s (kept at their initial values): %s", report.source, report.missing_keys)
    if report.unexpected_keys:
        logger.warning("Keys of %s that match no backbone key (ignored): %s", report.source, report.unexpected_keys)
    if not report.loaded_keys:
        logger.warning("No tensor of %s matched the backbone; the backbone keeps its initial weights.", report.source)


def freeze_backbone(backbone: nn.Module) -> None:
    """Stop gradients to the backbone and put it in eval mode, so batch norm uses its running statistics.

    A later `model.train()` puts the backbone back in training mode; call this again after it.
    """
    backbone.requires_grad_(False)
    backbone.eval()


__all__ = [
    "BackboneWeightsError",
    "TORCHVISION_TO_TRANSFORMERS",
    "WeightLoadReport",
    "adapt_first_convolution",
    "freeze_backbone",
    "load_backbone_weights",
    "normalise_backbone_state",
    "read_state_dict",
    "torchvision_to_transformers",
]
