#!/usr/bin/env python
r"""Train arms side by side with `scripts/train.py`, each from its own flags and seeds, and write a Markdown report of
their test top-1 against the compute each cost (`training/compare.py` says what it runs).

    python scripts/compare.py --output_md docs/compare.md --seeds 0 1 2 \
        --common="--config_overrides hidden_size=64,num_hidden_layers=4,num_attention_heads=4,intermediate_size=128" \
        --arm "plain @ 30=--num_train_epochs 30" --arm "plain @ 100=--num_train_epochs 100" \
        --arm "MAE @ 30=--num_train_epochs 30" --pretrain "MAE @ 30=--num_train_epochs 100 --decoder_hidden_size 64" \
        --arm "plain at MAE's cost=" --match_compute "plain at MAE's cost=MAE @ 30"

The data is the project's proxy by default: a Fashion-MNIST sample (Debian's dataset-fashion-mnist) written once under
`--dataset_dir`, because this project's machines reach package registries only. Its accuracies say how arms compare on
small real images, nothing about CIFAR-100. `--dataset_name uoft-cs/cifar100 --label_column_name fine_label` (or any
dataset train.py loads) compares on that instead, e.g. on a GPU machine.

`--arm "NAME=FLAGS"` (repeat it) names an arm and gives its train.py flags, which may start with a recipe file; arms
named `WAY @ LENGTH` are one line of the plot. `--pretrain "NAME=FLAGS"` gives arm NAME a pre-training stage
(`scripts/pretrain.py` with `--common` and these flags; train.py then fine-tunes it). `--match_compute "NAME=OTHER"`
trains arm NAME for the whole epochs whose compute comes closest to what OTHER (an arm given before it) cost in all for
the same seed. A run's command is `train.py [recipe] [--common flags] [arm flags] [this script's flags]`: flags replace
the recipe's values and a flag given twice takes its last value. This script sets `--dataset_name`,
`--label_column_name`, `--output_dir`, `--seed` (from `--seeds`) and `--disable_tqdm`. Write `--common="..."` with `=`,
so that its leading `--` is not taken for a flag of this script. The reports in docs/ name their own commands.
"""

import argparse
import datetime
import logging
import os
import shlex
import sys

from vtlm.training.cli import parse_flags, run_cli, setup_logging
from vtlm.training.fashion_mnist import FASHION_MNIST_DIR


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="append", required=True, help='"NAME=FLAGS"; repeat it for every arm.')
    parser.add_argument("--pretrain", action="append", default=[], help='"NAME=FLAGS": a pre-training stage of NAME.')
    parser.add_argument("--match_compute", action="append", default=[], help='"NAME=OTHER": NAME costs as OTHER.')
    parser.add_argument("--common", default="", help='train.py flags for every arm; write --common="...".')
    parser.add_argument("--output_dir", default="runs/compare", help="Where the dataset and the runs go.")
    parser.add_argument("--output_md", default=None, help="The report; default: OUTPUT_DIR/report.md.")
    parser.add_argument("--dataset_name", default=None, help="A dataset train.py loads; default: Fashion-MNIST.")
    parser.add_argument("--label_column_name", default="label", help="With --dataset_name: its label column.")
    parser.add_argument("--dataset_dir", default=None, help="Fashion-MNIST: default OUTPUT_DIR/fashion-mnist.")
    parser.add_argument("--train_images_per_class", type=int, default=500)
    parser.add_argument("--validation_images_per_class", type=int, default=100)
    parser.add_argument("--test_images_per_class", type=int, default=None, help="Default: all 1,000 per class.")
    parser.add_argument("--sample_seed", type=int, default=0, help="Seed of the train, validation and test sample.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="One round of every arm per seed.")
    parser.add_argument("--source_dir", default=FASHION_MNIST_DIR, help="Where the Debian package put Fashion-MNIST.")
    return parse_flags(parser, argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(argv)
    setup_logging()
    import torch

    from vtlm.training.compare import Comparison
    from vtlm.training.compare_arms import check_unmanaged, parse_arms
    from vtlm.training.compare_report import arm_summaries, plot_accuracy_against_compute, render_report
    from vtlm.training.fashion_mnist import prepare_dataset
    from vtlm.training.provenance import machine_info

    arms = parse_arms(args.arm, args.pretrain, args.match_compute)
    common = shlex.split(args.common)
    check_unmanaged(common, "--common")
    output_md = args.output_md or os.path.join(args.output_dir, "report.md")

    if args.dataset_name:
        manifest = {"dataset_name": args.dataset_name, "label_column_name": args.label_column_name}
        dataset = (args.dataset_name, args.label_column_name)
    else:
        dataset_dir = args.dataset_dir or os.path.join(args.output_dir, "fashion-mnist")
        images_per_class = {
            "train": args.train_images_per_class,
            "validation": args.validation_images_per_class,
            "test": args.test_images_per_class,
        }
        manifest = prepare_dataset(dataset_dir, images_per_class, seed=args.sample_seed, source_dir=args.source_dir)
        dataset = (os.path.abspath(dataset_dir), "label")
    runs = Comparison(arms, args.output_dir, dataset, manifest, common).run(args.seeds)
    os.makedirs(os.path.dirname(os.path.abspath(output_md)), exist_ok=True)
    plot_path = output_md.removesuffix(".md") + ".png"
    title = f"{manifest.get('name') or manifest['dataset_name']}, {len(args.seeds)} seed(s)"
    with open(plot_path, "wb") as file:
        file.write(plot_accuracy_against_compute(arm_summaries(runs), title))
    command = shlex.join(["python", "scripts/compare.py", *argv])
    generated_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_info(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    report = render_report(command, manifest, machine, common, runs, generated_at, os.path.basename(plot_path))
    with open(output_md, "w") as file:
        file.write(report)
    logging.getLogger("compare").info(f"wrote {output_md} and {plot_path}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
