"""Arms (`training/compare_arms.py`) trained side by side with `scripts/train.py` (and `scripts/pretrain.py`): what
`scripts/compare.py` runs before it writes their report.

1. The dataset: by default the project's proxy, a Fashion-MNIST sample written once (`training.fashion_mnist`); or any
   dataset `train.py` loads (`--dataset_name`, a Hub id such as CIFAR-100 or a folder), which train.py splits itself.
2. Every arm runs as its own `python scripts/train.py` process (the real training path) into
   `OUTPUT_DIR/runs/ARM-seedS`, its command and output beside it in `OUTPUT_DIR/logs/`. Each seed is a round of all
   arms, the order of the arms reversed every other round. An arm may start with a pre-training stage
   (`scripts/pretrain.py` into `runs/ARM-seedS-pretrain`, then train.py fine-tunes it), and may train as many epochs
   as another arm of the same seed cost (`match_compute`). A run that already holds results of the same command is
   reused; one cut short resumes from its last checkpoint (the scripts do that).
3. After each run, its exact export to the built-in ViT is checked once and the result kept in the run's log record.
4. What the runs recorded is read back (`training/compare_results.py`) for the report (`training/compare_report.py`).
"""

import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from vtlm.modeling import VTLMConfig

from .arguments import RECIPE_SUFFIXES, parse_arguments
from .build import build_config
from .compare_arms import slug
from .compare_results import read_json, read_run, read_total_compute
from .export import export_model
from .flops import flops_per_image
from .rerun import last_complete_checkpoint
from .run_record import ARGUMENTS_FILE, TRAINER_STATE_FILE, read_record, write_record
from .vit_conversion import vit_refusals

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_path(name):
    """`scripts/NAME.py` of this checkout, or, where the package was installed from a wheel, the one on PATH."""
    path = os.path.join(REPO_ROOT, "scripts", f"{name}.py")
    return path if os.path.isfile(path) else shutil.which(f"{name}.py") or path


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
    """The runs of `arms` (`compare_arms.parse_arms`) in `output_dir`, on `dataset` (`(dataset_name,
    label_column_name)`) described by `manifest`, with `common_flags` for every run."""

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
        other = read_total_compute(self.run_dir(self.arm(arm.match_compute), seed))
        model_args = parse_arguments(script_arguments(arm.flags, self.common_flags, self.dataset, "x", seed))[0]
        per_epoch = flops_per_image(build_config(model_args)).training * self.manifest["num_images"]["train"]
        return max(1, round(other["total"] / per_epoch))

    def arm(self, name):
        return next(arm for arm in self.arms if arm.name == name)

    def run(self, seeds):
        """Train every arm for every seed (or reuse what is there); return what each run recorded (`RunResult`s),
        arm by arm in the arms' order, then seed by seed."""
        order = schedule(self.arms, seeds)
        for index, (arm, seed) in enumerate(order, 1):
            label = f"[{index}/{len(order)}] {arm.name!r} seed {seed}"
            if arm.pretrain_flags is not None:
                arguments = script_arguments(
                    arm.pretrain_flags, self.common_flags, self.dataset, self.run_dir(arm, seed, "pretrain"), seed
                )
                self.run_script("pretrain", arguments, arm, seed, f"{label} pre-training")
            self.run_script("train", self.train_arguments(arm, seed), arm, seed, label)
        return [
            read_run(self.run_dir(arm, seed), self.record_path(arm, seed), arm, seed)
            for arm in self.arms
            for seed in seeds
        ]

    def run_script(self, stage, arguments, arm, seed, label):
        """Run `scripts/{stage}.py` with `arguments` into its run folder, or reuse the results there if the same
        command made them; the command, train.py's output and the run's ViT export check go into `logs/`."""
        run_dir, record_path = self.run_dir(arm, seed, stage), self.record_path(arm, seed, stage)
        record = {"arguments": arguments, "dataset": self.manifest}
        finished = os.path.join(run_dir, ARGUMENTS_FILE)
        if os.path.exists(record_path):
            saved = read_json(record_path)
            if {key: saved.get(key) for key in record} != record:
                raise ValueError(f"{run_dir} holds a run of another command ({record_path}); pass another --output_dir")
            if os.path.exists(finished) and "vit_export_difference" in saved:
                logger.info(f"{label}: reusing the results in {run_dir}")
                return
        os.makedirs(os.path.dirname(record_path), exist_ok=True)
        write_record(os.path.dirname(record_path), os.path.basename(record_path), record)
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
        write_record(os.path.dirname(record_path), os.path.basename(record_path), record)


def vit_export_difference(run_dir):
    """The max |logit difference| of the run's exact built-in ViT export (`training.export.export_model`), or None
    for a layout the built-in ViT cannot express."""
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
