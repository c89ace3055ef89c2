"""What a comparison's runs recorded, read back for its report (`training/compare_report.py`): each run's test top-1
and interval (`test_results.json`), its seconds per epoch (`trainer_state.json`), its compute (`run_info.json`) with
what its teacher and its pre-training cost, and its ViT export check from the comparison's own record (`logs/`)."""

import dataclasses
import json
import os
import statistics
from itertools import pairwise

from .run_record import TRAINER_STATE_FILE, read_record, read_run_arguments, results_file
from .trainer import TRAINING_SECONDS, training_seconds


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
    test = read_json(os.path.join(run_dir, results_file("test")))
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
