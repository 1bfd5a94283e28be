"""Model folders that load without the `eir` package, and Hugging Face Hub releases.

A model folder saved by `save_with_remote_code` carries the model-side code as flat files beside
the weights (`configuration_eir.py`, `modeling_eir.py`, `image_processing_eir.py`,
`tokenization_eir.py`, `processing_eir.py`), copied from the installed packages at save time, and
an `auto_map` in each JSON file. With `trust_remote_code=True`, `AutoConfig`, `AutoModel`,
`AutoModelForImageTextToText`, `AutoProcessor`, `AutoImageProcessor` and `AutoTokenizer` then load
the folder in an environment where only torch, transformers, numpy, Pillow, pydicom and
sentencepiece are installed.

`prepare_hub_folder` turns a trained model folder into a Hub repository folder: the same files
plus a model card (`README.md`) rendered from `model_cards/eir_model_card_template.md`, whose
`model-index` metadata contains the scores that `eir evaluate` wrote to `metrics_<split>.json`.
`upload_hub_folder` sends such a folder to the Hub with `HfApi.upload_folder`.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Flat file name in a model folder -> the package module it is copied from.
REMOTE_CODE_FILES: dict[str, str] = {
    "configuration_eir.py": "configuration_eir.configuration_eir",
    "modeling_eir.py": "modeling_eir.modeling_eir",
    "image_processing_eir.py": "processing_eir.image_processing_eir",
    "tokenization_eir.py": "processing_eir.tokenization_eir",
    "processing_eir.py": "processing_eir.processing_eir",
}

# The `auto_map` entries, in the form transformers 5.25 reads them (`models/auto/*.py`):
# "<module file without .py>.<class name>". The tokenizer entry is a [slow, fast] pair because
# `AutoTokenizer` accepts a list there, and EIR has no separate fast tokenizer class.
CONFIG_AUTO_MAP: dict[str, str] = {
    "AutoConfig": "configuration_eir.EIRConfig",
    "AutoModel": "modeling_eir.EIRForReportGeneration",
    "AutoModelForImageTextToText": "modeling_eir.EIRForReportGeneration",
}
PROCESSOR_AUTO_MAP: dict[str, str] = {"AutoProcessor": "processing_eir.EIRProcessor"}
IMAGE_PROCESSOR_AUTO_MAP: dict[str, str] = {
    "AutoProcessor": "processing_eir.EIRProcessor",
    "AutoImageProcessor": "image_processing_eir.EIRImageProcessor",
}
TOKENIZER_AUTO_MAP: dict[str, Any] = {
    "AutoProcessor": "processing_eir.EIRProcessor",
    "AutoTokenizer": ["tokenization_eir.EIRTokenizer", None],
}

CONFIG_FILE = "config.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_MODEL_FILE = "tokenizer.model"
TRAINING_DATA_FILE = "training_data.json"

# Files every model folder must contain for the Auto classes to load it with remote code.
REQUIRED_MODEL_FILES: tuple[str, ...] = (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    WEIGHTS_FILE,
    PROCESSOR_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_MODEL_FILE,
    *REMOTE_CODE_FILES,
)


class ModelFolderError(ValueError):
    """A model folder is missing a file, or one of its files has unexpected content."""


def copy_remote_code(folder: str | Path) -> list[Path]:
    """Copy the model-side source files flat into `folder` and return their new paths.

    The sources are the files of the imported `configuration_eir`, `modeling_eir` and
    `processing_eir` packages, so a folder always carries the code that saved it.
    """
    folder = Path(folder)
    copied = []
    for file_name, module_name in REMOTE_CODE_FILES.items():
        source = Path(importlib.import_module(module_name).__file__)
        target = folder / file_name
        shutil.copyfile(source, target)
        copied.append(target)
    return copied


def _update_json(path: Path, update: dict[str, Any]) -> None:
    if not path.is_file():
        raise ModelFolderError(f"{path} not found: expected a file written by `save_pretrained`.")
    content = json.loads(path.read_text(encoding="utf-8"))
    content.update(update)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def add_auto_map(folder: str | Path) -> None:
    """Write the `auto_map` entries into the config, processor and tokenizer files of `folder`.

    Existing `auto_map` entries are replaced, so the mapping always names the flat files that
    `copy_remote_code` writes.
    """
    folder = Path(folder)
    _update_json(folder / CONFIG_FILE, {"auto_map": dict(CONFIG_AUTO_MAP)})

    processor_path = folder / PROCESSOR_CONFIG_FILE
    if not processor_path.is_file():
        raise ModelFolderError(f"{processor_path} not found: expected the file written by `EIRProcessor.save_pretrained`.")
    processor_config = json.loads(processor_path.read_text(encoding="utf-8"))
    image_processor_config = processor_config.get("image_processor")
    if not isinstance(image_processor_config, dict):
        raise ModelFolderError(
            f"{processor_path}: expected an `image_processor` object (the nested format of transformers 5), "
            f"got {type(image_processor_config).__name__}. Save the processor again with transformers 5."
        )
    image_processor_config["auto_map"] = dict(IMAGE_PROCESSOR_AUTO_MAP)
    processor_config["auto_map"] = dict(PROCESSOR_AUTO_MAP)
    processor_path.write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    _update_json(folder / TOKENIZER_CONFIG_FILE, {"auto_map": dict(TOKENIZER_AUTO_MAP)})


def save_with_remote_code(model: Any, processor: Any, folder: str | Path) -> Path:
    """Save `model` (weights, config, generation config) and `processor` with remote code to `folder`.

    Returns the folder. `model` is an `EIRForReportGeneration`, `processor` an `EIRProcessor`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if not (folder / GENERATION_CONFIG_FILE).is_file():
        # `save_pretrained` writes the generation config only when the model has one that
        # differs from the defaults, but the Hub folder always documents its decoding settings.
        model.generation_config.save_pretrained(folder)
    copy_remote_code(folder)
    add_auto_map(folder)
    return folder


def add_remote_code(folder: str | Path) -> None:
    """Add (or refresh) the flat source files and the `auto_map` entries of an existing model folder."""
    copy_remote_code(folder)
    add_auto_map(folder)


def missing_model_files(folder: str | Path) -> list[str]:
    """Return the names of the `REQUIRED_MODEL_FILES` that `folder` lacks."""
    folder = Path(folder)
    return [name for name in REQUIRED_MODEL_FILES if not (folder / name).is_file()]


# ----------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingDataCard:
    """Model card text and licence of one training data set."""

    pretty_name: str
    index_name: str
    license: str
    license_name: str
    description: str
    licence_text: str
    target_text: str


TRAINING_DATA_CARDS: dict[str, TrainingDataCard] = {
    "covid_chestxray": TrainingDataCard(
        pretty_name="the COVID-19 image data collection (Cohen et al.), the chest X-rays that come with clinical notes",
        index_name="COVID-19 image data collection, chest X-rays with clinical notes",
        license="cc-by-nc-sa-4.0",
        license_name="CC BY-NC-SA 4.0",
        description=(
            "A subset of the COVID-19 image data collection (Cohen J.P. et al., \"COVID-19 Image Data "
            "Collection: Prospective Predictions Are the Future\", arXiv:2006.11988, 2020): chest X-rays "
            "(PA, AP and lateral) with the free-text clinical note of their case, collected from "
            "radiopaedia.org, eurorad.org and journal articles. Studies are split by patient, so no "
            "patient appears in two splits."
        ),
        licence_text=(
            "Licences are set per image by the sources. The images used here are CC BY-NC-SA (most), "
            "CC BY or CC BY-SA, and the collection's metadata and notes are CC BY-NC-SA 4.0. The "
            "non-commercial, share-alike terms carry over to these weights."
        ),
        target_text=(
            "The training target is the case's clinical note, not a radiology report of the image. "
            "One note is shared by all images of a patient and mixes history, findings, follow-up "
            "and sometimes the outcome. The model therefore learns to write case-note style text "
            "about COVID-19 and other pneumonias. It does not describe the image it is given the way "
            "a radiologist's report would, and it has seen almost no normal studies."
        ),
    ),
    "iu_xray": TrainingDataCard(
        pretty_name="the IU X-ray (Open-I) chest X-ray reports of Indiana University",
        index_name="IU X-ray (Open-I)",
        license="cc-by-nc-nd-4.0",
        license_name="CC BY-NC-ND 4.0",
        description=(
            "The Indiana University chest X-ray collection (IU X-ray, Open-I; Demner-Fushman D. et al., "
            "\"Preparing a collection of radiology examinations for distribution and retrieval\", "
            "JAMIA 23(2):304-310, 2016): frontal and lateral radiographs with their radiology reports."
        ),
        licence_text=(
            "The reports are licensed CC BY-NC-ND 4.0 (non-commercial, no derivatives). These weights "
            "are released under the same licence as the most restrictive reading of those terms."
        ),
        target_text=(
            "The training target is report text (the sections named above) of IU X-ray reports from "
            "one US hospital system. Report style, vocabulary and the mix of findings follow that "
            "source, and de-identified words appear as \"XXXX\"."
        ),
    ),
}

# Data sets whose data use terms forbid publishing report text. The retrieval bank stores sentences
# of the training reports in the weights, so `prepare_hub_folder` rejects models trained on them.
REPORT_TEXT_RESTRICTED_DATASETS: dict[str, str] = {
    "mimic_cxr": (
        "MIMIC-CXR reports are shared under the PhysioNet Credentialed Health Data Use Agreement, "
        "which forbids sharing them, or text taken from them, with anyone who has not signed it"
    ),
}

# Published IU X-ray results that follow R2Gen (Chen et al., EMNLP 2020) use this target.
R2GEN_TARGET_SECTIONS: tuple[str, ...] = ("FINDINGS",)

# NOTE: the template lives in the repository, not in the installed packages, so a wheel install
# without the checkout needs `template=` (`--template`).
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "eir_model_card_template.md"

# Model-index entries: score name -> (metric id on the Hub, arguments of the score).
_MODEL_INDEX_METRICS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "BLEU-1": ("bleu", {"max_order": 1}),
    "BLEU-2": ("bleu", {"max_order": 2}),
    "BLEU-3": ("bleu", {"max_order": 3}),
    "BLEU-4": ("bleu", {"max_order": 4}),
    "METEOR": ("meteor", None),
    "ROUGE-L": ("rouge", None),
    "CIDEr": ("cider", None),
}
MODEL_SYSTEM_NAME = "EIR"


def load_evaluation_results(path: str | Path) -> dict[str, Any]:
    """Read a `metrics_<split>.json` file written by `eir evaluate` and check its fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found. Run `eir evaluate --model MODEL_DIR` first (it writes metrics_<split>.json "
            "to the model folder's parent), pass its path with --metrics, or pass --no-evaluation."
        )
    results = json.loads(path.read_text(encoding="utf-8"))
    for key in ("split", "protocol", "num_studies", "systems"):
        if key not in results:
            raise ModelFolderError(f"{path}: missing the field {key!r}; expected the file that `eir evaluate` writes.")
    if MODEL_SYSTEM_NAME not in results["systems"]:
        raise ModelFolderError(
            f"{path}: `systems` has no {MODEL_SYSTEM_NAME!r} row, got {sorted(results['systems'])}."
        )
    return results


def evaluation_to_eval_results(results: dict[str, Any], dataset_name: str, dataset_type: str) -> list[Any]:
    """Turn the model's row of `eir evaluate` results into `huggingface_hub.EvalResult` entries.

    Scores that were not computed (NaN, such as METEOR without Java) are left out.
    """
    from huggingface_hub import EvalResult

    row = results["systems"][MODEL_SYSTEM_NAME]
    eval_results = []
    for score_name, (metric_type, metric_args) in _MODEL_INDEX_METRICS.items():
        value = row.get(score_name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        eval_results.append(
            EvalResult(
                task_type="image-text-to-text",
                task_name="Radiology report generation",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=results["split"],
                metric_type=metric_type,
                metric_name=score_name,
                metric_value=round(float(value), 4),
                metric_args=metric_args,
                metric_config=f"protocol={results['protocol']}",
            )
        )
    return eval_results


def _module_rows(config: dict[str, Any]) -> list[tuple[str, str]]:
    vision = config.get("vision_config") or {}
    vision_text = f"`{vision.get('model_type', 'unknown')}` backbone"
    if vision.get("hidden_sizes"):
        vision_text += f", stage widths {vision['hidden_sizes']}"
    rows = [
        (
            "image encoder",
            f"{vision_text}, {config.get('image_size')} x {config.get('image_size')} pixel inputs, "
            f"up to {config.get('max_views')} views combined by `{config.get('view_aggregation')}`",
        ),
        (
            "clinical history encoder",
            f"{config.get('history_num_layers')} transformer layers" if config.get("use_history") else "off",
        ),
        (
            "knowledge graph",
            (
                f"{len(config.get('knowledge_graph_nodes') or [])} general nodes, "
                f"{config.get('knowledge_graph_num_layers')} graph layers, entities of the "
                f"{config.get('retrieval_top_k')} nearest of {config.get('retrieval_bank_size')} training reports"
            )
            if config.get("use_knowledge_graph")
            else "off",
        ),
        (
            "fusion",
            f"`{config.get('fusion')}`, {config.get('fusion_num_layers')} layers" if config.get("fusion") != "none" else "off",
        ),
        (
            "report decoder",
            f"{config.get('num_hidden_layers')} transformer layers, hidden size {config.get('hidden_size')}, "
            f"{config.get('num_attention_heads')} heads, vocabulary {config.get('vocab_size')} SentencePiece pieces",
        ),
    ]
    return rows


def _generation_summary(generation_config: dict[str, Any]) -> str:
    names = ("num_beams", "max_new_tokens", "no_repeat_ngram_size", "repetition_penalty", "length_penalty")
    parts = [f"`{name}={generation_config[name]}`" for name in names if name in generation_config]
    return ", ".join(parts) if parts else "the transformers defaults"


def _count_parameters(model_dir: Path) -> str:
    from modeling_eir import EIRForReportGeneration

    model = EIRForReportGeneration.from_pretrained(model_dir)
    count = model.num_parameters()
    return f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count:,}"


def render_model_card(
    model_dir: str | Path,
    repo_id: str | None = None,
    evaluation: dict[str, Any] | None = None,
    license: str | None = None,
    model_name: str | None = None,
    template: str | Path | None = None,
    dataset_ids: tuple[str, ...] = (),
) -> Any:
    """Render the model card of a model folder and return it as a `huggingface_hub.ModelCard`.

    Args:
        model_dir: saved model folder (with `config.json`, `generation_config.json` and
            `training_data.json`).
        repo_id: Hub repository id shown in the usage code; defaults to `model_name`.
        evaluation: results as `load_evaluation_results` returns them, or None for a card
            without scores.
        license: Hub licence id. Defaults to the licence of the training data set; required when
            the data set is not one of `TRAINING_DATA_CARDS`.
        model_name: title of the card and name in `model-index`. Defaults to the repository name.
        template: Jinja template file; defaults to `model_cards/eir_model_card_template.md`.
        dataset_ids: Hub data set ids for the `datasets` metadata field. The local data sets have
            no Hub id, so the field is left out by default.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from .metrics import PROTOCOL_DESCRIPTIONS, format_metrics_table

    model_dir = Path(model_dir)
    template = Path(template or DEFAULT_TEMPLATE)
    if not template.is_file():
        raise FileNotFoundError(
            f"Model card template {template} not found. Pass the path of "
            "model_cards/eir_model_card_template.md from the EIR repository with --template."
        )
    config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    if config.get("model_type") != "eir":
        raise ModelFolderError(f"{model_dir / CONFIG_FILE}: expected model_type 'eir', got {config.get('model_type')!r}.")
    generation_path = model_dir / GENERATION_CONFIG_FILE
    generation_config = json.loads(generation_path.read_text(encoding="utf-8")) if generation_path.is_file() else {}

    dataset = _read_training_dataset(model_dir)
    dataset_name = str(dataset["name"])
    data_card = TRAINING_DATA_CARDS.get(dataset_name)
    if data_card is None and license is None:
        raise ModelFolderError(
            f"{model_dir / TRAINING_DATA_FILE}: the data set {dataset_name!r} has no licence on record "
            f"(known: {sorted(TRAINING_DATA_CARDS)}). Pass the Hub licence id of the weights with --license."
        )
    if data_card is None:
        data_card = TrainingDataCard(
            pretty_name=f"the data set `{dataset_name}`",
            index_name=dataset_name,
            license=license,
            license_name=license,
            description=f"The data set `{dataset_name}` (see its documentation for its source).",
            licence_text=f"The weights are released under `{license}`; check that the data licence allows it.",
            target_text="See the data set documentation for what the training target is.",
        )
    license = license or data_card.license

    model_name = model_name or (repo_id.split("/")[-1] if repo_id else f"eir-{dataset_name}")
    repo_id = repo_id or model_name
    eval_results = None
    evaluation_context = None
    if evaluation is not None:
        eval_results = evaluation_to_eval_results(evaluation, data_card.index_name, dataset_name) or None
        evaluation_context = {
            "protocol": evaluation["protocol"],
            "protocol_description": PROTOCOL_DESCRIPTIONS.get(evaluation["protocol"], evaluation["protocol"]),
            "split": evaluation["split"],
            "num_studies": evaluation["num_studies"],
            "num_train_studies": evaluation.get("num_train_studies", "an unknown number of"),
            "table": format_metrics_table(evaluation["systems"], protocol=evaluation["protocol"]),
        }

    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=["radiology-report-generation", "chest-x-ray", "medical-imaging", "eir", "custom_code"],
        datasets=list(dataset_ids) or None,
        model_name=model_name,
        eval_results=eval_results,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        repo_id=repo_id,
        max_views=config.get("max_views"),
        module_rows=_module_rows(config),
        num_parameters=_count_parameters(model_dir),
        generation_summary=_generation_summary(generation_config),
        dataset_pretty_name=data_card.pretty_name,
        dataset_description=" ".join(part for part in (data_card.description, describe_report_sections(dataset)) if part),
        dataset_licence_text=data_card.licence_text,
        retrieval_bank_text=describe_retrieval_bank(config),
        dataset_target_text=data_card.target_text,
        license_name=data_card.license_name if license == data_card.license else license,
        evaluation=evaluation_context,
    )


def _read_training_dataset(model_dir: Path) -> dict[str, Any]:
    """Return the `dataset` object of `training_data.json`: the data set name and its loader options."""
    path = model_dir / TRAINING_DATA_FILE
    if not path.is_file():
        raise ModelFolderError(
            f"{path} not found: the model card names the training data from this file, which `eir train` writes."
        )
    dataset = json.loads(path.read_text(encoding="utf-8")).get("dataset") or {}
    if not isinstance(dataset, dict) or "name" not in dataset:
        raise ModelFolderError(f"{path}: expected {{\"dataset\": {{\"name\": ...}}}}, got {dataset!r}.")
    return dataset


def _section_loaders() -> dict[str, Any]:
    # Imported here because the data loaders pull in `datasets`, which the rest of this module does not need.
    from .data.iu_xray import load_iu_xray_records
    from .data.mimic_cxr import load_mimic_cxr_records

    return {"iu_xray": load_iu_xray_records, "mimic_cxr": load_mimic_cxr_records}


def _join_names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def describe_report_sections(dataset: dict[str, Any]) -> str:
    """Describe which report sections a model was trained to write and read as history.

    `dataset` is the `dataset` object of `training_data.json`. Sections not set there are the
    defaults of the data set's loader. Returns "" for data sets without report sections.
    """
    loader = _section_loaders().get(str(dataset["name"]))
    if loader is None:
        return ""
    parameters = inspect.signature(loader).parameters
    target = [str(name).upper() for name in dataset.get("target_sections", parameters["target_sections"].default)]
    history = [str(name).upper() for name in dataset.get("history_sections", parameters["history_sections"].default)]
    text = f"The target is the {_join_names(target)} {'section' if len(target) == 1 else 'sections'} of each report"
    if history:
        text += f", and the clinical history is the {_join_names(history)} {'section' if len(history) == 1 else 'sections'}."
    else:
        text += ", and no clinical history is given."
    if dataset["name"] == "iu_xray" and tuple(target) != R2GEN_TARGET_SECTIONS:
        text += (
            f" Published IU X-ray results of R2Gen and the models compared with it use the "
            f"{_join_names(list(R2GEN_TARGET_SECTIONS))} section only as the target, so the scores of this model "
            "are not comparable with them."
        )
    return text


def describe_retrieval_bank(config: dict[str, Any]) -> str:
    """Describe the report text that the retrieval bank stores in the weights, from a `config.json` dict.

    Fields missing from `config` take the `EIRConfig` defaults.
    """
    from configuration_eir import EIRConfig

    bank_size = int(config.get("retrieval_bank_size") or 0)
    entities = config.get("max_entities_per_report", EIRConfig.max_entities_per_report)
    entity_length = config.get("max_entity_length", EIRConfig.max_entity_length)
    if not config.get("use_knowledge_graph", EIRConfig.use_knowledge_graph) or bank_size == 0:
        return (
            "This model has no retrieval bank, so its weights store no sentences of the training reports as "
            "token ids. The licence of the training reports still applies to the weights learnt from them."
        )
    return (
        f"The weights contain text of the training reports. The retrieval bank of the knowledge graph "
        f"(`encoder.knowledge_graph.bank_entity_ids` in `model.safetensors`) stores, for each of the {bank_size} "
        f"training reports, up to {entities} findings sentences of the training target, "
        f"each truncated to {entity_length} tokens, as token ids that the tokenizer in this "
        "repository decodes back to text. The licence and data use terms of the training reports therefore apply "
        "to these weights."
    )


def check_report_text_allowed(model_dir: str | Path, allow_report_text: bool = False) -> None:
    """Raise `ModelFolderError` when the model was trained on a data set whose report text may not be published.

    The data sets are those of `REPORT_TEXT_RESTRICTED_DATASETS`. `allow_report_text` skips the
    check, for a user who has permission to share the text.
    """
    model_dir = Path(model_dir)
    dataset_name = str(_read_training_dataset(model_dir)["name"])
    reason = REPORT_TEXT_RESTRICTED_DATASETS.get(dataset_name)
    if reason is None or allow_report_text:
        if reason is not None:
            logger.warning("Preparing a Hub folder for a model trained on %s, whose report text is restricted: %s.", dataset_name, reason)
        return
    raise ModelFolderError(
        f"{model_dir} was trained on {dataset_name!r}, and its weights contain sentences of the training reports "
        f"(the retrieval bank, `encoder.knowledge_graph.bank_entity_ids`). {reason}. Share the model only with "
        "users bound by the same agreement, and keep any Hub repository private and limited to them. If you have "
        "permission to publish the report text, pass --allow-report-text (allow_report_text=True)."
    )


# ----------------------------------------------------------------------------------------------
# Hub folder and upload
# ----------------------------------------------------------------------------------------------


def prepare_hub_folder(
    model_dir: str | Path,
    output_dir: str | Path,
    metrics_path: str | Path | None = None,
    include_evaluation: bool = True,
    allow_report_text: bool = False,
    **card_kwargs: Any,
) -> Path:
    """Write a Hub-ready copy of a model folder: weights, configs, processor files, code and card.

    Args:
        model_dir: model folder written by `eir train`.
        output_dir: folder to write. Existing files of the same names are replaced.
        metrics_path: `metrics_<split>.json` from `eir evaluate`. Defaults to
            `metrics_test.json` in the model folder's parent, where `eir evaluate` writes it.
        include_evaluation: False writes a card without scores and reads no metrics file.
        allow_report_text: write the folder even when the model was trained on a data set of
            `REPORT_TEXT_RESTRICTED_DATASETS`, whose report text the retrieval bank in the weights
            contains. Set it only with permission to publish that text.
        card_kwargs: passed to `render_model_card` (`repo_id`, `license`, `model_name`,
            `template`, `dataset_ids`).

    Returns the output folder. Raises `ModelFolderError` when a required file is missing, or when
    the training reports may not be published (see `check_report_text_allowed`).
    """
    model_dir = Path(model_dir)
    output_dir = Path(output_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"Model folder {model_dir} not found; expected the `model` folder written by `eir train`.")
    if output_dir.resolve() == model_dir.resolve():
        raise ValueError(f"output_dir must differ from the model folder, got {output_dir} for both.")
    missing = [name for name in REQUIRED_MODEL_FILES if name not in REMOTE_CODE_FILES and not (model_dir / name).is_file()]
    if missing:
        raise ModelFolderError(f"{model_dir} is missing {missing}; expected a model folder written by `eir train`.")
    check_report_text_allowed(model_dir, allow_report_text=allow_report_text)

    evaluation = None
    if include_evaluation:
        metrics_path = Path(metrics_path) if metrics_path else model_dir.resolve().parent / "metrics_test.json"
        evaluation = load_evaluation_results(metrics_path)

    # 1. Weights, configs and processor files. Source files are written fresh in step 2.
    output_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted(model_dir.iterdir()):
        if source.is_file() and source.suffix != ".py" and source.name != "README.md":
            shutil.copy2(source, output_dir / source.name)

    # 2. Remote code from the installed packages, and the auto_map entries that name it.
    add_remote_code(output_dir)

    # 3. Model card.
    card = render_model_card(model_dir, evaluation=evaluation, **card_kwargs)
    card.save(output_dir / "README.md")

    missing = missing_model_files(output_dir) + ([] if (output_dir / "README.md").is_file() else ["README.md"])
    if missing:
        raise ModelFolderError(f"{output_dir} is incomplete after writing: missing {missing}.")
    logger.info("Hub folder written to %s", output_dir)
    return output_dir


def upload_hub_folder(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    commit_message: str = "Upload EIR model",
) -> str:
    """Create the Hub model repository `repo_id` if needed and upload `folder` to it.

    Authentication comes from `HF_TOKEN` or `hf auth login`. Returns the URL of the commit.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    missing = missing_model_files(folder) + ([] if (folder / "README.md").is_file() else ["README.md"])
    if missing:
        raise ModelFolderError(f"{folder} is missing {missing}; write it with `prepare_hub_folder` first.")
    if repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'user-or-organisation/name', got {repo_id!r}.")
    api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message
    )
    logger.info("Uploaded %s to %s", folder, repo_id)
    return str(getattr(commit, "commit_url", commit))


# ----------------------------------------------------------------------------------------------
# Command line (`scripts/push_to_hub.py` and `eir push`)
# ----------------------------------------------------------------------------------------------


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the Hub preparation command to `parser`."""
    parser.add_argument("--model", required=True, help="Saved model folder (the `model` folder written by `eir train`).")
    parser.add_argument(
        "--output-dir",
        help="Folder to write the Hub files to. Default: a `hub` folder beside the model folder.",
    )
    parser.add_argument(
        "--metrics",
        help="metrics_<split>.json written by `eir evaluate`, whose scores go into the model card. "
        "Default: metrics_<SPLIT>.json in the model folder's parent.",
    )
    parser.add_argument("--split", default="test", help="Split of the default metrics file. Default: test.")
    parser.add_argument(
        "--no-evaluation", action="store_true", help="Write the model card without scores and read no metrics file."
    )
    parser.add_argument(
        "--repo-id",
        help="Hub repository id (user-or-organisation/name). It names the model in the card, and the folder "
        "is uploaded to it unless --dry-run is given.",
    )
    parser.add_argument("--dry-run", action="store_true", help="Write the folder only; never contact the Hub.")
    parser.add_argument("--private", action="store_true", help="Create the Hub repository as private.")
    parser.add_argument(
        "--license",
        help="Hub licence id of the weights. Default: from the training data (cc-by-nc-sa-4.0 for the COVID-19 "
        "image data collection, cc-by-nc-nd-4.0 for IU X-ray).",
    )
    parser.add_argument("--model-name", help="Model name in the card title and model-index. Default: the name part of --repo-id, else eir-<data set name>.")
    parser.add_argument(
        "--dataset-id",
        action="append",
        default=[],
        help="Hub data set id for the card's `datasets` field; repeat for several. Default: none.",
    )
    parser.add_argument("--template", help=f"Jinja model card template. Default: {DEFAULT_TEMPLATE}.")
    parser.add_argument(
        "--allow-report-text",
        action="store_true",
        help="Write the folder for a model trained on MIMIC-CXR, whose data use agreement forbids sharing report "
        "text. The weights contain sentences of the training reports, so give this only with permission to publish them.",
    )
    parser.add_argument("--commit-message", default="Upload EIR model", help="Commit message of the upload.")


@dataclass(frozen=True)
class PushResult:
    """Outcome of `push_from_args`: the folder written and the commit URL (None when not uploaded)."""

    folder: Path
    commit_url: str | None


def push_from_args(args: argparse.Namespace) -> PushResult:
    """Prepare the Hub folder from parsed `add_push_arguments` options and upload it when asked.

    The upload happens only with `--repo-id` and without `--dry-run`.
    """
    model_dir = Path(args.model)
    output_dir = Path(args.output_dir) if args.output_dir else model_dir.resolve().parent / "hub"
    metrics_path = Path(args.metrics) if args.metrics else model_dir.resolve().parent / f"metrics_{args.split}.json"
    folder = prepare_hub_folder(
        model_dir,
        output_dir,
        metrics_path=metrics_path,
        include_evaluation=not args.no_evaluation,
        allow_report_text=args.allow_report_text,
        repo_id=args.repo_id,
        license=args.license,
        model_name=args.model_name,
        template=args.template,
        dataset_ids=tuple(args.dataset_id),
    )
    if args.dry_run or not args.repo_id:
        logger.info("Not uploading %s: %s", folder, "dry run" if args.dry_run else "no --repo-id given")
        return PushResult(folder=folder, commit_url=None)
    commit_url = upload_hub_folder(folder, args.repo_id, private=args.private, commit_message=args.commit_message)
    return PushResult(folder=folder, commit_url=commit_url)
