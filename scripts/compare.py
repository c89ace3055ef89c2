#!/usr/bin/env python
r"""Train several arms side by side on Fashion-MNIST with `scripts/train.py`, and write a Markdown report.

    python scripts/compare.py --output_md docs/compare.md --common="--model_preset vtlm-5m --num_train_epochs 9" \
        --arm "defaults=" --arm "no RandAugment=--randaugment_num_ops 0" --arm "seed recipe=recipes/seed.yaml"

Why Fashion-MNIST. This machine reaches package registries only, and CIFAR-100 comes from the Hub. Debian's package
`dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`; Expat licence, Zalando SE) ships the real
Fashion-MNIST: 70,000 28x28 greyscale photos of clothes in 10 classes, 6,000 train and 1,000 test images per class.
Its accuracies say how arms compare on small real images; they say nothing about CIFAR-100 accuracy.

What it does:

1. Writes the dataset once, in the Hub's CIFAR-10 schema (`img` as an Image, `label` as a ClassLabel with the real
   class names) under `--dataset_dir`: `--train_images_per_class` train images (a seeded stratified sample of the
   official train split), a validation split of `--validation_images_per_class` more (disjoint from train; it selects
   the best epoch, so train keeps all its images), and the official test split. Images stay 28x28 greyscale; the
   training pipeline converts them to RGB and resizes them to the model's image size.
2. Runs every arm, one after another, as its own `python scripts/train.py` process (the real training path) in its own
   folder `--output_dir/runs/ARM-seedS`, with its output in `train.log` there. With several `--seeds`, each seed is a
   round of all arms, and the order of the arms reverses every round. A run whose folder already holds results of the
   same command is reused; one that was cut short resumes from its last checkpoint (train.py does that).
3. Reads each run's `test_results.json`, `train_results.json` and `config.json`, and writes `--output_md`: test top-1
   with its 95% Wilson interval, seconds per epoch, FLOPs per image and parameters.

Flags. `--arm "NAME=FLAGS"` (repeat it) names an arm and gives its flags for train.py. FLAGS may start with a recipe
file (`.yaml`, `.yml` or `.json`, as `train.py recipe.yaml` reads it), which is turned into flags. A run's command is
`train.py [recipe flags] [--common flags] [arm flags] [the flags this script sets]`; a flag given twice takes its last
value, so `--common` (e.g. the model and the epochs) replaces a recipe's value, and an arm's own flags replace both.
This script sets `--dataset_name`, `--label_column_name`, `--output_dir`, `--seed` (from `--seeds`) and
`--disable_tqdm`; `--common` and `--arm` must not. Write `--common="..."` with `=`, so that its leading `--` is not
taken for a flag of this script.

The two comparisons, with E epochs: a 64-wide 4-layer model on 5,000 train images took 85 s an epoch on this
2-core CPU (AMD EPYC, torch 2.13) while other jobs shared it: about E x 1.5 minutes per arm.

    # 1. RandAugment's old and new semantics and the seed's recipe: the same model and epochs
    python scripts/compare.py --output_dir runs/compare-recipes --output_md docs/compare-recipes.md \
        --common="--model_preset vtlm-37m --num_train_epochs E \
            --config_overrides hidden_size=64,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256" \
        --arm "new RandAugment (defaults)=" \
        --arm "old RandAugment=--randaugment_prob 1.0 --randaugment_magnitude_std 0" \
        --arm "seed recipe=recipes/seed.yaml"

    # 2. A conv tokenizer against patches in front of the same transformer, with the default recipe
    python scripts/compare.py --output_dir runs/compare-tokenizers --output_md docs/compare-tokenizers.md \
        --common="--num_train_epochs E \
            --config_overrides hidden_size=64,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256" \
        --arm "patches (vtlm-37m)=--model_preset vtlm-37m" \
        --arm "conv tokenizer (vtlm-37m-conv)=--model_preset vtlm-37m-conv"
"""

import argparse
import ast
import dataclasses
import datetime
import gzip
import json
import logging
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from itertools import pairwise

import numpy as np
import torch
import transformers
import yaml
from datasets import ClassLabel, Dataset, Features, Image

from modeling import VTLMConfig, VTLMForImageClassification
from training.cli import setup_logging
from training.flops import flops_per_image
from training.metrics import wilson_interval

logger = logging.getLogger("compare")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCRIPT = os.path.join(REPO_ROOT, "scripts", "train.py")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# The official file names: "t10k" is the test split.
FASHION_MNIST_FILES = {"train": "train", "test": "t10k"}
# In label order, from the table in the package's /usr/share/doc/dataset-fashion-mnist/README.md.gz.
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MANIFEST_FILE = "dataset_manifest.json"
# Flags of train.py that this script sets for every run.
MANAGED_FLAGS = ("dataset_name", "label_column_name", "output_dir", "seed", "disable_tqdm")
RUN_FILE = "compare_run.json"  # the command that made a run folder, so that a rerun reuses only matching results
EPOCH_ENDS_FILE = "epoch_ends.json"
RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


# The dataset.


def read_idx(path):
    """An IDX file of unsigned bytes (the format of MNIST and Fashion-MNIST), gzipped or not, as a uint8 array."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as file:
        data = file.read()
    # Two zero bytes, the type (0x08: unsigned byte), the number of dimensions, then each size as a big-endian int32.
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    num_dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * num_dims).reshape(shape)


def load_fashion_mnist(source_dir=FASHION_MNIST_DIR):
    """Fashion-MNIST's official splits: `{"train": (images (60000, 28, 28), labels), "test": (...)}`, uint8."""
    if not os.path.isdir(source_dir):
        raise FileNotFoundError(
            f"no Fashion-MNIST in {source_dir}: install it with `apt-get install {FASHION_MNIST_PACKAGE}`"
        )
    splits = {}
    for split, prefix in FASHION_MNIST_FILES.items():
        images = read_idx(os.path.join(source_dir, f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(source_dir, f"{prefix}-labels-idx1-ubyte.gz"))
        if len(images) != len(labels):
            raise ValueError(f"{source_dir}: {len(images)} {split} images but {len(labels)} labels")
        splits[split] = (images, labels)
    return splits


def stratified_samples(labels, per_class_counts, rng):
    """Disjoint stratified samples of the indices of `labels`: one sorted index array per count of images per class
    in `per_class_counts` (`None`: all the class's remaining images)."""
    samples = [[] for _ in per_class_counts]
    for label in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == label))
        wanted = sum(count for count in per_class_counts if count is not None)
        if wanted > len(indices):
            raise ValueError(f"class {label} has {len(indices)} images, fewer than the {wanted} asked for")
        start = 0
        for sample, count in zip(samples, per_class_counts, strict=True):
            end = len(indices) if count is None else start + count
            sample.append(indices[start:end])
            start = end
    return [np.sort(np.concatenate(sample)) for sample in samples]


def write_dataset(root, splits, label_names):
    """Write `{split: (images (N, H, W) uint8, labels (N,))}` as `root/data/{split}-00000-of-00001.parquet` in the Hub's
    CIFAR-10 schema: `img` (PNG) and `label` (ClassLabel of `label_names`), which `load_dataset(root)` reads."""
    features = Features({"img": Image(), "label": ClassLabel(names=list(label_names))})
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    for split, (images, labels) in splits.items():
        dataset = Dataset.from_dict({"img": list(images), "label": labels.tolist()}, features=features)
        dataset.to_parquet(os.path.join(root, "data", f"{split}-00000-of-00001.parquet"))


def package_version(package):
    """The installed version of a Debian package, or None where dpkg does not know it."""
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def prepare_dataset(dataset_dir, images_per_class, seed=0, source_dir=FASHION_MNIST_DIR):
    """Write the comparison's Fashion-MNIST sample into `dataset_dir`, unless it holds this very sample already, and
    return its manifest (what is in it, for the report).

    `images_per_class` maps "train", "validation" and "test" to a number of images per class; a test of `None` keeps
    the whole official test split. Train and validation are disjoint samples of the official train split.
    """
    sample = {
        "package_version": package_version(FASHION_MNIST_PACKAGE),
        "source_dir": os.path.abspath(source_dir),
        "seed": seed,
        "images_per_class": dict(images_per_class),
    }
    path = os.path.join(dataset_dir, MANIFEST_FILE)
    if os.path.exists(path):
        with open(path) as file:
            manifest = json.load(file)
        if manifest["sample"] != sample:
            raise ValueError(f"{dataset_dir} holds another sample ({path}); pass another --dataset_dir")
        logger.info(f"reusing the dataset in {dataset_dir}")
        return manifest

    official = load_fashion_mnist(source_dir)
    rng = np.random.default_rng(seed)
    train, validation = stratified_samples(
        official["train"][1], [images_per_class["train"], images_per_class["validation"]], rng
    )
    (test,) = stratified_samples(official["test"][1], [images_per_class["test"]], rng)
    chosen = {"train": ("train", train), "validation": ("train", validation), "test": ("test", test)}
    splits = {split: tuple(array[indices] for array in official[source]) for split, (source, indices) in chosen.items()}
    write_dataset(dataset_dir, splits, FASHION_MNIST_LABELS)
    manifest = {
        "name": "Fashion-MNIST",
        "package": FASHION_MNIST_PACKAGE,
        "licence": "Expat (MIT), Zalando SE 2017",
        "label_names": FASHION_MNIST_LABELS,
        "image_shape": list(official["train"][0].shape[1:]),
        "num_images": {split: len(labels) for split, (_, labels) in splits.items()},
        "sample": sample,
    }
    with open(path, "w") as file:  # last: a folder without it was not completely written, and is written again
        json.dump(manifest, file, indent=2)
    logger.info(f"wrote {manifest['num_images']} images of Fashion-MNIST to {dataset_dir}")
    return manifest


# The arms and their runs.


@dataclasses.dataclass
class Arm:
    name: str
    text: str  # the arm's flags as given, for the report
    recipe_flags: list[str]  # from its recipe file, if any: they go before --common
    flags: list[str]


def flag_names(flags):
    return [token[2:].split("=", 1)[0] for token in flags if token.startswith("--")]


def check_unmanaged(flags, where):
    if managed := sorted(set(flag_names(flags)) & set(MANAGED_FLAGS)):
        raise ValueError(f"{where}: --{', --'.join(managed)} is set by compare.py, not here")


def recipe_flags(path):
    """A train.py recipe file as command-line flags: `key: value` becomes `--key value`, a list `--key a b`."""
    with open(path) as file:
        recipe = yaml.safe_load(file)  # JSON is YAML
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe maps train.py's flag names to values")
    flags = []
    for key, value in recipe.items():
        if value is None:
            raise ValueError(f"{path}: {key}: {value!r} cannot be given as a command-line flag")
        if key in MANAGED_FLAGS:
            logger.info(f"{path}: {key} is replaced by compare.py's")
        if isinstance(value, dict):  # TrainingArguments reads its dict fields (lr_scheduler_kwargs) from JSON
            value = json.dumps(value)
        flags += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    return flags


def parse_arm(text):
    """`"NAME=FLAGS"`, where FLAGS may start with a recipe file, as an `Arm`."""
    name, separator, flags_text = text.partition("=")
    if not separator or not name.strip():
        raise ValueError(f"--arm: expected NAME=FLAGS, got {text!r}")
    flags = shlex.split(flags_text)
    recipe = []
    if flags and flags[0].endswith(RECIPE_SUFFIXES):
        recipe, flags = recipe_flags(flags[0]), flags[1:]
    check_unmanaged(flags, f"--arm {name.strip()!r}")
    return Arm(name=name.strip(), text=flags_text.strip(), recipe_flags=recipe, flags=flags)


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "arm"


def schedule(arms, seeds):
    """The runs in the order they train, `(arm, seed)`: a round of every arm per seed, the order of the arms reversed
    every other round, so that no arm always runs first or last (on a machine that heats up or gets busier)."""
    return [(arm, seed) for round_index, seed in enumerate(seeds) for arm in (arms[::-1] if round_index % 2 else arms)]


def run_folder(output_dir, arm, seed):
    return os.path.join(output_dir, "runs", f"{slug(arm.name)}-seed{seed}")


def train_arguments(arm, common_flags, dataset_dir, run_dir, seed):
    """The arguments of `scripts/train.py` for one run of `arm`: a flag given twice takes its last value."""
    managed = {
        "dataset_name": os.path.abspath(dataset_dir),
        "label_column_name": "label",
        "output_dir": os.path.abspath(run_dir),
        "seed": seed,
        "disable_tqdm": True,  # the Trainer then prints each log as one line, which `run_training` reads
    }
    return [*arm.recipe_flags, *common_flags, *arm.flags, *(f"--{key}={value}" for key, value in managed.items())]


def epoch_end(line):
    """The epoch of a Trainer validation log line (`{'eval_loss': '0.5', ..., 'epoch': '3'}`) and its logs, or None."""
    if not (line.startswith("{") and "'eval_loss'" in line):
        return None
    try:
        logs = ast.literal_eval(line)
        return float(logs["epoch"]), logs
    except (ValueError, SyntaxError, KeyError, TypeError):
        return None


def run_training(arguments, run_dir, label):
    """Run `scripts/train.py` with `arguments`, output into `run_dir/train.log`; log and save each epoch's end."""
    os.makedirs(run_dir, exist_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    epoch_ends = []  # [epoch, seconds since the process started]; the final evaluation repeats the last epoch
    start = time.monotonic()
    log_path = os.path.join(run_dir, "train.log")
    with (
        open(log_path, "w", buffering=1) as log,  # line by line: `tail -f` follows it
        subprocess.Popen(
            [sys.executable, TRAIN_SCRIPT, *arguments],
            cwd=REPO_ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as process,
    ):
        for line in process.stdout:
            log.write(line)
            parsed = epoch_end(line.strip())
            if parsed is None or any(epoch == parsed[0] for epoch, _ in epoch_ends):
                continue
            epoch, logs = parsed
            epoch_ends.append([epoch, time.monotonic() - start])
            with open(os.path.join(run_dir, EPOCH_ENDS_FILE), "w") as file:
                json.dump(epoch_ends, file)
            logger.info(
                f"{label}: epoch {epoch:g} done after {epoch_ends[-1][1]:.0f} s, "
                f"validation accuracy {logs.get('eval_accuracy')}, loss {logs.get('eval_loss')}"
            )
    if process.returncode != 0:
        with open(log_path) as file:
            tail = "".join(file.readlines()[-20:])
        raise RuntimeError(f"{label}: train.py exited with {process.returncode}; end of {log_path}:\n{tail}")


def run_arm(arm, common_flags, dataset_dir, run_dir, seed, manifest, label):
    """Train one run of `arm` in `run_dir`, or reuse the results there if the same command made them."""
    arguments = train_arguments(arm, common_flags, dataset_dir, run_dir, seed)
    record = {"train_arguments": arguments, "dataset": manifest}
    record_path = os.path.join(run_dir, RUN_FILE)
    if os.path.exists(record_path):
        with open(record_path) as file:
            if json.load(file) != record:
                raise ValueError(f"{run_dir} holds a run of another command ({record_path}); pass another --output_dir")
        if os.path.exists(os.path.join(run_dir, "test_results.json")):
            logger.info(f"{label}: reusing the results in {run_dir}")
            return
    os.makedirs(run_dir, exist_ok=True)
    with open(record_path, "w") as file:
        json.dump(record, file, indent=2)
    logger.info(f"{label}: python scripts/train.py {shlex.join(arguments)}")
    logger.info(f"{label}: log in {os.path.join(run_dir, 'train.log')}")
    run_training(arguments, run_dir, label)


# Reading the results.


@dataclasses.dataclass
class RunResult:
    arm: str
    arm_flags: str
    seed: int
    test_accuracy: float
    test_num_images: int
    seconds_per_epoch: float
    epochs_timed: int  # epochs behind the median; 0: train_runtime / epochs
    forward_flops: int
    training_flops: int
    num_parameters: int
    git_commit: str | None
    device: str | None

    @property
    def test_interval(self):
        return wilson_interval(round(self.test_accuracy * self.test_num_images), self.test_num_images)


def seconds_per_epoch(epoch_ends, train_runtime, epochs):
    """The median time between successive epoch ends, and how many epochs it covers; with fewer than two epoch ends,
    `train_runtime / epochs` and 0. An epoch's time is its training, validation and checkpoint."""
    durations = [(t1 - t0) / (e1 - e0) for (e0, t0), (e1, t1) in pairwise(epoch_ends) if e1 > e0]
    if durations:
        return statistics.median(durations), len(durations)
    return train_runtime / epochs, 0


def read_json(path):
    with open(path) as file:
        return json.load(file)


def read_run(run_dir, arm, seed):
    """A `RunResult` from the files that train.py (and `run_training`) left in `run_dir`."""
    test = read_json(os.path.join(run_dir, "test_results.json"))
    train = read_json(os.path.join(run_dir, "train_results.json"))
    epoch_ends_path = os.path.join(run_dir, EPOCH_ENDS_FILE)
    epoch_ends = read_json(epoch_ends_path) if os.path.exists(epoch_ends_path) else []
    seconds, epochs_timed = seconds_per_epoch(epoch_ends, train["train_runtime"], train["epoch"])
    run_info_path = os.path.join(run_dir, "run_info.json")
    run_info = read_json(run_info_path) if os.path.exists(run_info_path) else {}
    config = VTLMConfig.from_pretrained(run_dir)
    flops = flops_per_image(config)
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
    )


# The report.


def cpu_model():
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info():
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def cell(text):
    return str(text).replace("|", "\\|")


def code(text):
    return f"`{cell(text)}`" if text else "(none)"


def render_report(command, dataset, machine, common, runs, generated_at):
    """The Markdown report of `runs` (`RunResult`s) on `dataset` (the manifest of `prepare_dataset`)."""
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
        f"- CPU: {machine['cpu']}, {machine['cores']} cores ({machine['torch_threads']} torch threads); "
        f"training device: {', '.join(devices) or 'unknown'}",
        f"- torch {machine['torch']}, transformers {machine['transformers']}, Python {machine['python']}",
        f"- code: {', '.join(f'`{commit}`' for commit in commits) or 'unknown'} (git commit of the runs)",
        "",
        "## Flags",
        "",
        f"- every arm: {code(shlex.join(common))}",
        "- set by the script for each run: `--dataset_name`, `--label_column_name label`, `--output_dir`, `--seed`, "
        "`--disable_tqdm True`",
        "- a run's command: `train.py [the arm's recipe file as flags] [flags of every arm] [the arm's flags] "
        "[the script's flags]`; a flag given twice takes its last value.",
        "",
        "## Results",
        "",
        "| arm | arm flags | seed | test top-1 [95% CI] | s / epoch | forward MFLOPs / image "
        "| training MFLOPs / image | parameters |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        lower, upper = run.test_interval
        marker = "" if run.epochs_timed else " *"
        lines.append(
            f"| {cell(run.arm)} | {code(run.arm_flags)} | {run.seed} | {100 * run.test_accuracy:.2f}% "
            f"[{100 * lower:.2f}, {100 * upper:.2f}] | {run.seconds_per_epoch:.1f}{marker} | "
            f"{run.forward_flops / 1e6:,.1f} | {run.training_flops / 1e6:,.1f} | {run.num_parameters:,} |"
        )
    lines += [
        "",
        "Test top-1 is on the test images above; its interval is the 95% Wilson score interval of correct / test "
        "images (`training.metrics.wilson_interval`), which covers the sampling of the test set only, not the spread "
        "over seeds. s / epoch: the median wall time between successive epoch ends (an epoch's training, validation "
        "and checkpoint); * marks a run of one epoch, where it is train_runtime / epochs. FLOPs: "
        "`training.flops.flops_per_image` of each run's saved config, a multiply-add counting 2; training is forward "
        "plus backward.",
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
    return parser.parse_args(argv)


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
    for index, (arm, seed) in enumerate(runs_in_order, 1):
        label = f"[{index}/{len(runs_in_order)}] {arm.name!r} seed {seed}"
        run_arm(arm, common, dataset_dir, run_folder(args.output_dir, arm, seed), seed, manifest, label)

    runs = [read_run(run_folder(args.output_dir, arm, seed), arm, seed) for arm in arms for seed in args.seeds]
    command = shlex.join(["python", "scripts/compare.py", *argv])
    generated_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = render_report(command, manifest, machine_info(), common, runs, generated_at)
    os.makedirs(os.path.dirname(os.path.abspath(output_md)), exist_ok=True)
    with open(output_md, "w") as file:
        file.write(report)
    logger.info(f"wrote {output_md}")


if __name__ == "__main__":
    main()
