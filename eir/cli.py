"""The `eir` command: `eir train`, `eir evaluate`, `eir generate` and `eir push`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


def _add_train_parser(subparsers) -> None:
    from .recipes import TrainingSettings, available_recipes

    parser = subparsers.add_parser(
        "train",
        help="Train EIR from a recipe.",
        description="Train EIR from a recipe (YAML). Options below override the recipe's `training` section.",
    )
    parser.add_argument(
        "--recipe", default="quickstart_covid",
        help=f"Recipe name ({', '.join(available_recipes())}) or path to a YAML file. Default: quickstart_covid.",
    )
    parser.add_argument("--data-dir", help="Data root holding the data set folders. Default: $EIR_DATA_DIR or ../shared/data beside the checkout.")
    parser.add_argument("--output-dir", default="outputs/quickstart", help="Folder for checkpoints, split file and the final model (in OUTPUT_DIR/model).")
    parser.add_argument("--resume-from", help="Checkpoint folder to resume from, or 'latest' for the newest one in OUTPUT_DIR/checkpoints.")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="Delete the checkpoints and model of an earlier run in OUTPUT_DIR first (without it such a folder is rejected).",
    )
    helps = {
        "epochs": "number of passes over the training split",
        "batch_size": "studies per optimisation step and process",
        "eval_batch_size": "studies per batch when scoring or generating",
        "learning_rate": "peak AdamW learning rate",
        "weight_decay": "AdamW weight decay",
        "warmup_ratio": "fraction of the steps with linear warm-up before the cosine decay",
        "max_grad_norm": "gradient norm clipping threshold (0 disables)",
        "mixed_precision": "'no', 'bf16' or 'fp16' (fp16 needs a GPU)",
        "seed": "random seed for initialisation and shuffling",
        "num_workers": "data loader worker processes",
        "cache_images": "keep preprocessed images in memory: true or false",
        "selection_metric": "validation metric that picks the saved model (BLEU-4, CIDEr, ROUGE-L, loss, ...)",
        "eval_every_epochs": "score the validation split every N epochs (and after the last)",
        "bank_refresh_epochs": "recompute the retrieval bank every N epochs (0: only before scoring)",
        "keep_checkpoints": "number of epoch checkpoints kept on disk",
        "max_new_tokens": "maximum tokens generated per report during validation",
        "num_beams": "beam width during validation",
        "limit_train_studies": "use only the first N training studies (smoke tests)",
        "limit_eval_studies": "use only the first N validation studies (smoke tests)",
        "freeze_backbone": "keep the vision backbone fixed (no gradient, eval-mode batch norm): true or false",
        "cache_backbone_features": "compute the frozen backbone's training-image features once and reuse them: true or false",
    }
    converters = {"int": int, "float": float, "bool": _parse_bool, "str": str, "int | None": int}
    for field in dataclasses.fields(TrainingSettings):
        option = "--" + field.name.replace("_", "-")
        parser.add_argument(
            option, dest=field.name, type=converters[str(field.type)], default=None, help=helps[field.name]
        )


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_evaluate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Score a saved model on a split beside the baselines.",
        description="Generate reports for a split and print BLEU-1..4, METEOR, ROUGE-L and CIDEr beside three baselines.",
    )
    parser.add_argument("--model", required=True, help="Saved model folder (the `model` folder written by `eir train`).")
    parser.add_argument("--split", default="test", help="Split to score: test, validation or train. Default: test.")
    parser.add_argument("--data-dir", help="Data root. Default: $EIR_DATA_DIR or ../shared/data beside the checkout.")
    parser.add_argument("--protocol", default="raw", choices=["raw", "r2gen"], help="raw: full references; r2gen: R2Gen cleaning and truncation.")
    parser.add_argument("--batch-size", type=int, default=16, help="Studies per generation batch.")
    parser.add_argument("--num-beams", type=int, help="Beam width (default: the model's generation_config).")
    parser.add_argument("--max-new-tokens", type=int, help="Maximum generated tokens per report (default: generation_config).")
    parser.add_argument("--no-meteor", action="store_true", help="Skip METEOR (it needs Java).")
    parser.add_argument("--output-dir", help="Where to write metrics, predictions and the table. Default: the model folder's parent.")


def _add_generate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="Write reports for studies.",
        description=(
            "Write a report for one study (--image, repeatable, plus --history) or for a batch (--studies): "
            "a folder with one sub-folder per study (images plus an optional history.txt), a folder of images "
            "(one study each), or a JSON Lines file with {\"study_id\", \"images\": [...], \"history\"} per line."
        ),
    )
    parser.add_argument("--model", required=True, help="Saved model folder.")
    parser.add_argument("--image", action="append", default=[], help="Image file of the study (PNG, JPEG or DICOM); repeat for several views.")
    parser.add_argument("--history", default="", help="Clinical history text of the study.")
    parser.add_argument("--studies", help="Folder or JSON Lines file of studies for batch generation.")
    parser.add_argument("--batch-size", type=int, default=8, help="Studies per batch.")
    parser.add_argument("--num-beams", type=int, help="Beam width (default: the model's generation_config).")
    parser.add_argument("--max-new-tokens", type=int, help="Maximum generated tokens per report.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object per study instead of plain text.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eir", description="EIR chest X-ray report generation.")
    parser.add_argument("--log-level", default="INFO", help="Logging level (DEBUG, INFO, WARNING). Default: INFO.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(subparsers)
    _add_evaluate_parser(subparsers)
    _add_generate_parser(subparsers)
    _add_push_parser(subparsers)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from .recipes import load_recipe
    from .training import train

    recipe = load_recipe(args.recipe)
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(recipe.training)
        if getattr(args, field.name, None) is not None
    }
    recipe.training = dataclasses.replace(recipe.training, **overrides)
    train(recipe, args.output_dir, data_dir=args.data_dir, resume_from=args.resume_from, overwrite=args.overwrite)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_model
    from .training import load_training_data_records

    model_dir = _check_model_dir(args.model)
    split_records = load_training_data_records(model_dir, args.data_dir)
    generation_kwargs = {}
    if args.num_beams:
        generation_kwargs["num_beams"] = args.num_beams
    if args.max_new_tokens:
        generation_kwargs["max_new_tokens"] = args.max_new_tokens
    output_dir = Path(args.output_dir) if args.output_dir else model_dir.resolve().parent
    results = evaluate_model(
        model_dir, split_records, split=args.split, protocol=args.protocol, batch_size=args.batch_size,
        output_dir=output_dir, include_meteor=not args.no_meteor, generation_kwargs=generation_kwargs,
    )
    print(f"\n{results['num_studies']} {args.split} studies, {results['num_train_studies']} training studies; "
          f"generation {results['generation_time_s']} s, total {results['wall_time_s']} s")
    print(results["table"])
    print(f"Metrics, predictions and table written to {output_dir}")
    return 0


def _check_model_dir(path: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"--model {path}: not a saved EIR model folder (no config.json there). Pass the `model` folder that "
            "`eir train` writes, e.g. outputs/quickstart/model."
        )
    return folder


def collect_studies(args: argparse.Namespace) -> list[dict]:
    """Turn --image/--history or --studies into a list of {"study_id", "images", "history"}."""
    if args.studies:
        source = Path(args.studies)
        if source.is_file():
            studies = []
            for line_number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                location = f"{source}:{line_number}"
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as error:
                    raise SystemExit(f"{location}: invalid JSON ({error.msg}). Expected one object per line.")
                if not isinstance(entry, dict):
                    raise SystemExit(f"{location}: expected a JSON object such as {{\"images\": [\"frontal.png\"], \"history\": \"...\"}}, got {type(entry).__name__}.")

                # `images`: a non-empty list of paths; a single path is accepted as a list of one.
                images = entry.get("images")
                if isinstance(images, str):
                    images = [images]
                if not isinstance(images, list) or not images or not all(isinstance(path, str) and path for path in images):
                    raise SystemExit(f"{location}: `images` must be a non-empty list of image paths (strings), got {images!r}.")

                # `history`: a string; absent or null means no history.
                history = entry.get("history")
                if history is None:
                    history = ""
                if not isinstance(history, str):
                    raise SystemExit(f"{location}: `history` must be a string or null, got {type(history).__name__} {history!r}.")

                base = source.parent
                paths = [str(path if Path(path).is_absolute() else base / path) for path in images]
                studies.append({"study_id": str(entry.get("study_id", line_number)), "images": paths, "history": history})
            return studies
        if source.is_dir():
            subfolders = sorted(path for path in source.iterdir() if path.is_dir())
            if subfolders:
                studies = []
                for folder in subfolders:
                    images = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                    history_file = folder / "history.txt"
                    history = history_file.read_text(encoding="utf-8").strip() if history_file.is_file() else ""
                    if images:
                        studies.append({"study_id": folder.name, "images": images, "history": history})
                    else:
                        logger.warning("Study folder %s contains no PNG, JPEG or DICOM file; skipped.", folder)
                return studies
            return [
                {"study_id": path.stem, "images": [str(path)], "history": args.history}
                for path in sorted(source.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES
            ]
        raise SystemExit(f"--studies: {source} is neither a folder nor a JSON Lines file.")
    if not args.image:
        raise SystemExit("eir generate: pass --image FILE (repeat for several views) or --studies PATH.")
    return [{"study_id": Path(args.image[0]).stem, "images": list(args.image), "history": args.history}]


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from modeling_eir import EIRForReportGeneration
    from processing_eir import EIRProcessor

    if args.image and args.studies:
        raise SystemExit("eir generate: pass either --image (one study) or --studies (a batch), not both.")
    _check_model_dir(args.model)
    studies = collect_studies(args)
    if not studies:
        raise SystemExit("eir generate: no study found in the input.")
    model = EIRForReportGeneration.from_pretrained(args.model)
    processor = EIRProcessor.from_pretrained(args.model)
    model.eval()
    generation_kwargs = {}
    if args.num_beams:
        generation_kwargs["num_beams"] = args.num_beams
    if args.max_new_tokens:
        generation_kwargs["max_new_tokens"] = args.max_new_tokens

    failures = 0
    for start in range(0, len(studies), args.batch_size):
        chunk = studies[start : start + args.batch_size]
        inputs = processor(images=[study["images"] for study in chunk], history=[study["history"] for study in chunk],
                           errors="skip")
        readable = inputs["pixel_mask"].sum(dim=1) > 0
        results = [""] * len(chunk)
        if readable.any():
            selected = {key: value[readable] for key, value in inputs.items()}
            with torch.no_grad():
                output_ids = model.generate(**selected, **generation_kwargs)
            texts = processor.batch_decode(output_ids, skip_special_tokens=True)
            for position, text in zip(readable.nonzero().flatten().tolist(), texts):
                results[position] = text.strip()
        for study, text, ok in zip(chunk, results, readable.tolist()):
            if not ok:
                failures += 1
                message = f"no readable image among {study['images']}"
                print(json.dumps({"study_id": study["study_id"], "error": message}) if args.json
                      else f"[{study['study_id']}] ERROR: {message}", file=sys.stdout if args.json else sys.stderr)
                continue
            if args.json:
                print(json.dumps({"study_id": study["study_id"], "images": study["images"], "history": study["history"], "report": text}))
            elif len(studies) == 1:
                print(text)
            else:
                print(f"[{study['study_id']}] {text}")
    return 1 if failures == len(studies) else 0


def _add_push_parser(subparsers) -> None:
    from .hub import add_push_arguments

    parser = subparsers.add_parser(
        "push",
        help="Prepare a model folder for the Hugging Face Hub and upload it when asked.",
        description=(
            "Write a Hub-ready copy of a model folder (weights, configs, processor, remote code and a model card "
            "with the scores of `eir evaluate`), and upload it with HfApi.upload_folder when --repo-id is given "
            "without --dry-run."
        ),
    )
    add_push_arguments(parser)


def run_push(args: argparse.Namespace) -> int:
    from .hub import push_from_args

    result = push_from_args(args)
    print(f"Hub folder written to {result.folder}")
    if result.commit_url is None:
        print("Nothing uploaded (--dry-run or no --repo-id).")
    else:
        print(f"Uploaded to {args.repo_id}: {result.commit_url}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # accelerate warns at every checkpoint that it dropped the tied lm_head weight. The model
    # re-ties it from the input embedding on loading, so the warning is noise here.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    import eir  # noqa: F401  (registers the Auto classes)

    handlers = {"train": run_train, "evaluate": run_evaluate, "generate": run_generate, "push": run_push}
    return handlers[args.command](args)


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


def console_main() -> int:
    """Entry point of the `eir` command: user errors print one line instead of a traceback."""
    try:
        return main()
    except USER_ERRORS as error:
        print(f"eir: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(console_main())
