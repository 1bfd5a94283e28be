"""Pre-train a ResNet on radiographs with Comparing to Learn (C2L) and export it as an EIR backbone.

Runs on one CPU, or under `accelerate launch` on several processes or GPUs:

    python scripts/pretrain_c2l.py --dataset covid_chestxray --backbone resnet-small --output-dir outputs/c2l
    accelerate launch scripts/pretrain_c2l.py --image-dir /path/to/radiographs --output-dir outputs/c2l

Outputs in OUTPUT_DIR: `args.json` (the resolved arguments), `checkpoints/epoch-N/` (resumable
with `--resume-from latest` or a folder), `pretraining_summary.json`, and `backbone/`, a
transformers `ResNetModel` folder (`save_pretrained`, the student network) plus
`c2l_checkpoint.safetensors` with student, teacher and queue. Point a recipe's
`model.vision_weights` at `OUTPUT_DIR/backbone` to start EIR from it.

Learning-rate schedule: step decay, the rate times `--lr-gamma` (0.1) at each fraction of the
epochs in `--lr-milestones` (60% and 80%), applied per epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eir.c2l import (  # noqa: E402
    BACKBONE_CONFIGS,
    AugmentationSettings,
    C2LModel,
    RadiographAugmentation,
    RadiographDataset,
    build_backbone_config,
    collate_view_pairs,
    find_radiographs,
    step_decay_factor,
)

logger = logging.getLogger("pretrain_c2l")

STATE_FILE = "c2l_state.json"
CHECKPOINT_FILE = "c2l_checkpoint.safetensors"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain_c2l",
        description="Self-supervised C2L pre-training of a ResNet backbone on radiographs (student, EMA teacher, "
        "queue of negatives, mixup of images and teacher features).",
    )
    data = parser.add_argument_group("data (one source)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--image-dir", type=Path, help="Folder searched recursively for PNG, JPEG and DICOM files.")
    source.add_argument(
        "--dataset", choices=["covid_chestxray", "iu_xray"],
        help="Use the images of one split of a data set loader of eir.data (see --split).",
    )
    data.add_argument("--split", default="train", help="Split of --dataset whose images are used. Default: train, so "
                      "no validation or test image is seen in pre-training.")
    data.add_argument("--data-dir", help="Data root for --dataset. Default: $EIR_DATA_DIR or the default data folder.")
    data.add_argument("--limit-images", type=int, help="Use only the first N images (sorted by path); for smoke tests.")
    data.add_argument("--preload", action=argparse.BooleanOptionalAction, default=True,
                      help="Decode every image once at start and keep it in memory (float16). Default: on.")
    data.add_argument("--max-side", type=int, default=512,
                      help="Longest side, in pixels, to which larger images are downscaled before cropping. Default: 512.")

    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=sorted(BACKBONE_CONFIGS), default="resnet50",
                       help="resnet50 (bottleneck, 3-4-6-3 blocks, 2048 features) or resnet-small (the vision_config "
                       "of the quickstart_covid recipe, 256 features). Default: resnet50.")
    model.add_argument("--num-channels", type=int, choices=[1, 3], default=3,
                       help="Input channels of the backbone; the gray image is repeated for 3. Default: 3.")
    model.add_argument("--embedding-size", type=int, default=128, help="Size of the contrastive embedding. Default: 128.")
    model.add_argument("--queue-size", type=int, default=16384, help="Number of negative teacher embeddings kept. Default: 16384.")
    model.add_argument("--ema-momentum", type=float, default=0.999,
                       help="EMA coefficient of the teacher update (teacher = m * teacher + (1 - m) * student). Default: 0.999.")
    model.add_argument("--temperature", type=float, default=0.07, help="Softmax temperature of the InfoNCE terms. Default: 0.07.")
    model.add_argument("--mixup-alpha", type=float, default=1.0,
                       help="Parameter alpha of the Beta(alpha, alpha) mixing coefficient. Default: 1.0 (uniform "
                       "lambda; not checked against the value C2L used).")
    model.add_argument("--teacher-bn-splits", type=int, default=2,
                       help="Sub-batches in which the teacher encodes the shuffled batch (shuffled batch norm on one "
                       "device). Default: 2.")

    augmentation = parser.add_argument_group("augmentation")
    augmentation.add_argument("--image-size", type=int, default=224, help="Side of the square crops, in pixels. Default: 224.")
    augmentation.add_argument("--crop-scale", type=float, nargs=2, default=[0.4, 1.0], metavar=("MIN", "MAX"),
                              help="Range of the crop area as a fraction of the image area. Default: 0.4 1.0.")
    augmentation.add_argument("--max-rotation", type=float, default=10.0, help="Largest rotation either way, in degrees. Default: 10.")
    augmentation.add_argument("--brightness", type=float, default=0.2,
                              help="Largest additive brightness change, in units of the [0, 1] intensity range. Default: 0.2.")
    augmentation.add_argument("--contrast", type=float, default=0.2,
                              help="Largest relative contrast change around the mean (0.2: x0.8 to x1.2). Default: 0.2.")
    augmentation.add_argument("--horizontal-flip", action=argparse.BooleanOptionalAction, default=False,
                              help="Flip left-right with probability 0.5. Default: off, because laterality matters in "
                              "a chest radiograph (heart side, R/L markers).")

    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument("--epochs", type=int, default=200, help="Passes over the images. Default: 200.")
    optimisation.add_argument("--batch-size", type=int, default=64, help="Images per step and process. Default: 64.")
    optimisation.add_argument("--lr", type=float, default=0.03, help="Initial SGD learning rate. Default: 0.03.")
    optimisation.add_argument("--momentum", type=float, default=0.9, help="SGD momentum. Default: 0.9.")
    optimisation.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay. Default: 1e-4.")
    optimisation.add_argument("--lr-milestones", type=float, nargs="*", default=[0.6, 0.8], metavar="FRACTION",
                              help="Fractions of the epochs after which the rate is multiplied by --lr-gamma. Default: 0.6 0.8.")
    optimisation.add_argument("--lr-gamma", type=float, default=0.1, help="Factor of each step decay. Default: 0.1.")
    optimisation.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
                              help="Accelerate mixed precision (fp16 needs a GPU). Default: no.")
    optimisation.add_argument("--num-workers", type=int, default=0, help="Data loader worker processes. Default: 0.")
    optimisation.add_argument("--seed", type=int, default=0, help="Random seed. Default: 0.")

    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", type=Path, default=Path("outputs/c2l"), help="Folder for all outputs. Default: outputs/c2l.")
    output.add_argument("--resume-from", help="Checkpoint folder, or 'latest' for the newest one in OUTPUT_DIR/checkpoints.")
    output.add_argument("--keep-checkpoints", type=int, default=2, help="Epoch checkpoints kept on disk. Default: 2.")
    output.add_argument("--log-level", default="INFO", help="Logging level. Default: INFO.")
    return parser


def collect_image_paths(args: argparse.Namespace) -> list[str]:
    """Return the image files of the chosen source, sorted and without duplicates."""
    if args.image_dir is not None:
        paths = [str(path) for path in find_radiographs(args.image_dir)]
    else:
        from eir.data import load_study_dataset

        splits = load_study_dataset(args.dataset, data_dir=args.data_dir)
        if args.split not in splits:
            raise ValueError(f"--split: expected one of {sorted(splits)} for {args.dataset}, got {args.split!r}.")
        paths = sorted({path for record in splits[args.split] for path in record["image_paths"]})
    if args.limit_images:
        paths = paths[: args.limit_images]
    if not paths:
        raise ValueError(f"No PNG, JPEG or DICOM image found in {args.image_dir or args.dataset}.")
    return paths


def _latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = sorted((output_dir / "checkpoints").glob("epoch-*"), key=lambda path: int(path.name.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def _print_summary(lines: list[tuple[str, Any]]) -> None:
    width = max(len(key) for key, _ in lines)
    print("=" * 72)
    for key, value in lines:
        print(f"{key:<{width}} : {value}")
    print("=" * 72, flush=True)


def export_backbone(model: C2LModel, folder: Path, args: argparse.Namespace) -> None:
    """Write the student backbone as a transformers folder plus the whole C2L state as safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    model.student.backbone.save_pretrained(folder)
    state = {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()}
    save_file(state, str(folder / CHECKPOINT_FILE), metadata={"format": "c2l", "backbone": args.backbone})
    preprocessing = {
        "image_size": args.image_size,
        "num_channels": args.num_channels,
        "note": "Inputs were gray radiographs in [0, 1], repeated to num_channels and normalised like EIRImageProcessor.",
    }
    (folder / "c2l_preprocessing.json").write_text(json.dumps(preprocessing, indent=2))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Pre-train as `args` say; return the summary that is also written to pretraining_summary.json."""
    start_time = time.perf_counter()
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    output_dir: Path = args.output_dir

    # 1. Resume point and resolved arguments.
    resume_path = None
    if args.resume_from:
        resume_path = _latest_checkpoint(output_dir) if args.resume_from == "latest" else Path(args.resume_from)
        if resume_path is None or not (resume_path / STATE_FILE).is_file():
            raise FileNotFoundError(
                f"--resume-from: no C2L checkpoint found at {args.resume_from!r} (looked in {output_dir / 'checkpoints'})."
            )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        resolved = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
        (output_dir / ("args_resumed.json" if resume_path else "args.json")).write_text(json.dumps(resolved, indent=2))

    # 2. Data.
    paths = collect_image_paths(args)
    settings = AugmentationSettings(
        image_size=args.image_size, crop_scale=tuple(args.crop_scale), max_rotation=args.max_rotation,
        brightness=args.brightness, contrast=args.contrast, horizontal_flip=args.horizontal_flip,
        num_channels=args.num_channels,
    )
    dataset = RadiographDataset(paths, RadiographAugmentation(settings), preload=args.preload, max_side=args.max_side)
    if len(dataset) < 2:
        raise ValueError(f"C2L needs at least 2 readable images, found {len(dataset)} of {len(paths)}.")
    if args.queue_size > len(dataset):
        logger.warning(
            "queue size %d is larger than the %d images: the queue will hold older keys of the same images as "
            "negatives. Consider --queue-size below %d for a data set this small.",
            args.queue_size, len(dataset), len(dataset),
        )
    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collate_view_pairs,
        num_workers=args.num_workers, drop_last=len(dataset) > args.batch_size,
    )

    # 3. Model and optimiser.
    model = C2LModel(
        build_backbone_config(args.backbone, args.num_channels), embedding_size=args.embedding_size,
        queue_size=args.queue_size, momentum=args.ema_momentum, temperature=args.temperature,
        mixup_alpha=args.mixup_alpha, teacher_bn_splits=args.teacher_bn_splits,
    )
    optimizer = torch.optim.SGD(
        model.student.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    unwrapped: C2LModel = accelerator.unwrap_model(model)

    state: dict[str, Any] = {"epoch": 0, "global_step": 0, "history": []}
    if resume_path is not None:
        try:
            accelerator.load_state(str(resume_path))
        except RuntimeError as error:
            raise ValueError(
                f"--resume-from {resume_path}: the checkpoint does not fit the model built from these options "
                f"({str(error).splitlines()[-1].strip()}). Resume with the model options saved in {output_dir / 'args.json'}."
            ) from error
        state = json.loads((resume_path / STATE_FILE).read_text())
        logger.info("Resumed from %s after epoch %d.", resume_path, state["epoch"])

    if accelerator.is_main_process:
        num_parameters = sum(parameter.numel() for parameter in unwrapped.student.parameters())
        _print_summary([
            ("images", f"{len(dataset)} from {args.image_dir or f'{args.dataset} ({args.split} split)'}"
                       f"{f', {len(dataset.skipped)} unreadable skipped' if dataset.skipped else ''}"),
            ("backbone", f"{args.backbone}, {args.num_channels} channel(s), student {num_parameters / 1e6:.2f} M parameters"),
            ("image size / crop scale", f"{args.image_size} px / {args.crop_scale}"),
            ("augmentation", f"rotation +-{args.max_rotation} deg, brightness +-{args.brightness}, contrast "
                             f"+-{args.contrast}, horizontal flip {'on' if args.horizontal_flip else 'off'}"),
            ("queue / embedding / temperature", f"{args.queue_size} x {args.embedding_size} / {args.temperature}"),
            ("EMA momentum / mixup alpha", f"{args.ema_momentum} / {args.mixup_alpha}"),
            ("teacher batch norm", f"shuffled batch in {args.teacher_bn_splits} sub-batches"),
            ("epochs / batch / steps per epoch", f"{args.epochs} / {args.batch_size} per process / {len(loader)}"),
            ("SGD lr / momentum / weight decay", f"{args.lr} / {args.momentum} / {args.weight_decay}"),
            ("lr step decay", f"x{args.lr_gamma} after {args.lr_milestones} of the epochs"),
            ("processes / device", f"{accelerator.num_processes} / {accelerator.device}"),
            ("output", str(output_dir)),
            ("resumed from", str(resume_path) if resume_path else "-"),
        ])

    # 4. Epochs.
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        learning_rate = args.lr * step_decay_factor(epoch - 1, args.epochs, args.lr_milestones, args.lr_gamma)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        model.train()
        epoch_start = time.perf_counter()
        losses, images = [], 0
        progress = tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", disable=not accelerator.is_main_process)
        for batch in progress:
            if not batch or batch["student_view"].shape[0] < 2:
                continue
            with accelerator.autocast():
                output = model(batch["student_view"], batch["teacher_view"])
            accelerator.backward(output.loss)
            optimizer.step()
            optimizer.zero_grad()
            unwrapped.update_teacher()
            # NOTE: the multi-process path (gathered keys, DDP-wrapped C2LModel) has only run on one CPU process.
            unwrapped.enqueue(accelerator.gather(output.keys))
            state["global_step"] += 1
            losses.append(float(output.loss.detach()))
            images += batch["student_view"].shape[0] * accelerator.num_processes
            progress.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{learning_rate:.4g}")
        epoch_time = time.perf_counter() - epoch_start
        record = {
            "epoch": epoch,
            "loss": sum(losses) / max(len(losses), 1),
            "learning_rate": learning_rate,
            "images_per_second": round(images / max(epoch_time, 1e-9), 2),
            "epoch_time_s": round(epoch_time, 1),
        }
        state["epoch"] = epoch
        state["history"].append(record)
        if accelerator.is_main_process:
            print(f"epoch {epoch}: loss {record['loss']:.4f}, lr {learning_rate:.4g}, "
                  f"{record['images_per_second']} images/s", flush=True)

        checkpoint = output_dir / "checkpoints" / f"epoch-{epoch}"
        accelerator.save_state(str(checkpoint))
        if accelerator.is_main_process:
            (checkpoint / STATE_FILE).write_text(json.dumps(state, indent=2))
            existing = sorted((output_dir / "checkpoints").glob("epoch-*"), key=lambda path: int(path.name.split("-")[1]))
            for old in existing[: -args.keep_checkpoints] if args.keep_checkpoints > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    # 5. Export.
    summary = {
        "images": len(dataset),
        "skipped_images": dataset.skipped,
        "epochs": state["epoch"],
        "global_step": state["global_step"],
        "history": state["history"],
        "final_loss": state["history"][-1]["loss"] if state["history"] else math.nan,
        "wall_time_s": round(time.perf_counter() - start_time, 1),
        "num_processes": accelerator.num_processes,
        "backbone_dir": str(output_dir / "backbone"),
    }
    if accelerator.is_main_process:
        export_backbone(unwrapped, output_dir / "backbone", args)
        (output_dir / "pretraining_summary.json").write_text(json.dumps(summary, indent=2))
        print(f"Backbone saved to {output_dir / 'backbone'} (set model.vision_weights to this folder in a recipe).")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
