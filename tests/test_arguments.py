"""The flags as a user meets them, in-process: what `--help` and `--help_all` show, and a precision asked for that
the host cannot train in."""

import dataclasses
import logging

import pytest
import torch
from conftest import load_script

from vtlm.training.arguments import (
    ARGUMENT_CLASSES,
    PRETRAINING_ARGUMENT_CLASSES,
    VTLMTrainingArguments,
    parse_arguments,
)

SCREENFUL = 50  # lines of a terminal 80 columns wide


def help_text(capsys, monkeypatch, script, flag="--help"):
    """What `script.py FLAG` prints, through the script's own `main`, on an 80-column terminal."""
    monkeypatch.setenv("COLUMNS", "80")
    module = load_script(script)
    with pytest.raises(SystemExit) as exit:
        module.main([flag])
    assert exit.value.code in (0, None)
    return module.__doc__, capsys.readouterr().out


def flag_names(*classes):
    return {f"--{field.name}" for cls in classes for field in dataclasses.fields(cls)}


# The training flags VTLM declares itself (its defaults, its flags), as opposed to the Trainer's it inherits.
TRAINING_OWN = {f"--{name}" for name in VTLMTrainingArguments.__annotations__}


@pytest.mark.parametrize("script, flag", [("train", "--locality_bias"), ("pretrain", "--mask_ratio")])
def test_help_leads_with_the_description_the_usage_with_a_recipe_and_the_project_flags(
    capsys, monkeypatch, script, flag
):
    docstring, text = help_text(capsys, monkeypatch, script)
    lines = text.splitlines()
    assert lines[0] == f"usage: {script}.py [RECIPE.yaml] [--flag value ...]"
    assert lines[2] == docstring.strip().splitlines()[0]  # the script's own description comes next
    assert "RECIPE.yaml (optional, first)" in text
    assert any(line.lstrip().startswith(flag + " ") for line in lines[:SCREENFUL]), "\n".join(lines[:SCREENFUL])
    assert "--ddp_backend" not in text and "--torch_compile_mode" not in text  # the Trainer's other flags
    assert "--help_all lists them" in " ".join(text.split())


@pytest.mark.parametrize("script, classes", [("train", ARGUMENT_CLASSES), ("pretrain", PRETRAINING_ARGUMENT_CLASSES)])
def test_help_shows_every_project_flag_and_help_all_the_trainers_too(capsys, monkeypatch, script, classes):
    _, short = help_text(capsys, monkeypatch, script)
    _, full = help_text(capsys, monkeypatch, script, "--help_all")
    project = flag_names(*(cls for cls in classes if cls is not VTLMTrainingArguments)) | TRAINING_OWN
    shown = {word for word in short.split() if word.startswith("--")}
    assert project <= shown
    trainer = flag_names(VTLMTrainingArguments) - TRAINING_OWN
    assert not trainer & {line.split()[0] for line in short.splitlines() if line.startswith("  --")}
    title = "the Trainer's other flags (transformers' TrainingArguments):"
    assert title in full.splitlines()
    listed = {line.split()[0] for line in full.split(title)[1].splitlines() if line.startswith("  --")}
    assert trainer <= listed and "--ddp_backend" in listed
    assert full.startswith(short.split("\n\nThe Trainer's other")[0])  # the same help, then the Trainer's flags


def test_each_flag_is_named_once_and_a_no_flag_has_no_misleading_default(capsys, monkeypatch):
    _, text = help_text(capsys, monkeypatch, "train")
    assert "--num-train-epochs" in text  # said once, in the description
    assert "--num_train_epochs NUM_TRAIN_EPOCHS, --num-train-epochs" not in text
    assert "  --no_horizontal_flip  Turn --horizontal_flip off.\n" in text
    assert "(default: uoft-cs/cifar100)" in " ".join(text.split())  # not broken at its hyphen


def test_push_to_hub_help_says_it_publishes_once_at_the_end(capsys, monkeypatch):
    _, text = help_text(capsys, monkeypatch, "train")
    push = " ".join(text.split("  --push_to_hub")[1].split("  --")[0].split())
    assert "once, at the end of training" in push and "every time the model is saved" not in push


# Precision


def precision_warnings(caplog, argv):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vtlm.training.arguments"):
        training_args = parse_arguments([*argv, "--report_to=none"])[3]
    return training_args, [record.getMessage() for record in caplog.records if record.name == "vtlm.training.arguments"]


needs_a_cpu_host = pytest.mark.skipif(torch.cuda.is_available(), reason="what a host without CUDA does")


@needs_a_cpu_host
@pytest.mark.parametrize(
    "argv, asked",
    [
        (["--bf16"], "bf16"),
        (["--fp16"], "fp16"),
        (["--fp16=true", "--use_cpu"], "fp16"),
        (["--bf16", "--fp16"], "bf16"),
    ],
)
def test_a_precision_the_cpu_cannot_run_trains_in_fp32_with_one_warning(caplog, argv, asked):
    training_args, warnings = precision_warnings(caplog, argv)
    assert (training_args.fp16, training_args.bf16) == (False, False)  # what the Trainer gets: fp32
    assert (training_args.precision, training_args.precision_asked) == ("fp32", asked)
    assert training_args.to_dict()[asked] is True  # the recipe, as asked for
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"--{asked}: this host cannot train in {asked} (")
    assert warnings[0].endswith("training in fp32 instead")


@needs_a_cpu_host
@pytest.mark.parametrize("argv", [[], ["--use_cpu"], ["--no_fp16"], ["--bf16", "--use_cpu"]])
def test_the_default_fp16_and_a_precision_the_host_runs_say_nothing(caplog, argv):
    training_args, warnings = precision_warnings(caplog, argv)
    assert warnings == []
    assert training_args.precision == ("bf16" if "--bf16" in argv else "fp32")


@needs_a_cpu_host
def test_a_recipe_asks_for_a_precision_only_where_it_changes_the_default(caplog, tmp_path):
    restated, changed = tmp_path / "restated.yaml", tmp_path / "bf16.yaml"
    restated.write_text("fp16: true\n")  # as every recipe in recipes/ says it
    changed.write_text("bf16: true\n")
    assert precision_warnings(caplog, [str(restated)])[1] == []
    assert [warning[:7] for warning in precision_warnings(caplog, [str(changed)])[1]] == ["--bf16:"]


def test_bf16_on_a_cuda_gpu_without_it_trains_in_fp32_rather_than_failing(caplog, monkeypatch):
    from accelerate.state import PartialState

    for name, value in (("is_available", True), ("is_bf16_supported", False)):
        monkeypatch.setattr(torch.cuda, name, lambda value=value, **kwargs: value)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    PartialState._reset_state()
    try:
        training_args, warnings = precision_warnings(caplog, ["--bf16"])
    finally:
        PartialState._reset_state()
    assert (training_args.precision, training_args.precision_asked) == ("fp32", "bf16")
    assert len(warnings) == 1 and "Ampere or newer" in warnings[0]
