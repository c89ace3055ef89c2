"""What a rerun finds in its output folder, and what it may do there: start afresh, resume this run from its newest
complete checkpoint, or stop because the run is finished, another run is there, or the folder is not a run's.

`scripts/train.py` calls `prepare_output_dir` once, before any data is loaded, and `check_source_hold_out` (for its
teacher and the saved model it starts from) before training; `scripts/evaluate_model.py` asks `check_same_hold_out`
whether a validation split is the run's own. `train_resumably` trains, resuming where a checkpoint was left, and
turns Ctrl-C or SIGTERM into a checkpoint of the step under way (`StopOnSignal`) that the same command resumes.
The run's record itself (`run_arguments.json`, `run_info.json`) is written and read by `training.run_info`.
"""

import json
import os
import shlex
import shutil
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, fields
from fnmatch import fnmatch

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy, sort_checkpoints
from transformers.utils import logging

from .cli import Stopped
from .run_info import ARGUMENTS_FILE, RUN_INFO_FILE, dataset_source_name, read_run_arguments, read_saved_record

logger = logging.get_logger(__name__)

# Arguments that do not change what a run computes: where it writes, what it logs and reports, how fast it loads
# data. A rerun may change these freely; any other difference means another run.
NOT_DEFINING = (
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_", "log_", "disable_tqdm", "report_to",
    "run_name", "project", "trackio_", "push_to_hub", "hub_", "space_id", "static_space_id", "save_total_limit",
    "save_on_each_node", "save_only_model", "enable_jit_checkpoint", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "dataloader_multiprocessing_context",
    "per_device_eval_batch_size", "eval_batch_size", "eval_accumulation_steps", "eval_do_concat_batches",
    "eval_use_gather_object", "include_", "skip_memory_metrics", "ddp_timeout", "ddp_backend", "debug", "local_rank",
    "preprocessing_num_workers", "cache_dir",
)  # fmt: skip
# The data arguments that decide which images the validation split holds (with the seed).
HOLD_OUT_ARGUMENTS = ("dataset_name", "dataset_config_name", "label_column_name", "validation_split_size")
# What a run writes at the top of its output folder (fnmatch patterns): anything else there is not a run's, and a
# run never trains into it (it would be overwritten, or published with the model).
RUN_FILES = (
    f"{PREFIX_CHECKPOINT_DIR}-*", "runs", "examples", "config.json", "model.safetensors", "configuration_*.py",
    "modeling_*.py", "preprocessor_config.json", "training_args.bin", "*_results.json", "run_info.json",
    ARGUMENTS_FILE, "trainer_state.json", "README.md", "training_curves.png", "handler.py", "requirements.txt",
)  # fmt: skip


class RunMismatchError(ValueError):
    pass


@dataclass
class PreviousRun:
    """What `output_dir` holds of this run: `finished` (it has this run's results), or the `checkpoint` to resume."""

    finished: bool = False
    checkpoint: str | None = None


def prepare_output_dir(training_args, arguments) -> PreviousRun:
    """Judge `training_args.output_dir` for a run of `arguments` (`training.run_info.run_arguments`), before any work.

    With `--overwrite_output_dir`, the main process first deletes what an earlier run left there. Raises a
    `ValueError` when the path is a file or the folder holds files no run writes, and a `RunMismatchError` when it
    holds a finished run or a checkpoint made with other arguments: resuming would mix two runs.
    """
    output_dir = training_args.output_dir
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir {output_dir} is a file, not a folder: pass a folder for the run")
    if foreign := foreign_files(output_dir):
        raise ValueError(
            f"--output_dir {output_dir} holds files that no VTLM run writes ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}): training there would overwrite or publish them. Pass an "
            "empty or new folder."
        )
    with training_args.main_process_first(desc="checking the output folder"):  # the others find what it left
        if training_args.overwrite_output_dir and training_args.process_index == 0:
            clear_previous_run(output_dir)
    checkpoint = training_args.resume_from_checkpoint or last_complete_checkpoint(output_dir)
    finished = read_run_arguments(output_dir)
    records = {"a finished run": finished}
    if checkpoint:
        records[f"the checkpoint {checkpoint}"] = read_run_arguments(checkpoint)
    for what, saved in records.items():
        if saved and (differences := differing_arguments(saved, arguments)):
            raise RunMismatchError(
                f"{output_dir} holds {what} made with other arguments ({'; '.join(differences)}). Resuming it would "
                "mix two runs: pass a new --output_dir, or --overwrite_output_dir to delete it and start afresh."
            )
    return PreviousRun(finished=bool(finished), checkpoint=checkpoint)


def differing_arguments(saved, current):
    """`--name saved -> current` for every argument that defines the run and differs between the two records."""
    differences = []
    # Every group of either record: one that only one of them has (distillation_arguments, recorded for a run with
    # a teacher) differs in each of its values.
    for group in [*current, *(group for group in saved if group not in current)]:
        values, old_values = current.get(group), saved.get(group)
        if not isinstance(values if group in current else old_values, dict):  # a value of its own: num_processes
            values, old_values = {group: values}, {group: old_values}
        values, old_values = values or {}, old_values or {}
        for name in sorted(values.keys() | old_values.keys()):
            old, new = old_values.get(name), values.get(name)
            if old != new and not name.startswith(NOT_DEFINING):
                differences.append(f"--{name} {old} -> {new}")
    return differences


def hold_out_arguments(data_arguments, seed):
    """What decides which images a run's validation split holds, from its data arguments (a dict) and seed."""
    return {"data_arguments": {name: data_arguments.get(name) for name in HOLD_OUT_ARGUMENTS}, "seed": seed}


# Data arguments that only cut a run short or make it faster: another run on the same data need not repeat them.
NOT_WHICH_DATA = ("max_train_samples", "max_eval_samples", "preprocessing_num_workers")


def same_data_flags(data_args, training_args):
    """The flags that give `scripts/train.py` the data of a run of `data_args` and `training_args`: the same images,
    read the same way, with the same validation hold-out (a fine-tuning that holds out other images is refused:
    `check_source_hold_out`), each where it differs from the default, quoted for a shell."""
    values = [(field.name, getattr(data_args, field.name), field.default) for field in fields(data_args)]
    seed = next(field.default for field in fields(training_args) if field.name == "seed")
    values.append(("seed", training_args.seed, seed))
    flags = []
    for name, value, default in values:
        if name not in NOT_WHICH_DATA and value != default:
            value = int(value) if isinstance(value, float) and value.is_integer() else value
            flags.append(f"--{name} {shlex.quote(str(value))}")
    return flags


def check_same_hold_out(run, recorded, data_args, seed):
    """Raise unless `data_args` and `seed` hold out the same validation split as the run `recorded` (its
    `run_arguments.json`): another one would hold images the run trained on."""
    trained = hold_out_arguments(recorded["data_arguments"], recorded["training_arguments"]["seed"])
    if differences := differing_arguments(trained, hold_out_arguments(vars(data_args), seed)):
        raise ValueError(
            f"{run} was trained with other data or seed ({'; '.join(differences)}): that validation split would hold "
            "images the run trained on. Drop those flags to score the run's own validation split."
        )


def source_validation_split(source, data_args, seed, held_out=True):
    """Whether the model `source` (a teacher, or the saved model a run starts from, pre-trained or not: a folder or Hub
    id) held out the validation split that `data_args` and `seed` hold out (`held_out`: False for a dataset's own
    validation split, which no seed moves), from its `run_info.json`: "same"; "other", with the arguments that differ
    (it trained on images of this run's split); or, where its record cannot tell, "not recorded" (no VTLM record) or
    "another dataset" (whose images may still be this one's)."""
    recorded = read_saved_record(source, RUN_INFO_FILE)
    if not recorded.get("data_arguments") or not recorded.get("training_arguments"):
        return "not recorded", []
    # run_info.json names a local dataset by its folder's name: this run's is compared the same way.
    current = {**vars(data_args), "dataset_name": dataset_source_name(data_args)}
    if recorded["data_arguments"].get("dataset_name") != current["dataset_name"]:
        return "another dataset", []
    if not held_out:
        return "same", []
    teachers = hold_out_arguments(recorded["data_arguments"], recorded["training_arguments"].get("seed"))
    differences = differing_arguments(teachers, hold_out_arguments(current, seed))
    return ("other" if differences else "same"), differences


def check_source_hold_out(flag, source, data_args, seed, held_out=True):
    """Raise, before any training, when the model `source` given by `--flag` (a teacher, or the saved model to start
    from) trained on images of this run's validation split (the same dataset, another hold-out): the best epoch would
    be chosen on images that shaped it."""
    verdict, differences = source_validation_split(source, data_args, seed, held_out)
    if verdict == "other":
        raise ValueError(
            f"--{flag} {source} held out another validation split of this dataset ({'; '.join(differences)}): it "
            "trained on images this run would validate on. Train with its hold-out, or from a model trained without "
            "these images."
        )


def foreign_files(output_dir):
    """The names at the top of `output_dir` that no run writes (`RUN_FILES`), sorted; [] for a missing folder."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir) if not any(fnmatch(name, glob) for glob in RUN_FILES))


def clear_previous_run(output_dir):
    """Delete what a run leaves in `output_dir`: its checkpoints, TensorBoard logs, results, record and card."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") or name in ("runs", "examples"):
            shutil.rmtree(path)
        elif name.endswith("_results.json") or name in (
            ARGUMENTS_FILE, "run_info.json", "trainer_state.json", "README.md"
        ):  # fmt: skip
            os.remove(path)


def last_complete_checkpoint(output_dir):
    """The newest `checkpoint-N` in `output_dir` that was completely written, or None.

    transformers' `get_last_checkpoint` returns the newest folder even when a kill cut it short. The Trainer writes
    `trainer_state.json` last, so a checkpoint whose state does not parse is skipped for the one before it.
    """
    if not os.path.isdir(output_dir):
        return None
    for folder in reversed(sort_checkpoints(output_dir)):
        try:
            with open(os.path.join(folder, "trainer_state.json")) as state:
                json.load(state)
        except (OSError, ValueError):
            logger.warning(f"skipping {folder}: it was not completely written")
            continue
        return folder
    return None


class SaveRunArguments(TrainerCallback):
    """Writes the run's arguments into every checkpoint, so that a rerun can tell whether it may resume it."""

    def __init__(self, arguments):
        self.arguments = arguments

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            with open(os.path.join(folder, ARGUMENTS_FILE), "w") as file:
                json.dump(self.arguments, file, indent=2)


class StopOnSignal(TrainerCallback):
    """Turns SIGINT (Ctrl-C) and SIGTERM (what Slurm, Kubernetes and launchers send before they kill a job) into a
    checkpoint: the step under way ends, is saved as a complete checkpoint, as the Trainer's own saves are, and the
    save raises `Stopped`, naming it. Further signals are ignored while it saves (a launcher repeats the terminal's
    signal to its processes); SIGKILL (or Ctrl-\\, SIGQUIT) stops at once.

    The save waits for an optimizer step's end, so gradient accumulation never splits. At an epoch's last step, the
    epoch's end evaluates, logs and saves first, as in a run that goes on: the resumed run starts the next epoch. The
    Trainer's own way to stop (`should_training_stop`) would go on past the save: an evaluation at the epoch's end
    that an unbroken run makes elsewhere, the best model loaded, and with `save_total_limit=1` every checkpoint but
    the best deleted, this one with them. Raising from `on_save` skips all of that; this callback must be the last, so
    that every other callback's `on_save` (`SaveRunArguments` writes the run's arguments there) has run.

    Processes of a multi-process run agree, at each step's end, on whether any of them was signalled (over a CPU
    process group: no device sync), so every one of them saves the same step and stops there."""

    def __init__(self):
        self.received = 0  # the first signal this process received
        self.stopping = 0  # the signal the processes agreed to stop on
        self.group = None

    @contextmanager
    def catching(self):
        """Catch SIGINT and SIGTERM in the main thread (where a parent has not set them ignored), as they were after."""

        def receive(signum, frame):
            self.received = self.received or signum

        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) != signal.SIG_IGN:
                    previous[signum] = signal.signal(signum, receive)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def agreed(self, args):
        """The signal any process received (the highest number), or 0; a collective call in a multi-process run."""
        if self.group is None:
            return self.received
        received = torch.tensor([self.received])
        torch.distributed.all_reduce(received, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return int(received.item())

    def on_train_begin(self, args, state, control, **kwargs):
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            self.group = torch.distributed.new_group(backend="gloo")

    def on_step_end(self, args, state, control, **kwargs):
        if not self.stopping:
            self.stopping = self.agreed(args)
            if self.stopping and state.is_world_process_zero:
                name = signal.Signals(self.stopping).name
                logger.warning(f"{name}: saving step {state.global_step} as a checkpoint, then stopping")
        if not self.stopping:
            return
        if float(state.epoch).is_integer() and IntervalStrategy.EPOCH in (args.eval_strategy, args.logging_strategy):
            control.should_save = False  # on_epoch_end asks for it, once the epoch's evaluation and log are done
        else:
            control.should_save = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopping:
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        if self.stopping:
            checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            raise stopped(checkpoint, self.stopping)


def train_resumably(trainer, previous):
    """`trainer.train()`, resuming from `previous.checkpoint` (`prepare_output_dir`). Ctrl-C or SIGTERM saves the step
    under way and ends it (`StopOnSignal`) with `training.cli.Stopped`, whose one line names the checkpoint the same
    command resumes from; `run_cli` prints it and exits with 130 or 143."""
    stop = StopOnSignal()
    trainer.add_callback(stop)
    try:
        with stop.catching():
            result = trainer.train(resume_from_checkpoint=previous.checkpoint)
            # A signal after the last step's save: the training is done, what comes after it is not.
            stop.stopping = stop.stopping or stop.agreed(trainer.args)
    except Stopped:
        raise
    except KeyboardInterrupt:  # where the handlers could not be set: Ctrl-C outside the main thread
        raise stopped(last_complete_checkpoint(trainer.args.output_dir), signal.SIGINT) from None
    finally:
        trainer.remove_callback(stop)
    if stop.stopping:
        raise stopped(last_complete_checkpoint(trainer.args.output_dir), stop.stopping)
    return result


def stopped(checkpoint, signum):
    """The `Stopped` of a run stopped by `signum`, naming the `checkpoint` the same command resumes from."""
    message = f"rerun the same command to resume from {checkpoint}" if checkpoint else "no checkpoint was saved yet"
    return Stopped(message, signum=signum)
