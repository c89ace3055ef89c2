"""Stopping on a signal: Ctrl-C (SIGINT) or a scheduler's SIGTERM saves the training step under way as a checkpoint
(`training.rerun.StopOnSignal`), and every script ends with one line and 128 + the signal's number (`run_cli`).
The end-to-end runs, a real signal to a real run resumed to identical weights, are in test_resume.py,
test_pretraining.py, test_train.py (to a launcher) and test_cli.py (Ctrl-C)."""

import os
import signal
import threading
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

import vtlm.training.cli
from vtlm.training.cli import Stopped, run_cli
from vtlm.training.rerun import StopOnSignal


def training_args(tmp_path, eval_strategy="epoch", logging_strategy="steps"):
    """What the callback reads of a one-process run's arguments."""
    return SimpleNamespace(
        world_size=1, output_dir=str(tmp_path), eval_strategy=eval_strategy, logging_strategy=logging_strategy
    )


def signalled(signum=signal.SIGTERM):
    """A callback whose process received `signum`, as its handler records it. The signal is at its default
    disposition meanwhile, whatever pytest inherited: a job a shell starts in the background has SIGINT ignored, and
    the callback rightly leaves an ignored signal alone (`test_a_signal_the_parent_ignores_stays_ignored`)."""
    default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
    previous = signal.signal(signum, default)
    try:
        stop = StopOnSignal()
        with stop.catching():
            os.kill(os.getpid(), signum)
    finally:
        signal.signal(signum, previous)
    return stop


def test_a_signal_is_caught_once_and_the_handlers_are_restored():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    stop = StopOnSignal()
    with stop.catching():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # a launcher repeats the terminal's signal: the save goes on
        assert stop.received == signal.SIGTERM
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_a_signal_the_parent_ignores_stays_ignored():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        stop = StopOnSignal()
        with stop.catching():
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == 0
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_mid_epoch_the_step_under_way_is_saved_then_the_run_stops(tmp_path):
    args, control = training_args(tmp_path), TrainerControl()
    state = TrainerState(global_step=7, epoch=0.7)
    unsignalled = StopOnSignal()
    unsignalled.on_step_end(args, state, control)
    unsignalled.on_save(args, state, control)  # an ordinary save goes on
    assert not control.should_save

    stop = signalled(signal.SIGTERM)
    stop.on_step_end(args, state, control)
    assert control.should_save  # this step, not the next scheduled save
    with pytest.raises(Stopped, match=f"rerun the same command to resume from {tmp_path}/checkpoint-7$") as stopped:
        stop.on_save(args, state, control)
    assert stopped.value.signum == signal.SIGTERM


def test_at_an_epochs_last_step_its_evaluation_comes_before_the_save(tmp_path):
    """The resumed run starts the next epoch: the epoch's evaluation must be in the checkpoint."""
    stop, control = signalled(signal.SIGINT), TrainerControl(should_save=True)  # a save scheduled at this step
    state = TrainerState(global_step=10, epoch=1.0)
    stop.on_step_end(training_args(tmp_path), state, control)
    assert not control.should_save
    stop.on_epoch_end(training_args(tmp_path), state, control)
    assert control.should_save
    with pytest.raises(Stopped) as stopped:
        stop.on_save(training_args(tmp_path), state, control)
    assert stopped.value.signum == signal.SIGINT
    # Without an evaluation or a log at the epoch's end, the step saves at once.
    control = TrainerControl()
    signalled().on_step_end(training_args(tmp_path, eval_strategy="steps"), state, control)
    assert control.should_save


@pytest.mark.parametrize(
    "signum, line, status", [(signal.SIGTERM, "terminated", 143), (signal.SIGINT, "interrupted", 130)]
)
def test_a_signal_outside_training_ends_a_script_with_one_line(signum, line, status, capsys):
    def main(argv):
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal did not stop main")

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal
    try:
        assert run_cli(main) == status
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err == f"{line}\n"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_launchers_processes_print_a_mistake_once(monkeypatch, capsys):
    """torchrun and `accelerate launch` start one process per device, each meets the same mistake, and the launcher
    ends the others (SIGTERM) once one of them fails."""

    def main(argv):
        raise ValueError("--learning_rate must be positive, got 0")

    monkeypatch.setattr(vtlm.training.cli, "OTHER_PROCESS_WAIT_S", 0.5)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert run_cli(main) == 2
    assert capsys.readouterr().err == "error: --learning_rate must be positive, got 0\n"
    monkeypatch.setenv("LOCAL_RANK", "1")
    launcher = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM))  # the first process failed first
    launcher.start()
    assert run_cli(main) == 2
    launcher.join()
    assert capsys.readouterr().err == ""
    # Not ended: the mistake was this process's own.
    assert run_cli(main) == 2
    assert capsys.readouterr().err == "error: --learning_rate must be positive, got 0\n"
