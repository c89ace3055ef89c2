"""Every preset through the whole product, on a tiny version: train, resume, predict, serve."""

import json
import shutil

import pytest
import torch
from conftest import TINY_RUN, class_images, load_script
from PIL import Image
from safetensors.torch import load_file

from vtlm.endpoint.handler import EndpointHandler

pytestmark = pytest.mark.slow  # a run of each preset; the fast tier builds and exports each tokenizer family

NEW_PRESETS = ["vtlm-37m-conv", "vtlm-cct-7-3x1", "vtlm-dhvt-t2"]  # vtlm-37m runs through every other test
# What makes each preset itself, beyond the tiny sizes the runs override.
PRESET_FIELDS = {
    "vtlm-37m-conv": {"patch_embedding_type": "conv", "pooling": "sequence", "use_cls_token": False},
    "vtlm-cct-7-3x1": {"patch_embedding_type": "conv", "pooling": "sequence", "use_cls_token": False},
    "vtlm-dhvt-t2": {"patch_embedding_type": "sope", "feed_forward_type": "daff", "use_head_tokens": True},
}
train = load_script("train")


def train_argv(dataset, output_dir, preset):
    return [f"--dataset_name={dataset}", "--validation_split_size=100", f"--model_preset={preset}", *TINY_RUN] + [
        "--max_steps=4",
        "--eval_strategy=steps",
        "--eval_steps=2",
        "--save_strategy=steps",
        "--save_steps=2",
        "--save_total_limit=10",
        "--full_determinism",
        f"--output_dir={output_dir}",
    ]


@pytest.fixture(scope="module", params=NEW_PRESETS)
def preset_run(request, cifar100_dir, tmp_path_factory):
    """(preset, run folder) of 4 steps of the default recipe, a checkpoint every 2."""
    output_dir = tmp_path_factory.mktemp(request.param)
    train.main(train_argv(cifar100_dir, output_dir, request.param))
    return request.param, output_dir


def test_the_run_is_the_preset(preset_run):
    preset, run = preset_run
    config = json.loads((run / "config.json").read_text())
    assert {name: config[name] for name in PRESET_FIELDS[preset]} == PRESET_FIELDS[preset]
    assert json.loads((run / "run_info.json").read_text())["model_arguments"]["model_preset"] == preset


def test_a_resumed_run_ends_with_the_weights_of_an_unbroken_one(preset_run, cifar100_dir, tmp_path):
    """A folder holding only the first checkpoint, as a kill after it leaves one, resumes to identical weights."""
    preset, run = preset_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(run / "checkpoint-2", resumed / "checkpoint-2")
    train.main(train_argv(cifar100_dir, resumed, preset))
    expected, got = load_file(run / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)
    # BatchNorm's running statistics, where there are any, are saved with the weights and resumed exactly too.
    assert any(key.endswith("running_var") for key in expected) == (preset == "vtlm-dhvt-t2")


def test_predict_and_the_endpoint_give_the_pipelines_answer(preset_run, tmp_path, capsys):
    from transformers import pipeline

    _, run = preset_run
    image = Image.fromarray(class_images([3], image_size=40)[0])
    image.save(tmp_path / "image.png")
    expected = pipeline("image-classification", model=str(run), trust_remote_code=True)(image, top_k=3)

    load_script("predict").main([str(run), str(tmp_path / "image.png"), "--top_k", "3"])
    printed = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[-2] for line in printed] == [row["label"] for row in expected]
    served = EndpointHandler(str(run))({"inputs": image, "parameters": {"top_k": 3}})
    assert [row["label"] for row in served] == [row["label"] for row in expected]
    assert [row["score"] for row in served] == pytest.approx([row["score"] for row in expected], abs=1e-5)
