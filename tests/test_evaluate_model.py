"""scripts/evaluate_model.py on a tiny saved model and a generated dataset in the Hub's schema."""

import json

import numpy as np
import pytest
import torch
from conftest import load_script, save_tiny_model, write_hub_dataset

from vtlm.modeling import CIFAR100_MEAN, CIFAR100_STD
from vtlm.training.arguments import DataArguments
from vtlm.training.data import load_image_datasets

evaluate_model = load_script("evaluate_model")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    return folder, save_tiny_model(folder)


def test_evaluate_matches_a_direct_forward_pass(saved_model, cifar100_dir, tmp_path):
    folder, model = saved_model
    argv = [str(folder), f"--dataset_name={cifar100_dir}", "--validation_split_size=100"]
    metrics = evaluate_model.main(argv + [f"--output_dir={tmp_path}"])

    data_args = DataArguments(dataset_name=cifar100_dir, validation_split_size=100)
    data = load_image_datasets(data_args, image_size=32, seed=42)
    test = data.datasets["test"][:]
    mean, std = torch.tensor(CIFAR100_MEAN).view(3, 1, 1), torch.tensor(CIFAR100_STD).view(3, 1, 1)
    with torch.no_grad():
        logits = model((test["images"].float() / 255 - mean) / std).logits
    labels = np.asarray(test["labels"])
    top5 = logits.topk(5).indices.numpy()
    coarse = np.asarray(data.fine_to_coarse)
    assert metrics["test_accuracy"] == pytest.approx(np.mean(top5[:, 0] == labels))
    assert metrics["test_top5_accuracy"] == pytest.approx(np.mean((top5 == labels[:, None]).any(1)))
    assert metrics["test_superclass_accuracy"] == pytest.approx(np.mean(coarse[top5[:, 0]] == coarse[labels]))
    assert metrics["test_num_images"] == 200 and metrics["test_samples_per_second"] > 0

    written = json.loads((tmp_path / "test_results.json").read_text())
    assert written["test_accuracy"] == metrics["test_accuracy"] and written["model"] == str(folder)


def test_validation_split_is_the_training_hold_out(saved_model, cifar100_dir, tmp_path):
    folder, _ = saved_model
    argv = [str(folder), f"--dataset_name={cifar100_dir}", "--split=validation", "--validation_split_size=150"]
    metrics = evaluate_model.main(argv + [f"--output_dir={tmp_path}"])
    assert metrics["validation_num_images"] == 150


def test_labels_that_differ_from_the_model_are_an_error(saved_model, tmp_path):
    folder, _ = saved_model
    names = [f"class_{i}" for i in range(10)]
    data = write_hub_dataset(tmp_path / "ten", {"train": 40, "test": 20}, names, label_column="label", coarse=False)
    argv = [str(folder), f"--dataset_name={data}", "--label_column_name=label", "--validation_split_size=10"]
    with pytest.raises(ValueError, match="predicts 100 labels that differ from the dataset's 10"):
        evaluate_model.main(argv + [f"--output_dir={tmp_path}"])


def test_unknown_split_is_an_error(saved_model):
    with pytest.raises(ValueError, match="--split must be one of"):
        evaluate_model.main([str(saved_model[0]), "--split=dev"])


def test_a_run_folder_is_scored_on_its_own_data_with_no_flags(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    metrics = evaluate_model.main([str(tiny_run)])
    trained = json.loads((tiny_run / "test_results.json").read_text())
    assert metrics["test_accuracy"] == trained["test_accuracy"] and metrics["test_num_images"] == 200
    written = json.loads((tmp_path / "runs" / "evaluate" / f"{tiny_run.name}-test" / "test_results.json").read_text())
    assert (written["model"], written["split"], written["seed"]) == (str(tiny_run), "test", 42)
    assert "epoch" not in written and "test_accuracy_ci_low" in written
    low, high = (f"{written[f'test_accuracy_ci_{end}']:.2%}" for end in ("low", "high"))
    assert f"test split: top-1 {written['test_accuracy']:.2%} (95% interval {low}-{high}) on 200 images" in (
        capsys.readouterr().out
    )

    validation = evaluate_model.main([str(tiny_run), "--split=validation"])
    assert validation["validation_num_images"] == 100  # the run's own hold-out and seed, no flag retyped
    assert (
        validation["validation_accuracy"] == json.loads((tiny_run / "eval_results.json").read_text())["eval_accuracy"]
    )


@pytest.mark.parametrize("flags", [["--validation_split_size=150"], ["--seed=8"]])
def test_a_validation_split_that_overlaps_training_images_is_refused(tiny_run, flags):
    with pytest.raises(ValueError, match="would hold images the run trained on"):
        evaluate_model.main([str(tiny_run), "--split=validation", *flags])


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_a_missing_run_folder_is_named_as_missing(tmp_path, monkeypatch, capsys, relative):
    monkeypatch.chdir(tmp_path)
    model = "runs/nonexist" if relative else str(tmp_path / "runs" / "nonexist")
    assert evaluate_model.run_cli(evaluate_model.main, [model]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    expected = "there is no folder runs/nonexist here" if relative else f"{model} is neither a folder nor a Hub id"
    assert line.startswith(f"error: {expected}")
