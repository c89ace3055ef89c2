"""Arms trained side by side with `scripts/train.py` (and `scripts/pretrain.py`), and their Markdown report with the
compute each cost: what `scripts/compare.py` runs.

1. The dataset: by default the project's proxy, a Fashion-MNIST sample written once (`training.fashion_mnist`); or any
   dataset `train.py` loads (`--dataset_name`, a Hub id such as CIFAR-100 or a folder), which train.py splits itself.
2. Every arm runs as its own `python scripts/train.py` process (the real training path) into
   `OUTPUT_DIR/runs/ARM-seedS`, its command and output beside it in `OUTPUT_DIR/logs/`. Each seed is a round of all
   arms, the order of the arms reversed every other round. An arm may start with a pre-training stage
   (`scripts/pretrain.py` into `runs/ARM-seedS-pretrain`, then train.py fine-tunes it), and may train as many epochs
   as another arm of the same seed cost (`match_compute`). A run that already holds results of the same command is
   reused; one cut short resumes from its last checkpoint (the scripts do that).
3. After each run, its exact export to the built-in ViT is checked once and the result kept in the run's log record.
4. The report reads what the runs recorded (`test_results.json`, `trainer_state.json`, `run_info.json`'s `compute`),
   and renders per arm the test top-1 mean ± std over seeds against its total training compute (its own training, a
   teacher's forward passes, the teacher's own training when another arm trained it, a pre-training stage), a plot of
   accuracy against compute, and per run its 95% Wilson interval, seconds per epoch, FLOPs and parameters.
"""

import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise

from .arguments import RECIPE_SUFFIXES
from .rerun import last_complete_checkpoint
from .run_record import ARGUMENTS_FILE, TRAINER_STATE_FILE, read_record, read_run_arguments
from .trainer import TRAINING_SECONDS, training_seconds

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_path(name):
    """`scripts/NAME.py` of this checkout, or, where the package was installed from a wheel, the one on PATH."""
    path = os.path.join(REPO_ROOT, "scripts", f"{name}.py")
    return path if os.path.isfile(path) else shutil.which(f"{name}.py") or path


# Flags of the scripts that the comparison sets for every run.
MANAGED_FLAGS = ("dataset_name", "label_column_name", "output_dir", "seed", "disable_tqdm", "model_name_or_path")
# Arms whose names share the text before " @ " are one way at several lengths: one line of the plot.
WAY_SEPARATOR = " @ "


# The arms and their runs.


@dataclasses.dataclass
class Arm:
    name: str
    text: str  # the arm's flags as given, for the report
    flags: list[str]  # a recipe file first, if any: train.py reads it, and the flags after it replace its values
    pretrain_flags: list[str] | None = None  # scripts/pretrain.py's flags of a pre-training stage; None: none
    match_compute: str | None = None  # train as many epochs as this arm's run of the same seed cost in all

    @property
    def way(self):
        return self.name.split(WAY_SEPARATOR)[0]

    @property
    def teacher(self):
        """The teacher the arm's flags name, or None."""
        flags = parse_named_flags(self.flags)
        return flags.get("teacher_model_name_or_path")


def parse_named_flags(flags):
    """`{name: value}` of `--name value` and `--name=value` tokens."""
    named, tokens = {}, list(flags)
    for index, token in enumerate(tokens):
        if token.startswith("--"):
            name, separator, value = token[2:].partition("=")
            if not separator and index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
                value = tokens[index + 1]
            named[name] = value
    return named


def check_unmanaged(flags, where):
    if managed := sorted(set(parse_named_flags(flags)) & set(MANAGED_FLAGS)):
        raise ValueError(f"{where}: --{', --'.join(managed)} is set by compare.py, not here")


def split_flags(text, where):
    flags = shlex.split(text)
    if flags and flags[0].endswith(RECIPE_SUFFIXES) and not os.path.isfile(flags[0]):
        raise FileNotFoundError(f"{where}: no recipe file {flags[0]}")
    check_unmanaged(flags, where)
    return flags


def parse_arm(text):
    """`"NAME=FLAGS"`, where FLAGS may start with a recipe file, as an `Arm`."""
    name, separator, flags_text = text.partition("=")
    if not separator or not name.strip():
        raise ValueError(f"--arm: expected NAME=FLAGS, got {text!r}")
    flags = split_flags(flags_text, f"--arm {name.strip()!r}")
    return Arm(name=name.strip(), text=flags_text.strip(), flags=flags)


def parse_arms(arm_texts, pretrain_texts=(), match_texts=()):
    """The `Arm`s of `--arm "NAME=FLAGS"`, with `--pretrain "NAME=FLAGS"` (a pre-training stage of arm NAME) and
    `--match_compute "NAME=OTHER"` (arm NAME trains as many epochs as OTHER cost) attached; names must differ as
    folder names, and an arm matches the cost of an arm before it."""
    arms = {}
    for text in arm_texts:
        arm = parse_arm(text)
        if slug(arm.name) in {slug(name) for name in arms}:
            raise ValueError(f"arm names must differ (as folder names): {arm.name!r}")
        arms[arm.name] = arm
    for option, texts in (("--pretrain", pretrain_texts), ("--match_compute", match_texts)):
        for text in texts:
            name, separator, value = (part.strip() for part in text.partition("="))
            if not separator or name not in arms:
                raise ValueError(f"{option}: expected NAME=..., NAME one of the arms {list(arms)}, got {text!r}")
            if option == "--pretrain":
                arms[name].pretrain_flags = split_flags(value, f"--pretrain {name!r}")
            elif value not in arms or list(arms).index(value) >= list(arms).index(name):
                raise ValueError(f"--match_compute {text!r}: {value!r} must be an arm given before {name!r}")
            else:
                arms[name].match_compute = value
    return list(arms.values())


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "arm"


def schedule(arms, seeds):
    """The runs in the order they train, `(arm, seed)`: a round of every arm per seed, the order of the arms reversed
    every other round, so that no arm always runs first or last (on a machine that heats up or gets busier). An arm
    that matches another's cost runs after it whatever the round."""
    order = []
    for round_index, seed in enumerate(seeds):
        arms_in_round = arms[::-1] if round_index % 2 else arms
        independent = [arm for arm in arms_in_round if arm.match_compute is None]
        order += [(arm, seed) for arm in independent + [arm for arm in arms if arm.match_compute is not None]]
    return order


def run_name(arm, seed):
    return f"{slug(arm.name)}-seed{seed}"


def script_arguments(flags, common_flags, dataset, run_dir, seed, extra=()):
    """The arguments of a run: its recipe file first, then `--common`, its own flags, `extra` and the managed ones; a
    flag given twice takes its last value. `dataset` is `(dataset_name, label_column_name)`."""
    recipe = flags[:1] if flags and flags[0].endswith(RECIPE_SUFFIXES) else []
    managed = {
        "dataset_name": dataset[0],
        "label_column_name": dataset[1],
        "output_dir": os.path.abspath(run_dir),
        "seed": seed,
        "disable_tqdm": True,
    }
    return [
        *recipe,
        *common_flags,
        *flags[len(recipe) :],
        *extra,
        *(f"--{key}={value}" for key, value in managed.items()),
    ]


class Comparison:
    """The runs of `arms` (`parse_arms`) in `output_dir`, on `dataset` (`(dataset_name, label_column_name)`) described
    by `manifest`, with `common_flags` for every run."""

    def __init__(self, arms, output_dir, dataset, manifest, common_flags):
        self.arms, self.output_dir, self.dataset = arms, output_dir, dataset
        self.manifest, self.common_flags = manifest, common_flags

    def run_dir(self, arm, seed, stage="train"):
        suffix = "" if stage == "train" else f"-{stage}"
        return os.path.join(self.output_dir, "runs", run_name(arm, seed) + suffix)

    def record_path(self, arm, seed, stage="train"):
        suffix = "" if stage == "train" else f"-{stage}"
        return os.path.join(self.output_dir, "logs", f"{run_name(arm, seed)}{suffix}.json")

    def train_arguments(self, arm, seed):
        extra = []
        if arm.pretrain_flags is not None:
            extra.append(f"--model_name_or_path={os.path.abspath(self.run_dir(arm, seed, 'pretrain'))}")
        if arm.match_compute is not None:
            extra.append(f"--num_train_epochs={self.matched_epochs(arm, seed)}")
        return script_arguments(arm.flags, self.common_flags, self.dataset, self.run_dir(arm, seed), seed, extra)

    def matched_epochs(self, arm, seed):
        """The whole epochs of `arm` whose training compute comes closest to what its `match_compute` arm's run of
        `seed` cost in all (at least one)."""
        from .arguments import parse_arguments
        from .build import build_config
        from .flops import flops_per_image

        other = read_total_compute(self.run_dir(self.arm(arm.match_compute), seed))
        model_args = parse_arguments(script_arguments(arm.flags, self.common_flags, self.dataset, "x", seed))[0]
        per_epoch = flops_per_image(build_config(model_args)).training * self.manifest["num_images"]["train"]
        return max(1, round(other["total"] / per_epoch))

    def arm(self, name):
        return next(arm for arm in self.arms if arm.name == name)

    def run(self, seeds):
        """Train every arm for every seed (or reuse what is there); return `{(arm name, seed): run folder}`."""
        order = schedule(self.arms, seeds)
        folders = {}
        for index, (arm, seed) in enumerate(order, 1):
            label = f"[{index}/{len(order)}] {arm.name!r} seed {seed}"
            if arm.pretrain_flags is not None:
                arguments = script_arguments(
                    arm.pretrain_flags, self.common_flags, self.dataset, self.run_dir(arm, seed, "pretrain"), seed
                )
                self.run_script("pretrain", arguments, arm, seed, f"{label} pre-training")
            folders[arm.name, seed] = self.run_script("train", self.train_arguments(arm, seed), arm, seed, label)
        return folders

    def run_script(self, stage, arguments, arm, seed, label):
        """Run `scripts/{stage}.py` with `arguments` into its run folder, or reuse the results there if the same
        command made them; the command, train.py's output and the run's ViT export check go into `logs/`."""
        run_dir, record_path = self.run_dir(arm, seed, stage), self.record_path(arm, seed, stage)
        record = {"arguments": arguments, "dataset": self.manifest}
        finished = os.path.join(run_dir, ARGUMENTS_FILE)
        if os.path.exists(record_path):
            with open(record_path) as file:
                saved = json.load(file)
            if {key: saved.get(key) for key in record} != record:
                raise ValueError(f"{run_dir} holds a run of another command ({record_path}); pass another --output_dir")
            if os.path.exists(finished) and "vit_export_difference" in saved:
                logger.info(f"{label}: reusing the results in {run_dir}")
                return run_dir
        os.makedirs(os.path.dirname(record_path), exist_ok=True)
        with open(record_path, "w") as file:
            json.dump(record, file, indent=2)
        log_path = record_path.removesuffix(".json") + ".log"
        logger.info(f"{label}: python scripts/{stage}.py {shlex.join(arguments)}  (log: {log_path})")
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [sys.executable, script_path(stage), *arguments], cwd=REPO_ROOT, env=environment, stdout=log, stderr=log
            )
            report_progress(process, run_dir, label)
        if process.returncode != 0:
            with open(log_path) as file:
                tail = "".join(file.readlines()[-20:])
            raise RuntimeError(f"{label}: {stage}.py exited with {process.returncode}; end of {log_path}:\n{tail}")
        record["vit_export_difference"] = vit_export_difference(run_dir) if stage == "train" else None
        with open(record_path, "w") as file:
            json.dump(record, file, indent=2)
        return run_dir


def vit_export_difference(run_dir):
    """The max |logit difference| of the run's exact built-in ViT export (`training.export.export_model`), or None
    for a layout the built-in ViT cannot express."""
    from modeling import VTLMConfig

    from .export import export_model, vit_refusals

    if vit_refusals(VTLMConfig.from_pretrained(run_dir)):
        return None
    with tempfile.TemporaryDirectory() as folder:
        return export_model(run_dir, os.path.join(folder, "vit"), ("vit",))["vit"]


def report_progress(process, run_dir, label, every_s=5.0):
    """Log each epoch of the running `process` as its checkpoint lands (from the checkpoint's own
    `trainer_state.json`), until the process ends; the last checkpoint is reported after it ends."""
    reported = None
    while True:
        finished = process.poll() is not None
        checkpoint = last_complete_checkpoint(run_dir)
        if checkpoint is not None and checkpoint != reported:
            reported = checkpoint
            state = read_record(checkpoint, TRAINER_STATE_FILE)
            evaluations = [entry for entry in state["log_history"] if "eval_accuracy" in entry]
            accuracy = f", validation top-1 {100 * evaluations[-1]['eval_accuracy']:.2f}%" if evaluations else ""
            logger.info(f"{label}: epoch {state['epoch']:g} of {state['num_train_epochs']:g}{accuracy}")
        if finished:
            return
        time.sleep(every_s)


# Reading the results.


def read_json(path):
    with open(path) as file:
        return json.load(file)


def read_total_compute(run_dir):
    """What the run in `run_dir` cost in all, in FLOPs, from the records of the runs: `{"own": its training and its
    teacher's forward passes, "teacher_training": the teacher's own (total) training when it is a run folder with a
    record (another arm's), "pretraining": the pre-training it started from, "total": their sum}`."""
    compute = {"own": read_record(run_dir)["compute"]["total_flops"], "teacher_training": 0, "pretraining": 0}
    arguments = read_run_arguments(run_dir)
    teacher = (arguments.get("distillation_arguments") or {}).get("teacher_model_name_or_path")
    if teacher and read_record(teacher):
        compute["teacher_training"] = read_total_compute(teacher)["total"]
    source = arguments["model_arguments"].get("model_name_or_path")
    if source and (pretraining := read_record(source)):
        compute["pretraining"] = pretraining["compute"]["total_flops"]
    compute["total"] = sum(compute.values())
    return compute


@dataclasses.dataclass
class RunResult:
    arm: str
    way: str
    arm_flags: str
    seed: int
    test_accuracy: float
    test_interval: tuple[float, float]  # the 95% Wilson interval, as train.py recorded it
    test_num_images: int
    seconds_per_epoch: float
    epochs_timed: int  # epochs behind the median; 0: training time / epochs
    epochs: float
    compute: dict  # `run_info.json`'s, the run's own
    total_compute: dict  # `read_total_compute`
    git_commit: str | None
    device: str | None
    vit_export_difference: float | None  # max |logit difference| of its exact built-in ViT export; None: not exportable


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


def read_run(run_dir, record_path, arm, seed):
    """A `RunResult` from the files that train.py left in `run_dir` and the comparison's record of the run."""
    test = read_json(os.path.join(run_dir, "test_results.json"))
    state = read_record(run_dir, TRAINER_STATE_FILE)
    run_info = read_record(run_dir)
    seconds, epochs_timed = seconds_per_epoch(state["log_history"])
    return RunResult(
        arm=arm.name,
        way=arm.way,
        arm_flags=arm.text,
        seed=seed,
        test_accuracy=test["test_accuracy"],
        test_interval=(test["test_accuracy_ci_low"], test["test_accuracy_ci_high"]),
        test_num_images=test["test_num_images"],
        seconds_per_epoch=seconds,
        epochs_timed=epochs_timed,
        epochs=state["num_train_epochs"],
        compute=run_info["compute"],
        total_compute=read_total_compute(run_dir),
        git_commit=run_info.get("git_commit"),
        device=run_info.get("hardware", {}).get("device"),
        vit_export_difference=read_json(record_path).get("vit_export_difference"),
    )


# The report.


def cell(text):
    return str(text).replace("|", "\\|")


def code(text):
    return f"`{cell(text)}`" if text else "(none)"


def petaflops(flops):
    """FLOPs in PFLOPs, to 4 significant digits: the compute of a CPU proxy run and of a GPU run read alike."""
    return f"{flops / 1e15:.4g}"


def spread(values):
    return statistics.stdev(values) if len(values) > 1 else None


@dataclasses.dataclass
class ArmSummary:
    name: str
    way: str
    seeds: int
    mean: float
    std: float | None  # sample std over seeds; None for one seed
    seconds_per_epoch: float  # median over seeds
    total_compute: float  # mean over seeds, FLOPs


def arm_summaries(runs):
    """Per arm, in order: its seeds' test top-1 mean and std, median seconds per epoch and mean total compute."""
    summaries = []
    for name in dict.fromkeys(run.arm for run in runs):
        arm_runs = [run for run in runs if run.arm == name]
        accuracies = [run.test_accuracy for run in arm_runs]
        summaries.append(
            ArmSummary(
                name=name,
                way=arm_runs[0].way,
                seeds=len(arm_runs),
                mean=statistics.mean(accuracies),
                std=spread(accuracies),
                seconds_per_epoch=statistics.median(run.seconds_per_epoch for run in arm_runs),
                total_compute=statistics.mean(run.total_compute["total"] for run in arm_runs),
            )
        )
    return summaries


def plot_accuracy_against_compute(summaries, title):
    """PNG bytes: test top-1 (mean, with a bar of ± one std over seeds) against total training compute, a log axis;
    one line per way (arms named `WAY @ LENGTH`), in order of compute."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for way in dict.fromkeys(summary.way for summary in summaries):
        points = sorted((s for s in summaries if s.way == way), key=lambda summary: summary.total_compute)
        axes.errorbar(
            [point.total_compute for point in points],
            [100 * point.mean for point in points],
            yerr=[100 * (point.std or 0) for point in points],
            marker="o",
            capsize=3,
            label=way,
        )
    axes.set_xscale("log")
    axes.set_xlabel("total training compute (FLOPs): training, teacher forward and training, pre-training")
    axes.set_ylabel("test top-1 (%)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def describe_data(manifest):
    """The report's lines on the data: a Fashion-MNIST sample's manifest (`training.fashion_mnist.prepare_dataset`)
    or a dataset that train.py loads and splits itself."""
    if "sample" not in manifest:
        return [
            f"- `{manifest['dataset_name']}` (label column `{manifest['label_column_name']}`), loaded and split by "
            "train.py: its own validation split, or one held out of train by `--validation_split_size` and each "
            "run's seed, selects the best epoch; the test split is evaluated once. Pre-training stages read the "
            "training split only.",
        ]
    sample = manifest["sample"]
    per_class = sample["images_per_class"]
    counts = manifest["num_images"]
    test_per_class = f"{per_class['test']} per class" if per_class["test"] else "the whole official test split"
    return [
        f"- {manifest['name']} from the Debian package `{manifest['package']}` "
        f"{sample['package_version'] or '(version unknown)'} "
        f"({manifest['licence']}): {'x'.join(map(str, manifest['image_shape']))} greyscale images, "
        f"{len(manifest['label_names'])} classes ({', '.join(manifest['label_names'])}). The training pipeline turns "
        "them into RGB at the model's image size.",
        f"- train: {per_class['train']} images per class ({counts['train']:,}), a stratified sample of the official "
        f"train split (seed {sample['seed']}).",
        f"- validation (selects the best epoch): {per_class['validation']} per class ({counts['validation']:,}), "
        "disjoint from train.",
        f"- test: {counts['test']:,} images, {test_per_class}.",
    ]


def render_report(command, manifest, machine, common, runs, generated_at, plot_file=None):
    """The Markdown report of `runs` (`RunResult`s) on the dataset `manifest` describes, measured on `machine`
    (`training.provenance.machine_info`); `plot_file` names the accuracy-against-compute PNG beside it."""
    devices = sorted({run.device for run in runs if run.device})
    commits = sorted({run.git_commit for run in runs if run.git_commit})
    name = manifest.get("name") or manifest["dataset_name"]
    lines = [
        f"# Arms compared on {name}",
        "",
        f"Generated by `scripts/compare.py` on {generated_at}; do not edit by hand. Command:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    if "sample" in manifest:
        lines += [
            f"{name}, not CIFAR-100: these numbers compare the arms with each other on small real images and say "
            "nothing about CIFAR-100 accuracy.",
            "",
        ]
    lines += [
        "## Data",
        "",
        *describe_data(manifest),
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
        "- set by the script for each run: `--dataset_name`, `--label_column_name`, `--output_dir`, `--seed`, "
        "`--disable_tqdm True` (and `--model_name_or_path` after a pre-training stage, `--num_train_epochs` for an "
        "arm that matches another's compute)",
        "- a run's command: `train.py [the arm's recipe file] [flags of every arm] [the arm's flags] [the script's "
        "flags]`; a flag replaces the recipe's value, and a flag given twice takes its last value.",
        "",
        "## Summary",
        "",
        "| arm | seeds | test top-1, mean ± std over seeds | total training compute, PFLOPs (mean) "
        "| s / epoch, median over seeds |",
        "|---|---:|---|---:|---:|",
    ]
    summaries = arm_summaries(runs)
    for summary in summaries:
        spread_text = f" ± {100 * summary.std:.2f}" if summary.std is not None else " (one seed)"
        lines.append(
            f"| {cell(summary.name)} | {summary.seeds} | {100 * summary.mean:.2f}%{spread_text} | "
            f"{petaflops(summary.total_compute)} | {summary.seconds_per_epoch:.1f} |"
        )
    if plot_file:
        lines += ["", f"![Test top-1 against total training compute]({plot_file})"]
    lines += [
        "",
        "## Runs",
        "",
        "| arm | arm flags | seed | epochs | test top-1 [95% CI] | s / epoch | training MFLOPs / image "
        "| parameters | compute, PFLOPs: own (teacher forward) + teacher training + pre-training = total "
        "| built-in ViT export: max \\|logit difference\\| |",
        "|---|---|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    for run in runs:
        lower, upper = run.test_interval
        marker = "" if run.epochs_timed else " *"
        total = run.total_compute
        teacher = run.compute.get("teacher_forward_flops")
        own = petaflops(total["own"]) + (f" ({petaflops(teacher)})" if teacher else "")
        export = "custom code only" if run.vit_export_difference is None else f"{run.vit_export_difference:.1e}"
        lines.append(
            f"| {cell(run.arm)} | {code(run.arm_flags)} | {run.seed} | {run.epochs:g} | "
            f"{100 * run.test_accuracy:.2f}% [{100 * lower:.2f}, {100 * upper:.2f}] | "
            f"{run.seconds_per_epoch:.1f}{marker} | {run.compute['training_flops_per_image'] / 1e6:,.1f} | "
            f"{run.compute['num_parameters']:,} | {own} + {petaflops(total['teacher_training'])} + "
            f"{petaflops(total['pretraining'])} = {petaflops(total['total'])} | {export} |"
        )
    lines += [
        "",
        "Test top-1 is on the test images above; its interval is the 95% Wilson score interval of correct / test "
        "images that train.py recorded (`test_accuracy_ci_low`/`_high`), which covers the sampling of the test set "
        "only; the summary's std is the sample standard deviation over seeds. s / epoch: the median training time "
        "between successive epoch ends (an epoch's training, validation and checkpoint; `training_seconds` in each "
        "run's `trainer_state.json`); * marks a run of one epoch, where it is the training time / epochs; a taught "
        "run's includes its teacher's forward. Compute (`compute` in each run's `run_info.json`, "
        "`training.flops.describe_compute`): FLOPs counted by `torch.utils.flop_counter`, a multiply-add counting 2: "
        "the model's forward and backward on every training image it processed, plus a teacher's forward on those "
        "images; plus, for the total, the teacher's own training when the teacher is a run folder with a record "
        "(another arm's), and the pre-training stage the run started from. Evaluation is not counted. ViT export: "
        "each run's saved model exported by `training.export.export_model` to transformers' "
        "`ViTForImageClassification` and run on the same check images; 0.0e+00 is identical logits, and a layout the "
        "built-in ViT cannot express needs custom code.",
        "",
    ]
    return "\n".join(lines)
