"""C2L pre-training throughput: images per second of one full step on this machine.

A step is the student forward and backward on the mixed batch, the teacher forward in shuffled
sub-batches, the SGD update, the EMA update of the teacher and the queue update, as in
`scripts/pretrain_c2l.py`. Inputs are random tensors, so decoding and augmentation are not
counted. Resolutions: 224 px (the C2L default used here) and 256 px (the input size of EIR's
CGI-style encoder).

    python benchmarks/c2l_throughput.py --output benchmarks_out/c2l_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eir.c2l import C2LModel, build_backbone_config  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Measure C2L pre-training throughput (images per second).")
    parser.add_argument("--backbones", nargs="*", default=["resnet-small", "resnet50"], help="Backbones to measure.")
    parser.add_argument("--image-sizes", type=int, nargs="*", default=[224, 256], help="Input sides, in pixels.")
    parser.add_argument("--batch-size", type=int, default=16, help="Images per step. Default: 16.")
    parser.add_argument("--warmup-steps", type=int, default=1, help="Untimed steps before measuring. Default: 1.")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per configuration. Default: 3.")
    parser.add_argument("--queue-size", type=int, default=16384, help="Queue rows. Default: 16384.")
    parser.add_argument("--output", type=Path, default=Path("c2l_throughput.json"), help="JSON file for the results.")
    return parser


def measure(backbone: str, image_size: int, batch_size: int, warmup_steps: int, steps: int, queue_size: int) -> dict:
    torch.manual_seed(0)
    model = C2LModel(build_backbone_config(backbone), queue_size=queue_size)
    model.train()
    optimizer = torch.optim.SGD(model.student.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    student_view = torch.randn(batch_size, 3, image_size, image_size)
    teacher_view = torch.randn(batch_size, 3, image_size, image_size)

    def step() -> None:
        output = model(student_view, teacher_view)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.update_teacher()
        model.enqueue(output.keys)

    for _ in range(warmup_steps):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    return {
        "backbone": backbone,
        "image_size": image_size,
        "batch_size": batch_size,
        "steps": steps,
        "seconds_per_step": round(elapsed / steps, 3),
        "images_per_second": round(batch_size * steps / elapsed, 2),
        "student_parameters_millions": round(sum(p.numel() for p in model.student.parameters()) / 1e6, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (torch threads: "
        f"{torch.get_num_threads()}), torch {torch.__version__}, no GPU"
    )
    rows = []
    for backbone in args.backbones:
        for image_size in args.image_sizes:
            row = measure(backbone, image_size, args.batch_size, args.warmup_steps, args.steps, args.queue_size)
            rows.append(row)
            print(f"{backbone} at {image_size} px: {row['images_per_second']} images/s", flush=True)

    print(f"\nMachine: {machine}")
    print("| backbone | image size (px) | batch | s per step | images / s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['backbone']} | {row['image_size']} | {row['batch_size']} | {row['seconds_per_step']} | "
              f"{row['images_per_second']} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": machine, "arguments": {**vars(args), "output": str(args.output)},
                                       "results": rows}, indent=2))
    print(f"Results written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
