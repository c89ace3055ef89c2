"""Bad situations get a clear answer: a diverging run stops with its checkpoints intact; odd images still classify."""

import math
import os

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, load_script, save_tiny_model
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState, pipeline

from vtlm.training.trainer import StopOnNonFiniteLoss

train = load_script("train")


@pytest.mark.parametrize("key", ["loss", "eval_loss"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_loss_stops_naming_the_step(key, value, tmp_path):
    state = TrainerState()
    state.global_step = 17
    args = type("Args", (), {"output_dir": str(tmp_path)})()
    with pytest.raises(FloatingPointError, match=f"{key} is {value} at step 17"):
        StopOnNonFiniteLoss().on_log(args, state, TrainerControl(), logs={key: value})
    StopOnNonFiniteLoss().on_log(args, state, TrainerControl(), logs={key: 2.5})  # finite: nothing happens


@pytest.mark.slow  # a training run of its own
def test_diverging_run_stops_and_keeps_only_finite_checkpoints(cifar100_dir, tmp_path):
    """A learning rate warming up to 1e6 diverges within a few steps. Every step is evaluated and saved, so the
    checkpoints before the divergence exist, and none after it may."""
    argv = [f"--dataset_name={cifar100_dir}", "--validation_split_size=100", f"--output_dir={tmp_path}"] + TINY_RUN
    argv += ["--learning_rate=1e6", "--warmup_steps=8", "--max_grad_norm=0", "--logging_steps=1"]
    argv += ["--eval_strategy=steps", "--save_strategy=steps", "--eval_steps=1", "--save_steps=1"]
    argv += ["--save_total_limit=100", "--num_train_epochs=3"]
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at step (\d+)") as error:
        train.main(argv)
    diverged_at = int(error.value.args[0].split(" at step ")[1].split(";")[0])
    assert not (tmp_path / "all_results.json").exists()
    checkpoints = sorted(int(p.name.split("-")[1]) for p in tmp_path.iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints and max(checkpoints) < diverged_at
    for step in checkpoints:
        # Each checkpoint is a self-contained model folder that loads with trust_remote_code.
        files = set(os.listdir(tmp_path / f"checkpoint-{step}"))
        assert {"config.json", "configuration_vtlm.py", "modeling_vtlm.py", "preprocessor_config.json"} <= files
        for name, tensor in load_file(tmp_path / f"checkpoint-{step}" / "model.safetensors").items():
            assert torch.isfinite(tensor).all(), f"checkpoint-{step}: {name}"


@pytest.fixture(scope="module")
def classify(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    save_tiny_model(folder)
    return pipeline("image-classification", model=str(folder), trust_remote_code=True)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("P", (40, 30), 3),
        Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)),  # 16-bit greyscale, mode I;16
        Image.new("LA", (5, 500), (10, 200)),
        Image.new("CMYK", (64, 64), (0, 50, 100, 0)),
    ],
    ids=["palette", "16-bit", "tall-LA", "CMYK"],
)
def test_pipeline_classifies_unusual_modes_and_sizes(classify, image):
    predictions = classify(image, top_k=3)
    assert len(predictions) == 3 and all(p["label"] in classify.model.config.label2id for p in predictions)
    every_class = classify(image, top_k=classify.model.config.num_labels)  # a softmax over all labels, best first
    assert sum(p["score"] for p in every_class) == pytest.approx(1, abs=1e-5)
    assert predictions == every_class[:3]


def test_pipeline_reports_a_corrupt_file(classify, tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(OSError):
        classify(str(path))
