#!/usr/bin/env python
"""Classify images with a VTLM model from the Hub or a local folder, and print the top-k labels.

    python scripts/predict.py you/vtlm-37m cat.jpg truck.png --top_k 3
    python scripts/predict.py runs/vtlm-37m images/ https://example.com/cat.jpg

An image is a file, a folder (the image files directly inside it, sorted by name) or an http(s) URL (fetched in
`training.prediction.DOWNLOAD_TIMEOUT` seconds and `MAX_DOWNLOAD_BYTES` at most). The model is found before any image
is read: a bad flag, or a model that is neither a folder nor a Hub id, stops the run with one `error:` line and exit
status 2. Every image that decodes is classified; each one that does not (missing, unreadable, not an image, a URL
that fails) gets an `error:` line naming it and why, after the table, and the exit status is 1, or 2 when no image
could be classified at all.
"""

import argparse
import sys

from vtlm.training.cli import parse_flags, run_cli
from vtlm.training.prediction import classify_inputs, format_table
from vtlm.training.sources import check_model_source


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="A Hub repository id (`user/name`) or a folder saved by scripts/train.py.")
    parser.add_argument(
        "images",
        nargs="+",
        metavar="image",
        help="Image files in any format PIL reads, folders of them (not searched below), or http(s) URLs.",
    )
    parser.add_argument("--top_k", type=int, default=5, help="How many labels to show per image (default 5).")
    args = parse_flags(parser, argv)
    if args.top_k < 1:
        raise ValueError(f"--top_k must be at least 1, got {args.top_k}")
    return args


def load_classifier(model):
    from transformers import pipeline  # imported once an image has decoded: it takes seconds

    return pipeline("image-classification", model=model, trust_remote_code=True)


def main(argv=None):
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    check_model_source(args.model)
    names, predictions, errors = classify_inputs(args.images, lambda: load_classifier(args.model), args.top_k)
    if predictions:
        print(format_table(names, predictions))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:  # not a ValueError for `run_cli`: its one line and status 2 would hide the answers given
        raise SystemExit(1 if predictions else 2)
    return predictions


if __name__ == "__main__":
    sys.exit(run_cli(main))
