#!/usr/bin/env python
"""Publish a finished run folder to the Hugging Face Hub.

    python scripts/push_to_hub.py --output_dir runs/vtlm-37m --hub_model_id you/vtlm-37m
    python scripts/push_to_hub.py --output_dir runs/smoke --hub_model_id you/vtlm-smoke --hub_private_repo \
        --hub_revision smoke

The flags are the Trainer's (`train.py --push_to_hub` takes the same ones).

Uploads the weights, the model's code, the preprocessor, the model card (rendered first unless README.md was
written by hand), the metrics, trainer_state.json, TensorBoard logs and the Inference Endpoints handler; never
pickles or checkpoints. With --space_id, also a Gradio Space that demonstrates the model (`space/app.py`); with
--static_space_id, a static Space that runs the export's ONNX graph in the visitor's browser (`space/static/`). The
token comes from --hub_token, else HF_TOKEN, else `hf auth login`.
"""

import argparse
import sys

from vtlm.training.cli import parse_flags, run_cli, setup_logging
from vtlm.training.hub import publish_run


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="The run folder that scripts/train.py wrote.")
    parser.add_argument("--hub_model_id", required=True, help="`user/name` on the Hub.")
    parser.add_argument("--hub_private_repo", action="store_true", help="Create the repo private (if new).")
    parser.add_argument("--hub_revision", default=None, help="Branch to commit to; made when missing.")
    parser.add_argument("--commit_message", default=None, help="Default: 'Upload VTLM run <folder name>'.")
    parser.add_argument(
        "--hub_vit_model_id",
        default=None,
        help="Also publish the run's exact export to transformers' built-in ViT (and ONNX) to this `user/name`, "
        "for serving without custom code (for a layout the ViT cannot express, its ONNX graph alone); the two cards "
        "link to each other.",
    )
    parser.add_argument(
        "--space_id",
        default=None,
        help="Also publish a Gradio demo of the model to this Space (`user/name`), linked from the model card; it "
        "loads the --hub_vit_model_id export when there is one, so it runs no custom code.",
    )
    parser.add_argument(
        "--static_space_id",
        default=None,
        help="Also publish a static Space (`user/name`) that runs the --hub_vit_model_id repository's ONNX graph in "
        "the visitor's browser with transformers.js: no server, no custom code, any layout that exports a graph.",
    )
    parser.add_argument(
        "--measure_onnx_accuracy",
        action="store_true",
        help="Score the export's fp32, fp16 and 8-bit ONNX graphs on the test split the run was trained with: the "
        "export's card records each one's accuracy, and transformers.js (and the static Space) load the smallest "
        "within 0.3 points of fp32's top-1. Without it, the fp32 graph.",
    )
    parser.add_argument(
        "--hub_token",
        default=None,
        help="Hub token with write access. Prefer HF_TOKEN or `hf auth login`: a flag shows in the process list.",
    )
    return parse_flags(parser, argv)


def main(argv=None):
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    setup_logging()
    commit = publish_run(
        args.output_dir,
        hub_model_id=args.hub_model_id,
        token=args.hub_token,
        private=args.hub_private_repo,
        revision=args.hub_revision,
        commit_message=args.commit_message,
        hub_vit_model_id=args.hub_vit_model_id,
        space_id=args.space_id,
        static_space_id=args.static_space_id,
        measure_onnx_accuracy=args.measure_onnx_accuracy,
    )
    print(commit.commit_url)


if __name__ == "__main__":
    sys.exit(run_cli(main))
