"""Training recipes: YAML files that set the dataset, the model, the preprocessing and the optimisation."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


@dataclass
class TrainingSettings:
    """Optimisation and checkpointing settings; each field is also a command-line option of `eir train`."""

    epochs: int = 30
    batch_size: int = 8
    eval_batch_size: int = 16
    learning_rate: float = 3e-4
    weight_decay: float = 1e-2
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    num_workers: int = 0
    cache_images: bool = True
    selection_metric: str = "BLEU-4"
    eval_every_epochs: int = 1
    bank_refresh_epochs: int = 1
    keep_checkpoints: int = 2
    max_new_tokens: int = 100
    num_beams: int = 1
    limit_train_studies: int | None = None
    limit_eval_studies: int | None = None
    # Vision backbone: no gradient and eval-mode batch norm (running statistics) throughout.
    freeze_backbone: bool = False
    # Compute the frozen backbone's features of the training images once and read them back each
    # epoch (under OUTPUT_DIR/feature_cache); needs freeze_backbone. Validation still reads pixels.
    cache_backbone_features: bool = False


@dataclass
class Recipe:
    """A whole training setup, loaded from YAML."""

    name: str
    dataset: dict[str, Any]
    model: dict[str, Any]
    image_processor: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    processor: dict[str, Any] = field(default_factory=dict)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    generation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a recipe by name (a file in `eir/recipes/`) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"Recipe not found: {name_or_path!s} (looked for {path}). Pass a YAML file or one of: "
            f"{', '.join(available_recipes())}."
        )
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return recipe_from_dict(raw, default_name=path.stem, source=str(path))


def recipe_from_dict(raw: dict[str, Any], default_name: str = "custom", source: str = "recipe") -> Recipe:
    raw = copy.deepcopy(raw)
    known = {f.name for f in fields(Recipe)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{source}: unknown top-level keys {sorted(unknown)}; expected some of {sorted(known)}.")
    for required in ("dataset", "model"):
        if required not in raw:
            raise ValueError(f"{source}: missing the `{required}` section.")
    training_raw = raw.pop("training", {}) or {}
    training_fields = {f.name for f in fields(TrainingSettings)}
    unknown = set(training_raw) - training_fields
    if unknown:
        raise ValueError(f"{source}: unknown keys in `training`: {sorted(unknown)}; expected some of {sorted(training_fields)}.")
    raw.setdefault("name", default_name)
    recipe = Recipe(training=TrainingSettings(**training_raw), **raw)
    check_section_keys(recipe, source)
    return recipe


def _accepted_keywords(function) -> set[str]:
    parameters = inspect.signature(function).parameters
    return {name for name, parameter in parameters.items() if parameter.kind is not inspect.Parameter.VAR_KEYWORD} - {"self"}


def check_section_keys(recipe: Recipe, source: str = "recipe") -> None:
    """Reject misspelt keys in the model, generation and preprocessing sections.

    `EIRConfig` and `GenerationConfig` would otherwise store an unknown key as a new attribute
    and keep the default of the intended field, silently.
    """
    from transformers import GenerationConfig

    from configuration_eir import EIRConfig
    from processing_eir import EIRImageProcessor, EIRProcessor, train_eir_tokenizer

    sections = {
        "model": {field.name for field in dataclasses.fields(EIRConfig)},
        "generation": set(GenerationConfig().to_dict()),
        "image_processor": _accepted_keywords(EIRImageProcessor.__init__),
        "processor": _accepted_keywords(EIRProcessor.__init__) - {"image_processor", "tokenizer"},
        "tokenizer": _accepted_keywords(train_eir_tokenizer) - {"texts", "output_dir"},
    }
    for section, accepted in sections.items():
        unknown = set(getattr(recipe, section) or {}) - accepted
        if unknown:
            raise ValueError(
                f"{source}: unknown keys in `{section}`: {sorted(unknown)}. Check the spelling; accepted keys: "
                f"{sorted(accepted)}."
            )
