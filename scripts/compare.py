#!/usr/bin/env python
r"""Train several arms side by side on Fashion-MNIST with `scripts/train.py`, and write a Markdown report.

    python scripts/compare.py --output_md docs/compare.md --common="--model_preset vtlm-5m --num_train_epochs 9" \
        --seeds 0 1 2 --arm "defaults=" --arm "no RandAugment=--randaugment_num_ops 0" \
        --arm "original recipe=recipes/madras1-vtlm37m.yaml"

Why Fashion-MNIST: this machine reaches package registries only, and CIFAR-100 comes from the Hub
(`training/fashion_mnist.py`). Its accuracies say how arms compare on small real images, nothing about CIFAR-100.

1. Writes the dataset once under `--dataset_dir`: `--train_images_per_class` train images (a seeded stratified sample
   of the official train split), `--validation_images_per_class` more for validation (disjoint; it selects the best
   epoch), and the official test split.
2. Runs every arm as its own `python scripts/train.py` process (the real training path) into
   `--output_dir/runs/ARM-seedS`, its command and output beside it in `--output_dir/logs/`. Each seed of `--seeds` is
   a round of all arms, the order of the arms reversed every other round. A run that already holds results of the
   same command is reused; one cut short resumes from its last checkpoint (train.py does that).
3. Reads each run's own files (`test_results.json`, `trainer_state.json`, `run_info.json`, `config.json`) and writes
   `--output_md`: per arm, test top-1 mean ± std over seeds; per run, top-1 with its 95% Wilson interval, seconds per
   epoch, FLOPs per image and parameters, and the machine (`training.run_info.machine_info`).

`--arm "NAME=FLAGS"` (repeat it) names an arm and gives its train.py flags, which may start with a recipe file. A run's
command is `train.py [recipe] [--common flags] [arm flags] [this script's flags]`: flags replace the recipe's values
and a flag given twice takes its last value. This script sets `--dataset_name`, `--label_column_name`, `--output_dir`,
`--seed` (from `--seeds`) and `--disable_tqdm`. Write `--common="..."` with `=`, so that its leading `--` is not taken
for a flag of this script. The reports in docs/ name their own commands.
"""

import argparse
import dataclasses
import datetime
import json
import logging
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise

import torch

from modeling import VTLMConfig, VTLMForImageClassification
from training.arguments import RECIPE_SUFFIXES
from training.cli import parse_flags, run_cli, setup_logging
from training.export import export_model, vit_refusals
from training.fashion_mnist import FASHION_MNIST_DIR, prepare_dataset
from training.flops import flops_per_image
from training.metrics import wilson_interval
from training.rerun import last_complete_checkpoint
from training.run_info import machine_info
from training.trainer import TRAINING_SECONDS, training_seconds

logger = logging.getLogger("compare")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCRIPT = os.path.join(REPO_ROOT, "scripts", "train.py")
# Flags of train.py that this script sets for every run.
MANAGED_FLAGS = ("dataset_name", "label_column_name", "output_dir", "seed", "disable_tqdm")


# The arms and their runs.


@dataclasses.dataclass
class Arm:
    name: str
    text: str  # the arm's flags as given, for the report
    flags: list[str]  # a recipe file first, if any: train.py reads it, and the flags after it replace its values


def check_unmanaged(flags, where):
    names = [token[2:].split("=", 1)[0] for token in flags if token.startswith("--")]
    if managed := sorted(set(names) & set(MANAGED_FLAGS)):
        raise ValueError(f"{where}: --{', --'.join(managed)} is set by compare.py, not here")


def parse_arm(text):
    """`"NAME=FLAGS"`, where FLAGS may start with a recipe file, as an `Arm`."""
    name, separator, flags_text = text.partition("=")
    if not separator or not name.strip():
        raise ValueError(f"--arm: expected NAME=FLAGS, got {text!r}")
    flags = shlex.split(flags_text)
    if flags and flags[0].endswith(RECIPE_SUFFIXES) and not os.path.isfile(flags[0]):
        raise FileNotFoundError(f"--arm {name.strip()!r}: no recipe file {flags[0]}")
    check_unmanaged(flags, f"--arm {name.strip()!r}")
    return Arm(name=name.strip(), text=flags_text.strip(), flags=flags)


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "arm"


def schedule(arms, seeds):
    """The runs in the order they train, `(arm, seed)`: a round of every arm per seed, the order of the arms reversed
    every other round, so that no arm always runs first or last (on a machine that heats up or gets busier)."""
    return [(arm, seed) for round_index, seed in enumerate(seeds) for arm in (arms[::-1] if round_index % 2 else arms)]


def run_name(arm, seed):
    return f"{slug(arm.name)}-seed{seed}"


def train_arguments(arm, common_flags, dataset_dir, run_dir, seed):
    """The arguments of `scripts/train.py` for one run of `arm`: its recipe file first, then `--common`, the arm's own
    flags and this script's; a flag given twice takes its last value."""
    flags = arm.flags
    recipe = flags[:1] if flags and flags[0].endswith(RECIPE_SUFFIXES) else []
    managed = {
        "dataset_name": os.path.abspath(dataset_dir),
        "label_column_name": "label",
        "output_dir": os.path.abspath(run_dir),
        "seed": seed,
        "disable_tqdm": True,
    }
    return [*recipe, *common_flags, *flags[len(recipe) :], *(f"--{key}={value}" for key, value in managed.items())]


def run_arm(arm, common_flags, dataset_dir, output_dir, seed, manifest, label):
    """Train one run of `arm` in `output_dir/runs/NAME`, or reuse the results there if the same command made them.
    The command and train.py's output go beside the run, into `output_dir/logs/NAME.{json,log}`: a run folder holds
    only what train.py writes."""
    run_dir = os.path.join(output_dir, "runs", run_name(arm, seed))
    arguments = train_arguments(arm, common_flags, dataset_dir, run_dir, seed)
    record = {"train_arguments": arguments, "dataset": manifest}
    record_path = os.path.join(output_dir, "logs", f"{run_name(arm, seed)}.json")
    if os.path.exists(record_path):
        with open(record_path) as file:
            if json.load(file) != record:
                raise ValueError(f"{run_dir} holds a run of another command ({record_path}); pass another --output_dir")
        if os.path.exists(os.path.join(run_dir, "test_results.json")):
            logger.info(f"{label}: reusing the results in {run_dir}")
            return run_dir
    os.makedirs(os.path.dirname(record_path), exist_ok=True)
    with open(record_path, "w") as file:
        json.dump(record, file, indent=2)
    log_path = record_path.removesuffix(".json") + ".log"
    logger.info(f"{label}: python scripts/train.py {shlex.join(arguments)}  (log: {log_path})")
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, TRAIN_SCRIPT, *arguments], cwd=REPO_ROOT, env=environment, stdout=log, stderr=log
        )
        report_progress(process, run_dir, label)
    if process.returncode != 0:
        with open(log_path) as file:
            tail = "".join(file.readlines()[-20:])
        raise RuntimeError(f"{label}: train.py exited with {process.returncode}; end of {log_path}:\n{tail}")
    return run_dir


def report_progress(process, run_dir, label, every_s=5.0):
    """Log each epoch of the running `process` as its checkpoint lands (from the checkpoint's own
    `trainer_state.json`), until the process ends; the last checkpoint is reported after it ends."""
    reported = None
    while True:
        finished = process.poll() is not None
        checkpoint = last_complete_checkpoint(run_dir)
        if checkpoint is not None and checkpoint != reported:
            reported = checkpoint
            state = read_json(os.path.join(checkpoint, "trainer_state.json"))
            evaluations = [entry for entry in state["log_history"] if "eval_accuracy" in entry]
            accuracy = f", validation top-1 {100 * evaluations[-1]['eval_accuracy']:.2f}%" if evaluations else ""
            logger.info(f"{label}: epoch {state['epoch']:g} of {state['num_train_epochs']:g}{accuracy}")
        if finished:
            return
        time.sleep(every_s)


# Reading the results.


@dataclasses.dataclass
class RunResult:
    arm: str
    arm_flags: str
    seed: int
    test_accuracy: float
    test_num_images: int
    seconds_per_epoch: float
    epochs_timed: int  # epochs behind the median; 0: training time / epochs
    forward_flops: int
    training_flops: int
    num_parameters: int
    git_commit: str | None
    device: str | None
    vit_export_difference: float | None  # max |logit difference| of its exact built-in ViT export; None: not exportable

    @property
    def test_interval(self):
        return wilson_interval(round(self.test_accuracy * self.test_num_images), self.test_num_images)


def seconds_per_epoch(log_history):
    """The median training time between successive epoch ends, and how many epochs it covers, from the validation
    entries of a run's `trainer_state.json` (their `training_seconds`); with fewer than two, the last entry's time per
    epoch and 0. An epoch's time is its training, validation and checkpoint."""
    ends = {}
    for entry in log_history:
        if "eval_loss" in entry and TRAINING_SECONDS in entry:
            ends.setdefault(entry["epoch"], entry[TRAINING_SECONDS])
    ends = sorted(ends.items())
    durations = [(t1 - t0) / (e1 - e0) for (e0, t0), (e1, t1) in pairwise(ends) if e1 > e0]
    if durations:
        return statistics.median(durations), len(durations)
    last = log_history[-1]
    return training_seconds(log_history) / last["epoch"], 0


def read_json(path):
    with open(path) as file:
        return json.load(file)


def read_run(run_dir, arm, seed):
    """A `RunResult` from the files that train.py left in `run_dir`."""
    test = read_json(os.path.join(run_dir, "test_results.json"))
    state = read_json(os.path.join(run_dir, "trainer_state.json"))
    run_info = read_json(os.path.join(run_dir, "run_info.json"))
    seconds, epochs_timed = seconds_per_epoch(state["log_history"])
    config = VTLMConfig.from_pretrained(run_dir)
    flops = flops_per_image(config)
    vit_export_difference = None
    if not vit_refusals(config):
        with tempfile.TemporaryDirectory() as folder:
            vit_export_difference = export_model(run_dir, os.path.join(folder, "vit"), ("vit",))["vit"]
    with torch.device("meta"):  # counts parameters without allocating them
        num_parameters = VTLMForImageClassification(config).num_parameters()
    return RunResult(
        arm=arm.name,
        arm_flags=arm.text,
        seed=seed,
        test_accuracy=test["test_accuracy"],
        test_num_images=test["test_num_images"],
        seconds_per_epoch=seconds,
        epochs_timed=epochs_timed,
        forward_flops=flops.forward,
        training_flops=flops.training,
        num_parameters=num_parameters,
        git_commit=run_info.get("git_commit"),
        device=run_info.get("hardware", {}).get("device"),
        vit_export_difference=vit_export_difference,
    )


# The report.


def cell(text):
    return str(text).replace("|", "\\|")


def code(text):
    return f"`{cell(text)}`" if text else "(none)"


def arm_summaries(runs):
    """Per arm, in order: (name, runs, mean and sample std of test top-1 over its seeds (std None for one seed), the
    median of its runs' seconds per epoch)."""
    summaries = []
    for name in dict.fromkeys(run.arm for run in runs):
        arm_runs = [run for run in runs if run.arm == name]
        accuracies = [run.test_accuracy for run in arm_runs]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else None
        seconds = statistics.median(run.seconds_per_epoch for run in arm_runs)
        summaries.append((name, len(accuracies), statistics.mean(accuracies), spread, seconds))
    return summaries


def render_report(command, dataset, machine, common, runs, generated_at):
    """The Markdown report of `runs` (`RunResult`s) on `dataset` (the manifest of `prepare_dataset`), measured on
    `machine` (`training.run_info.machine_info`)."""
    sample = dataset["sample"]
    per_class = sample["images_per_class"]
    counts = dataset["num_images"]
    test_per_class = f"{per_class['test']} per class" if per_class["test"] else "the whole official test split"
    devices = sorted({run.device for run in runs if run.device})
    commits = sorted({run.git_commit for run in runs if run.git_commit})
    lines = [
        "# Arms compared on Fashion-MNIST",
        "",
        f"Generated by `scripts/compare.py` on {generated_at}; do not edit by hand. Command:",
        "",
        "```",
        command,
        "```",
        "",
        "Fashion-MNIST, not CIFAR-100: these numbers compare the arms with each other on small real images and say "
        "nothing about CIFAR-100 accuracy.",
        "",
        "## Data",
        "",
        f"- {dataset['name']} from the Debian package `{dataset['package']}` "
        f"{sample['package_version'] or '(version unknown)'} "
        f"({dataset['licence']}): {'x'.join(map(str, dataset['image_shape']))} greyscale images, "
        f"{len(dataset['label_names'])} classes ({', '.join(dataset['label_names'])}). The training pipeline turns "
        "them into RGB at the model's image size.",
        f"- train: {per_class['train']} images per class ({counts['train']:,}), a stratified sample of the official "
        f"train split (seed {sample['seed']}).",
        f"- validation (selects the best epoch): {per_class['validation']} per class ({counts['validation']:,}), "
        "disjoint from train.",
        f"- test: {counts['test']:,} images, {test_per_class}.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']}, {machine['cpus_available']} available to the runs "
        f"({machine['torch_num_threads']} torch threads; load {machine['load_average_1min']:.1f} when reported); "
        f"training device: {', '.join(devices) or 'unknown'}",
        f"- torch {machine['torch']}, transformers {machine['transformers']}, Python {machine['python']}",
        f"- code: {', '.join(f'`{commit}`' for commit in commits) or 'unknown'} (git commit of the runs)",
        "",
        "## Flags",
        "",
        f"- every arm: {code(shlex.join(common))}",
        "- set by the script for each run: `--dataset_name`, `--label_column_name label`, `--output_dir`, `--seed`, "
        "`--disable_tqdm True`",
        "- a run's command: `train.py [the arm's recipe file] [flags of every arm] [the arm's flags] [the script's "
        "flags]`; a flag replaces the recipe's value, and a flag given twice takes its last value.",
        "",
        "## Summary",
        "",
        "| arm | seeds | test top-1, mean ± std over seeds | s / epoch, median over seeds |",
        "|---|---:|---|---:|",
    ]
    for name, seeds, mean, spread, seconds in arm_summaries(runs):
        spread_text = f" ± {100 * spread:.2f}" if spread is not None else " (one seed)"
        lines.append(f"| {cell(name)} | {seeds} | {100 * mean:.2f}%{spread_text} | {seconds:.1f} |")
    lines += [
        "",
        "## Runs",
        "",
        "| arm | arm flags | seed | test top-1 [95% CI] | s / epoch | forward MFLOPs / image "
        "| training MFLOPs / image | parameters | built-in ViT export: max \\|logit difference\\| |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lower, upper = run.test_interval
        marker = "" if run.epochs_timed else " *"
        lines.append(
            f"| {cell(run.arm)} | {code(run.arm_flags)} | {run.seed} | {100 * run.test_accuracy:.2f}% "
            f"[{100 * lower:.2f}, {100 * upper:.2f}] | {run.seconds_per_epoch:.1f}{marker} | "
            f"{run.forward_flops / 1e6:,.1f} | {run.training_flops / 1e6:,.1f} | {run.num_parameters:,} | "
            f"{'custom code only' if run.vit_export_difference is None else f'{run.vit_export_difference:.1e}'} |"
        )
    lines += [
        "",
        "Test top-1 is on the test images above; its interval is the 95% Wilson score interval of correct / test "
        "images (`training.metrics.wilson_interval`), which covers the sampling of the test set only; the summary's "
        "std is the sample standard deviation over seeds. s / epoch: the median training time between successive "
        "epoch ends (an epoch's training, validation and checkpoint; `training_seconds` in each run's "
        "`trainer_state.json`); * marks a run of one epoch, where it is the training time / epochs. FLOPs: "
        "`training.flops.flops_per_image` of each run's saved config, a multiply-add counting 2; training is forward "
        "plus backward, of the trained model only: a run taught by a teacher also runs the teacher's forward on every "
        "batch, which its s / epoch includes. ViT export: each run's saved model exported by "
        "`training.export.export_model` to transformers' `ViTForImageClassification` and run on the same check "
        "images; 0.0e+00 is identical logits, and a layout the built-in ViT cannot express needs custom code.",
        "",
    ]
    return "\n".join(lines)


# The command line.


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="append", required=True, help='"NAME=FLAGS"; repeat it for every arm.')
    parser.add_argument("--common", default="", help='train.py flags for every arm; write --common="...".')
    parser.add_argument("--output_dir", default="runs/compare", help="Where the dataset and the runs go.")
    parser.add_argument("--output_md", default=None, help="The report; default: OUTPUT_DIR/report.md.")
    parser.add_argument("--dataset_dir", default=None, help="Default: OUTPUT_DIR/fashion-mnist.")
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
    arms = [parse_arm(text) for text in args.arm]
    if len({slug(arm.name) for arm in arms}) < len(arms):
        raise ValueError(f"arm names must differ (as folder names): {[arm.name for arm in arms]}")
    common = shlex.split(args.common)
    check_unmanaged(common, "--common")
    dataset_dir = args.dataset_dir or os.path.join(args.output_dir, "fashion-mnist")
    output_md = args.output_md or os.path.join(args.output_dir, "report.md")

    images_per_class = {
        "train": args.train_images_per_class,
        "validation": args.validation_images_per_class,
        "test": args.test_images_per_class,
    }
    manifest = prepare_dataset(dataset_dir, images_per_class, seed=args.sample_seed, source_dir=args.source_dir)
    runs_in_order = schedule(arms, args.seeds)
    run_dirs = {}
    for index, (arm, seed) in enumerate(runs_in_order, 1):
        label = f"[{index}/{len(runs_in_order)}] {arm.name!r} seed {seed}"
        run_dirs[arm.name, seed] = run_arm(arm, common, dataset_dir, args.output_dir, seed, manifest, label)

    runs = [read_run(run_dirs[arm.name, seed], arm, seed) for arm in arms for seed in args.seeds]
    command = shlex.join(["python", "scripts/compare.py", *argv])
    generated_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_info(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    report = render_report(command, manifest, machine, common, runs, generated_at)
    os.makedirs(os.path.dirname(os.path.abspath(output_md)), exist_ok=True)
    with open(output_md, "w") as file:
        file.write(report)
    logger.info(f"wrote {output_md}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
