"""What a rerun finds in its output folder, and what it may do there: start afresh, resume this run from its newest
complete checkpoint, or stop because the run is finished, another run is there, or the folder is not a run's.

A run (`training.run.run_training`) calls `prepare_output_dir` once, before any data is loaded. `train_resumably`
trains, resuming where a checkpoint was left, and turns Ctrl-C or SIGTERM into a checkpoint of the step under way
(`StopOnSignal`) that the same command resumes. The run's record itself (`run_arguments.json`, `run_info.json`), and
the comparison of two records, are `training.run_record`'s.
"""

import json
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy, sort_checkpoints
from transformers.utils import logging

from .cli import Stopped
from .run_record import (
    ARGUMENTS_FILE,
    EXAMPLES_DIR,
    RECORD_FILES,
    RUN_FILES,
    TENSORBOARD_DIR,
    TRAINER_STATE_FILE,
    differing_arguments,
    read_run_arguments,
    write_record,
)

logger = logging.get_logger(__name__)


class RunMismatchError(ValueError):
    pass


@dataclass
class PreviousRun:
    """What `output_dir` holds of this run: `finished` (it has this run's results), or the `checkpoint` to resume."""

    finished: bool = False
    checkpoint: str | None = None


def prepare_output_dir(training_args, arguments) -> PreviousRun:
    """Judge `training_args.output_dir` for a run of `arguments` (`training.run_record.run_arguments`), before any work.

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
        if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") or name in (TENSORBOARD_DIR, EXAMPLES_DIR):
            shutil.rmtree(path)
        elif any(fnmatch(name, glob) for glob in RECORD_FILES):
            os.remove(path)


def last_complete_checkpoint(output_dir):
    """The newest `checkpoint-N` in `output_dir` that was completely written, or None.

    transformers' `get_last_checkpoint` returns the newest folder even when a kill cut it short. The Trainer writes
    `trainer_state.json` last, and `SaveRunArguments` then adds the run's arguments, so a checkpoint where either
    does not parse is skipped for the one before it.
    """
    if not os.path.isdir(output_dir):
        return None
    for folder in reversed(sort_checkpoints(output_dir)):
        try:
            for name in (TRAINER_STATE_FILE, ARGUMENTS_FILE):
                with open(os.path.join(folder, name)) as file:
                    json.load(file)
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
            checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            write_record(checkpoint, ARGUMENTS_FILE, self.arguments)


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
