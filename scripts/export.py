#!/usr/bin/env python
"""Export a trained VTLM model to transformers' built-in ViT (no custom code) and/or to ONNX.

    python scripts/export.py runs/vtlm-37m-cifar100 --format vit --output_dir exports/vtlm-37m-vit
    python scripts/export.py you/vtlm-37m --format vit,onnx --output_dir exports/vtlm-37m-vit
    python scripts/export.py runs/vtlm-37m-conv/checkpoint-8800 --format onnx --output_dir exports/vtlm-37m-conv-onnx
    python scripts/export.py runs/vtlm-37m-cifar100 --format vit,onnx --output_dir exports/vit --measure_accuracy

The source is a run folder, a checkpoint-N folder or a Hub id, read from safetensors only. `vit` writes a folder
that `AutoModelForImageClassification.from_pretrained` and `pipeline("image-classification")` load without
`trust_remote_code`; `onnx` writes `onnx/model.onnx` (inside that folder when both are asked for) and its smaller
versions, `onnx/model_fp16.onnx` and the 8-bit `onnx/model_quantized.onnx`. Each export is compared with its source
on random images, and the card states the largest logit difference. A model the built-in ViT cannot express is
refused, naming the fields, before anything is written.

`--measure_accuracy` scores each ONNX graph on the whole test split of a dataset (train.py's data flags; for a run
folder, the data it trained on, from its `run_arguments.json`), times it at batch 1 and 32, prints the table, writes
it to the export's `onnx_accuracy.json` and card, and makes the smallest graph whose top-1 is at most 0.3 points
below the fp32 graph's the one transformers.js loads by default. Without it the default is the fp32 graph, and the
card says the smaller graphs were not measured. It is a flag of the export, not of benchmark_inference.py, because
its numbers decide what the export ships: the export must carry the measurement of its own graphs.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from vtlm.training.cli import parse_flags, run_cli, setup_logging
from vtlm.training.export import FORMATS, MEASUREMENT_FILE, export_model
from vtlm.training.onnx_graphs import DATA_FLAGS, markdown_table, recorded_data


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_name_or_path", help="A VTLM run folder, checkpoint-N folder or Hub id (`user/name`).")
    parser.add_argument(
        "--format", default="vit", help=f"Comma-separated formats, of {', '.join(FORMATS)} (default vit)."
    )
    parser.add_argument("--output_dir", required=True, help="The folder to write; it must be empty or missing.")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="Replace a non-empty --output_dir.")
    measuring = parser.add_argument_group("measuring the ONNX graphs")
    measuring.add_argument(
        "--measure_accuracy",
        action="store_true",
        help="Score every ONNX graph on the test split of the data below and choose transformers.js's default.",
    )
    for name in DATA_FLAGS:
        measuring.add_argument(f"--{name}", default=None, help="As train.py's; default: the run's, else train.py's.")
    measuring.add_argument("--num_threads", type=int, default=torch.get_num_threads(), help="onnxruntime's threads.")
    measuring.add_argument("--latency_calls", type=int, default=20, help="Timed calls per graph and batch size.")
    args = parse_flags(parser, argv)
    given = [name for name in DATA_FLAGS if getattr(args, name) is not None]
    if given and not args.measure_accuracy:
        raise ValueError(f"--{given[0]} says what --measure_accuracy measures on: pass --measure_accuracy too")
    for name in ("num_threads", "latency_calls"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv=None):
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    setup_logging(logging.WARNING)  # the results, not every file the loaders read
    differences = export_model(
        args.model_name_or_path,
        args.output_dir,
        args.format.split(","),
        args.overwrite_output_dir,
        measure_on=recorded_data(args.model_name_or_path, **{name: getattr(args, name) for name in DATA_FLAGS})
        if args.measure_accuracy
        else None,
        num_threads=args.num_threads,
        latency_calls=args.latency_calls,
    )
    for name, difference in differences.items():
        print(f"{name}: max logit difference from the source {difference:.3g}")
    if args.measure_accuracy:
        print(markdown_table(json.loads((Path(args.output_dir) / MEASUREMENT_FILE).read_text())))
    print(f"wrote {args.output_dir}")
    return differences


if __name__ == "__main__":
    sys.exit(run_cli(main))
