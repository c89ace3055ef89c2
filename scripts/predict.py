#!/usr/bin/env python
"""Classify image files with a VTLM model from the Hub or a local folder, and print the top-k labels.

    python scripts/predict.py you/vtlm-37m cat.jpg truck.png --top_k 3
    python scripts/predict.py runs/vtlm-37m images/*.png

Every file is opened, and the model found, before the model is loaded: a missing or unreadable file, or a model that
is neither a folder nor a Hub id, stops the run with one `error:` line naming each and why, and exit status 2.
"""

import argparse
import sys
from pathlib import Path

from endpoint.handler import load_image
from training.cli import check_model_source, parse_flags, run_cli


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="A Hub repository id (`user/name`) or a folder saved by scripts/train.py.")
    parser.add_argument("images", nargs="+", metavar="image", help="Image files, in any format PIL reads.")
    parser.add_argument("--top_k", type=int, default=5, help="How many labels to show per image (default 5).")
    args = parse_flags(parser, argv)
    if args.top_k < 1:
        raise ValueError(f"--top_k must be at least 1, got {args.top_k}")
    return args


def load_images(paths) -> tuple[list, list]:
    """Decoded RGB images, converted as the endpoint and the demo convert them (`endpoint.handler.load_image`:
    16-bit images scaled, not clipped; EXIF orientation applied), and an error line for each path that is missing
    or is not a readable image."""
    images, errors = [], []
    for path in paths:
        try:
            images.append(load_image(Path(path).read_bytes()))
        except FileNotFoundError:
            errors.append(f"{path}: no such file")
        except IsADirectoryError:
            errors.append(f"{path}: is a directory, not an image file")
        except ValueError as error:  # not an image, truncated or corrupt data, too large
            errors.append(f"{path}: {error}")
    return images, errors


def format_table(paths, predictions) -> str:
    """One row per (image, rank): the image's name on its first row only."""
    rows = [("image", "rank", "label", "score")]
    for path, labels in zip(paths, predictions, strict=True):
        for rank, prediction in enumerate(labels, start=1):
            rows.append((path if rank == 1 else "", str(rank), prediction["label"], f"{prediction['score']:.4f}"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        f"{image:<{widths[0]}}  {rank:>{widths[1]}}  {label:<{widths[2]}}  {score:>{widths[3]}}"
        for image, rank, label, score in rows
    )


def main(argv=None):
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    images, errors = load_images(args.images)
    if errors:
        raise ValueError("; ".join(errors))
    check_model_source(args.model)

    from transformers import pipeline  # imported after the files are checked: it takes seconds

    classifier = pipeline("image-classification", model=args.model, trust_remote_code=True)
    predictions = classifier(images, top_k=args.top_k)
    print(format_table(args.images, predictions))
    return predictions


if __name__ == "__main__":
    sys.exit(run_cli(main))
