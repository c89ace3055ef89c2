#!/usr/bin/env python
"""Export a trained VTLM model to transformers' built-in ViT (no custom code) and/or to ONNX.

    python scripts/export.py runs/vtlm-37m-cifar100 --format vit --output_dir exports/vtlm-37m-vit
    python scripts/export.py you/vtlm-37m --format vit,onnx --output_dir exports/vtlm-37m-vit
    python scripts/export.py runs/vtlm-37m-conv/checkpoint-8800 --format onnx --output_dir exports/vtlm-37m-conv-onnx

The source is a run folder, a checkpoint-N folder or a Hub id, read from safetensors only. `vit` writes a folder
that `AutoModelForImageClassification.from_pretrained` and `pipeline("image-classification")` load without
`trust_remote_code`; `onnx` writes `onnx/model.onnx` (inside that folder when both are asked for). Each export is
compared with its source on random images, and the card states the largest logit difference. A model the built-in
ViT cannot express is refused, naming the fields, before anything is written.
"""

import argparse
import logging
import sys

from training.cli import parse_flags, run_cli, setup_logging
from training.export import FORMATS, export_model


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_name_or_path", help="A VTLM run folder, checkpoint-N folder or Hub id (`user/name`).")
    parser.add_argument(
        "--format", default="vit", help=f"Comma-separated formats, of {', '.join(FORMATS)} (default vit)."
    )
    parser.add_argument("--output_dir", required=True, help="The folder to write; it must be empty or missing.")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="Replace a non-empty --output_dir.")
    return parse_flags(parser, argv)


def main(argv=None):
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    setup_logging(logging.WARNING)  # the results, not every file the loaders read
    differences = export_model(
        args.model_name_or_path, args.output_dir, args.format.split(","), args.overwrite_output_dir
    )
    for name, difference in differences.items():
        print(f"{name}: max logit difference from the source {difference:.3g}")
    print(f"wrote {args.output_dir}")
    return differences


if __name__ == "__main__":
    sys.exit(run_cli(main))
