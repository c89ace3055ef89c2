"""Kill and resume: a run killed with SIGKILL and started again ends with exactly the weights of an unbroken run."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, TINY_RUN, kill_after_first_checkpoint
from safetensors.torch import load_file

from training.rerun import last_complete_checkpoint


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


def run(command):
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow  # a script in a fresh interpreter
def test_killed_run_resumes_to_identical_weights_and_metrics(cifar100_dir, tmp_path):
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    run(train_command(cifar100_dir, clean))

    kill_after_first_checkpoint(train_command(cifar100_dir, resumed), resumed)
    assert not (resumed / "all_results.json").exists()
    # The same command again finds the checkpoint and resumes from it.
    log = run(train_command(cifar100_dir, resumed)).stderr
    assert "resuming from" in log

    clean_weights, resumed_weights = load_file(clean / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert clean_weights.keys() == resumed_weights.keys()
    for name, tensor in clean_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, atol=0, rtol=0, msg=name)
    # The record says the run resumed, and its training time covers both processes: the clock goes on from the
    # checkpoint's, it does not start again at 0.
    resumed_from = json.loads((resumed / "run_info.json").read_text())["resumed_from_checkpoint"]
    assert (
        resumed_from.startswith("checkpoint-")
        and json.loads((clean / "run_info.json").read_text())["resumed_from_checkpoint"] is None
    )
    history = json.loads((resumed / "trainer_state.json").read_text())["log_history"]
    clock = [entry["training_seconds"] for entry in history if "training_seconds" in entry]
    assert clock == sorted(clock) and len(clock) == len(history)
    checkpoint_step = int(resumed_from.split("-")[1])
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
    for step in (4, 8, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_step": 8}')
    (tmp_path / "checkpoint-12" / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
    (tmp_path / "checkpoint-8" / "trainer_state.json").unlink()  # killed before it was written
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_a_checkpoint_of_other_arguments_is_not_resumed(tmp_path):
    """`prepare_output_dir` compares the arguments that define the run, and only those, with the checkpoint's."""
    from training.arguments import parse_arguments
    from training.rerun import RunMismatchError, prepare_output_dir
    from training.run_info import ARGUMENTS_FILE, run_arguments

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
    from training.arguments import VTLMTrainingArguments
    from training.rerun import prepare_output_dir

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
