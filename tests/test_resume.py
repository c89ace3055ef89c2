"""Kill and resume: a run killed with SIGKILL, or stopped by SIGTERM, and started again ends with exactly the weights
of an unbroken run."""

import json
import re
import signal
import sys
import time
from fnmatch import fnmatch

import pytest
import torch
from conftest import REPO_ROOT, TINY_RUN
from safetensors.torch import load_file
from started import preloaded, run_to_the_end

from vtlm.training.rerun import last_complete_checkpoint


def train_command(dataset, output_dir):
    return (
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "train.py"),
            f"--dataset_name={dataset}",
            "--validation_split_size=100",
        ]
        + TINY_RUN
        + [
            "--num_train_epochs=2",
            "--eval_strategy=steps",
            "--save_strategy=steps",
            "--eval_steps=4",
            "--save_steps=4",
            "--save_total_limit=10",
            "--full_determinism",
            # On for the whole run, falling every step: a resumed run must add the bias of each step as before.
            "--locality_bias=5",
            "--locality_bias_fraction=1",
            f"--output_dir={output_dir}",
        ]
    )


def signal_after_first_loss(process, signum=signal.SIGTERM):
    """Send `process` (a started training script that logs every step, `tests/started.py`) `signum` as soon as it
    prints its first training loss, mid-epoch, and return its exit status and stderr once it has ended."""
    with process:
        process.wait_for_output("'loss'")  # the Trainer prints each log entry to stdout
        process.send_signal(signum)
        process.wait(timeout=300)
        return process.returncode, process.stderr


def stopped_step(status, log, output_dir, signum=signal.SIGTERM):
    """The step that a run stopped by `signum` saved: it exits with 128 + `signum`, no traceback, and one line, from
    one of its processes, that names the step's checkpoint, the newest complete one, which the same command resumes."""
    assert status == 128 + signum, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    said = [line for line in log.splitlines() if line.startswith(("terminated", "interrupted", "error:"))]
    assert len(said) == 1, log[-3000:]
    word = "terminated" if signum == signal.SIGTERM else "interrupted"
    resume = re.fullmatch(rf"{word}: rerun the same command to resume from (.+)/checkpoint-(\d+)", said[0])
    assert resume and resume.group(1) == str(output_dir), log[-3000:]
    assert last_complete_checkpoint(output_dir) == str(output_dir / f"checkpoint-{resume.group(2)}")
    return int(resume.group(2))


def assert_same_weights(clean, resumed, name="model.safetensors"):
    clean_weights, resumed_weights = load_file(clean / name), load_file(resumed / name)
    assert clean_weights.keys() == resumed_weights.keys()
    for key, tensor in clean_weights.items():
        torch.testing.assert_close(resumed_weights[key], tensor, atol=0, rtol=0, msg=f"{name}: {key}")


def kill_after_checkpoint(command, output_dir, newer_than=0):
    """Start `command` (a training script), kill it with SIGKILL as soon as `output_dir` holds a complete checkpoint
    of a step after `newer_than`, and return its stderr."""
    with preloaded(command) as process:
        deadline = time.monotonic() + 300
        while int((last_complete_checkpoint(output_dir) or "-0").rsplit("-", 1)[1]) <= newer_than:
            assert process.poll() is None, f"the run ended before the checkpoint:\n{process.stderr[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        return process.stderr


@pytest.fixture(scope="module")
def clean(cifar100_dir, tmp_path_factory):
    """The unbroken run that every resumed one must end as."""
    folder = tmp_path_factory.mktemp("clean") / "run"
    run_to_the_end(train_command(cifar100_dir, folder))
    return folder


@pytest.mark.slow  # training processes
def test_a_run_stopped_by_sigterm_then_killed_resumes_each_time_to_identical_weights_and_metrics(
    cifar100_dir, clean, tmp_path
):
    """What a cluster scheduler sends before it kills a job, then a kill with no warning. SIGTERM: the run saves the
    step it is in, mid-epoch and off the save schedule (every 4 steps of 10 an epoch), says how to resume, and is not
    taken for a finished run. SIGKILL, in the resumed run after its next checkpoint: the same command again resumes
    from the newest complete checkpoint. Each process fast-forwards the batches its checkpoint trained on, and the run
    ends as the unbroken one did."""
    resumed = tmp_path / "resumed"
    command = [*train_command(cifar100_dir, resumed), "--logging_steps=1"]  # how often it logs does not define it
    step = stopped_step(*signal_after_first_loss(preloaded(command)), resumed)
    checkpoint = resumed / f"checkpoint-{step}"
    assert 0 < step < 20  # before the end: 2 epochs of 10 steps
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    saved = {path.name for path in checkpoint.iterdir()}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "run_arguments.json"} <= saved
    assert not {"model.safetensors", "all_results.json", "run_arguments.json"} & {p.name for p in resumed.iterdir()}

    log = kill_after_checkpoint(command, resumed, newer_than=step)
    assert f"resuming from {checkpoint}" in log
    # The Trainer skips the batches of the epoch that the checkpoint's steps trained on.
    assert f"Fast-forwarding the dataloader past {step // 10} epochs and {step % 10} batches" in log
    assert not (resumed / "all_results.json").exists()
    log = run_to_the_end(command)
    resumed_from = json.loads((resumed / "run_info.json").read_text())["resumed_from_checkpoint"]
    assert f"resuming from {resumed / resumed_from}" in log and int(resumed_from.split("-")[1]) > step

    assert_same_weights(clean, resumed)
    # The record says the run resumed, and its training time covers every process: the clock goes on from each
    # checkpoint's, it does not start again at 0.
    assert json.loads((clean / "run_info.json").read_text())["resumed_from_checkpoint"] is None
    history = json.loads((resumed / "trainer_state.json").read_text())["log_history"]
    clock = [entry["training_seconds"] for entry in history if "training_seconds" in entry]
    assert clock == sorted(clock) and len(clock) == len(history)
    for checkpoint_step in (step, int(resumed_from.split("-")[1])):
        at_checkpoint = max(e["training_seconds"] for e in history if e["step"] <= checkpoint_step)
        assert min(e["training_seconds"] for e in history if e["step"] > checkpoint_step) > at_checkpoint
    card = (resumed / "README.md").read_text()
    assert f"summed over the processes of a run resumed from `{resumed_from}`" in card
    clean_results = json.loads((clean / "all_results.json").read_text())
    resumed_results = json.loads((resumed / "all_results.json").read_text())
    # Timings differ, and the Trainer's `train_loss` summary averages only the losses of the process that finished
    # (its running sum is not checkpointed); every validation and test metric must match exactly.
    for key, value in clean_results.items():
        if key.startswith(("eval_", "test_")) and "runtime" not in key and "per_second" not in key:
            assert resumed_results[key] == value, key


def test_half_written_checkpoint_is_skipped(tmp_path):
    for step in (4, 8, 12, 16):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        (tmp_path / f"checkpoint-{step}" / "run_arguments.json").write_text("{}")
    (tmp_path / "checkpoint-16" / "run_arguments.json").unlink()  # killed after the Trainer's save, before ours
    (tmp_path / "checkpoint-12" / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
    (tmp_path / "checkpoint-8" / "trainer_state.json").unlink()  # killed before it was written
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_a_record_is_whole_or_absent_and_a_kill_mid_write_leaves_a_file_a_rerun_clears(tmp_path, monkeypatch):
    """`write_record` writes each record of a run folder or checkpoint: a kill while it writes leaves the previous
    record whole and a `.partial` file beside it, which is a run's file (a rerun neither refuses the folder for it nor
    publishes it) and which `--overwrite_output_dir` deletes."""
    import vtlm.training.run_record
    from vtlm.training.rerun import clear_previous_run, foreign_files
    from vtlm.training.run_record import ARGUMENTS_FILE, UPLOAD_PATTERNS, read_run_arguments, write_record

    write_record(tmp_path, ARGUMENTS_FILE, {"seed": 1})
    assert read_run_arguments(tmp_path) == {"seed": 1}

    def killed_mid_write(record, file, **kwargs):
        file.write('{"seed": ')
        raise KeyboardInterrupt

    monkeypatch.setattr(vtlm.training.run_record.json, "dump", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        write_record(tmp_path, ARGUMENTS_FILE, {"seed": 2})
    monkeypatch.undo()
    assert read_run_arguments(tmp_path) == {"seed": 1}
    leftover = f"{ARGUMENTS_FILE}.partial"
    assert sorted(path.name for path in tmp_path.iterdir()) == [ARGUMENTS_FILE, leftover]
    assert foreign_files(tmp_path) == [] and not any(fnmatch(leftover, glob) for glob in UPLOAD_PATTERNS)
    clear_previous_run(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_of_other_arguments_is_not_resumed(tmp_path):
    """`prepare_output_dir` compares the arguments that define the run, and only those, with the checkpoint's."""
    from vtlm.training.arguments import parse_arguments
    from vtlm.training.rerun import RunMismatchError, prepare_output_dir
    from vtlm.training.run_record import ARGUMENTS_FILE, run_arguments

    def recorded(*flags, num_processes=1):
        """The record train.py writes for these flags, as `num_processes` processes would write it."""
        return {**run_arguments(parse_arguments([f"--output_dir={tmp_path}", *flags])), "num_processes": num_processes}

    checkpoint = tmp_path / "checkpoint-8"
    checkpoint.mkdir()
    (checkpoint / ARGUMENTS_FILE).write_text(json.dumps(recorded("--learning_rate=1e-3", "--logging_steps=50")))
    training_args = parse_arguments([f"--output_dir={tmp_path}", f"--resume_from_checkpoint={checkpoint}"])[3]
    same_run = recorded("--learning_rate=1e-3", "--logging_steps=10")  # how often it logs does not define a run
    previous = prepare_output_dir(training_args, same_run)
    assert (previous.finished, previous.checkpoint) == (False, str(checkpoint))  # resumable, not finished
    for other, difference in (
        (recorded("--learning_rate=5e-4", "--logging_steps=50"), "--learning_rate"),
        (recorded("--learning_rate=1e-3", "--logging_steps=50", num_processes=2), "--num_processes"),
    ):
        with pytest.raises(RunMismatchError, match=f"the checkpoint {checkpoint} made with other arguments") as error:
            prepare_output_dir(training_args, other)
        assert difference in str(error.value)


def test_an_output_dir_that_is_a_file_or_holds_other_files_is_refused_before_anything_changes(tmp_path):
    from vtlm.training.arguments import VTLMTrainingArguments
    from vtlm.training.rerun import prepare_output_dir

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        prepare_output_dir(VTLMTrainingArguments(output_dir=str(a_file)), {})
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("train.py", "notes.txt", "config.json"):
        (folder / name).write_text("mine")
    for overwrite in (False, True):
        training_args = VTLMTrainingArguments(output_dir=str(folder), overwrite_output_dir=overwrite)
        with pytest.raises(ValueError, match=r"holds files that no VTLM run writes \(notes.txt, train.py\)"):
            prepare_output_dir(training_args, {})
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "notes.txt", "train.py"]
    (folder / "notes.txt").unlink()
    (folder / "train.py").unlink()
    previous = prepare_output_dir(VTLMTrainingArguments(output_dir=str(folder)), {})  # a run's files only
    assert (previous.finished, previous.checkpoint) == (False, None)
