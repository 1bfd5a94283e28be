"""Prepare a trained EIR model folder for the Hugging Face Hub and upload it when asked.

The Hub folder contains the weights, config, generation config, processor files, the model-side code
as remote code, and a model card (`README.md`) with the scores of `eir evaluate`. Nothing is sent
to the Hub unless `--repo-id` is given without `--dry-run`.

Examples:
    python scripts/push_to_hub.py --model outputs/quickstart/model --dry-run
    python scripts/push_to_hub.py --model outputs/quickstart/model --repo-id my-lab/eir-covid --private
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from eir.cli import run_push
from eir.hub import add_push_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="push_to_hub.py",
        description=(
            "Write a Hub-ready copy of an EIR model folder (weights, configs, processor, remote code, model card) "
            "and upload it with HfApi.upload_folder when --repo-id is given without --dry-run. "
            "Authentication for the upload comes from HF_TOKEN or `hf auth login`."
        ),
    )
    add_push_arguments(parser)
    parser.add_argument("--log-level", default="INFO", help="Logging level (DEBUG, INFO, WARNING). Default: INFO.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import eir  # noqa: F401  (registers the Auto classes)

    return run_push(args)


if __name__ == "__main__":
    sys.exit(main())
