"""Image encoder ablation of EIR on the COVID-19 image data collection: initialisation x freezing.

Runs, one after another:

1. C2L pre-training of the small backbone (`scripts/pretrain_c2l.py --backbone resnet-small`) on
   the images of the training split only (skipped with `--c2l-backbone DIR`).
2. Four `eir train` runs of the `quickstart_covid` recipe with the same epochs, seed and split:
   random initialisation fine-tuned, random initialisation frozen (random features), C2L
   fine-tuned and C2L frozen (with cached backbone features). The saved model of each run is the
   one selected on the validation split.
3. `eir evaluate --split test --protocol raw` once per run, and a bootstrap over the test studies
   (resampled with replacement) of each metric and of the paired difference to the random,
   fine-tuned run.

Prints a Markdown table and writes `encoder_ablation.json` in the output folder. Example:

    python benchmarks/encoder_ablation.py --output-dir outputs/encoder_ablation --epochs 3 --c2l-epochs 6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from eir.metrics import compute_report_metrics  # noqa: E402
from eir.recipes import RECIPES_DIR  # noqa: E402

RUNS = (
    # name, use C2L weights, freeze the backbone
    ("random_finetuned", False, False),
    ("random_frozen", False, True),
    ("c2l_finetuned", True, False),
    ("c2l_frozen", True, True),
)
BOOTSTRAP_METRICS = ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Encoder ablation (random vs C2L, frozen vs fine-tuned) of EIR.")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/encoder_ablation"), help="Folder for every run.")
    parser.add_argument("--data-dir", help="Data root. Default: $EIR_DATA_DIR or the default data folder.")
    parser.add_argument("--recipe", default="quickstart_covid", help="Recipe name or YAML path. Default: quickstart_covid.")
    parser.add_argument("--epochs", type=int, default=3, help="EIR training epochs, the same for every run. Default: 3.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of every EIR run. Default: 0.")
    parser.add_argument("--validation-max-new-tokens", type=int, default=60,
                        help="Tokens generated per report when scoring the validation split during training. Default: 60.")
    parser.add_argument("--c2l-backbone", type=Path, help="Existing C2L backbone folder; skips pre-training.")
    parser.add_argument("--c2l-epochs", type=int, default=6, help="C2L pre-training epochs. Default: 6.")
    parser.add_argument("--c2l-batch-size", type=int, default=32, help="C2L images per step. Default: 32.")
    parser.add_argument("--c2l-queue-size", type=int, default=128,
                        help="C2L queue size; below the number of training images. Default: 128.")
    parser.add_argument("--runs", nargs="*", default=[name for name, _, _ in RUNS], help="Subset of the runs to do.")
    parser.add_argument("--no-meteor", action="store_true", help="Skip METEOR in the test evaluation.")
    parser.add_argument("--bootstrap-samples", type=int, default=1000, help="Bootstrap resamples of the test studies. Default: 1000.")
    return parser


def run_command(command: list[str], log_file: Path) -> float:
    """Run a command with its output in `log_file`; return the wall time in seconds."""
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    with open(log_file, "w", encoding="utf-8") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY, env={**os.environ})
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"Command failed with exit code {result.returncode} after {elapsed:.0f} s; see {log_file}.")
    print(f"  done in {elapsed:.0f} s", flush=True)
    return elapsed


def write_recipe(recipe: str, vision_weights: Path | None, path: Path) -> Path:
    source = Path(recipe) if Path(recipe).suffix else RECIPES_DIR / f"{recipe}.yaml"
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    if vision_weights is not None:
        raw["model"]["vision_weights"] = str(vision_weights.resolve())
    raw["name"] = path.stem
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def bootstrap(predictions: dict[str, list[dict]], reference_run: str, samples: int, seed: int = 0) -> dict[str, Any]:
    """Return 95% percentile intervals of each metric per run and of its paired difference to `reference_run`."""
    generator = random.Random(seed)
    names = list(predictions)
    count = len(predictions[names[0]])
    draws: dict[str, dict[str, list[float]]] = {name: {metric: [] for metric in BOOTSTRAP_METRICS} for name in names}
    for _ in range(samples):
        indices = [generator.randrange(count) for _ in range(count)]
        for name in names:
            rows = predictions[name]
            scores = compute_report_metrics(
                [rows[i]["prediction"] for i in indices], [rows[i]["reference"] for i in indices],
                protocol="raw", include_meteor=False,
            )
            for metric in BOOTSTRAP_METRICS:
                draws[name][metric].append(float(scores[metric]))

    def interval(values: list[float]) -> list[float]:
        ordered = sorted(values)
        return [ordered[int(0.025 * (len(ordered) - 1))], ordered[int(0.975 * (len(ordered) - 1))]]

    result: dict[str, Any] = {}
    for name in names:
        result[name] = {metric: {"interval_95": interval(values)} for metric, values in draws[name].items()}
        if name != reference_run and reference_run in draws:
            for metric in BOOTSTRAP_METRICS:
                differences = [a - b for a, b in zip(draws[name][metric], draws[reference_run][metric])]
                result[name][metric]["difference_to_reference_95"] = interval(differences)
                result[name][metric]["share_of_resamples_above_reference"] = sum(d > 0 for d in differences) / samples
    return result


def format_table(results: dict[str, Any]) -> str:
    metrics = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
    lines = [
        "| run | encoder init | backbone | best epoch (validation) | " + " | ".join(metrics) + " | train s | test eval s |",
        "|---|---|---|---|" + "---|" * len(metrics) + "---|---|",
    ]
    for name, row in results["runs"].items():
        scores = row["test"]
        cells = []
        for metric in metrics:
            value = scores.get(metric)
            interval = row.get("bootstrap", {}).get(metric, {}).get("interval_95")
            text = "-" if value is None or value != value else f"{value:.3f}"
            if interval:
                text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
            cells.append(text)
        lines.append(
            f"| {name} | {row['init']} | {row['backbone']} | {row['best_epoch']} | " + " | ".join(cells)
            + f" | {row['train_wall_s']:.0f} | {row['evaluate_wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output_dir: Path = args.output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    data_args = ["--data-dir", args.data_dir] if args.data_dir else []
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "runs": {},
    }

    # 1. C2L pre-training on the training split's images.
    backbone_dir = args.c2l_backbone
    if backbone_dir is None:
        command = [
            sys.executable, "scripts/pretrain_c2l.py", "--dataset", "covid_chestxray", "--split", "train",
            "--backbone", "resnet-small", "--image-size", "224", "--epochs", str(args.c2l_epochs),
            "--batch-size", str(args.c2l_batch_size), "--queue-size", str(args.c2l_queue_size),
            "--seed", str(args.seed), "--output-dir", str(output_dir / "c2l"), *data_args,
        ]
        results["c2l"] = {"command": " ".join(command), "wall_s": run_command(command, output_dir / "c2l.log")}
        results["c2l"]["summary"] = json.loads((output_dir / "c2l" / "pretraining_summary.json").read_text())
        backbone_dir = output_dir / "c2l" / "backbone"

    # 2. and 3. Training, selection on validation, one test evaluation per run.
    predictions: dict[str, list[dict]] = {}
    for name, use_c2l, frozen in RUNS:
        if name not in args.runs:
            continue
        recipe = write_recipe(args.recipe, backbone_dir if use_c2l else None, output_dir / f"recipe_{name}.yaml")
        run_dir = output_dir / name
        train_command = [
            "eir", "--log-level", "WARNING", "train", "--recipe", str(recipe), "--output-dir", str(run_dir),
            "--epochs", str(args.epochs), "--eval-every-epochs", "1", "--seed", str(args.seed),
            "--max-new-tokens", str(args.validation_max_new_tokens), *data_args,
        ]
        if frozen:
            train_command += ["--freeze-backbone", "true", "--cache-backbone-features", "true"]
        train_wall = run_command(train_command, output_dir / f"{name}_train.log")
        evaluate_command = [
            "eir", "--log-level", "WARNING", "evaluate", "--model", str(run_dir / "model"), "--split", "test",
            "--protocol", "raw", "--output-dir", str(run_dir / "test"), *data_args,
        ]
        if args.no_meteor:
            evaluate_command.append("--no-meteor")
        evaluate_wall = run_command(evaluate_command, output_dir / f"{name}_evaluate.log")

        summary = json.loads((run_dir / "training_summary.json").read_text())
        metrics = json.loads((run_dir / "test" / "metrics_test.json").read_text())
        with open(run_dir / "test" / "predictions_test.jsonl", encoding="utf-8") as handle:
            predictions[name] = [json.loads(line) for line in handle]
        results["runs"][name] = {
            "init": "C2L" if use_c2l else "random",
            "backbone": "frozen" if frozen else "fine-tuned",
            "best_epoch": summary["best_epoch"],
            "validation_selection": {"metric": summary["selection_metric"], "score": summary["best_score"]},
            "test": {key: value for key, value in metrics["systems"]["EIR"].items() if isinstance(value, (int, float))},
            "baselines_test": {system: row for system, row in metrics["systems"].items() if system != "EIR"},
            "train_command": " ".join(train_command),
            "evaluate_command": " ".join(evaluate_command),
            "train_wall_s": train_wall,
            "evaluate_wall_s": evaluate_wall,
        }
        (output_dir / "encoder_ablation.json").write_text(json.dumps(results, indent=2, default=str))

    # 4. Spread over test studies.
    if predictions and args.bootstrap_samples > 0:
        spread = bootstrap(predictions, "random_finetuned", args.bootstrap_samples, seed=args.seed)
        for name, values in spread.items():
            results["runs"][name]["bootstrap"] = values
    results["table"] = format_table(results)
    (output_dir / "encoder_ablation.json").write_text(json.dumps(results, indent=2, default=str))
    print(results["table"])
    print(f"Results written to {output_dir / 'encoder_ablation.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
