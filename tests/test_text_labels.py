"""A run on labels written as strings (an `imagefolder` with a `metadata.csv`), its columns found from the default
flags: `scripts/train.py`, then `scripts/evaluate_model.py` on the same data, number the classes alike."""

import csv
import json
import os

import pytest
from conftest import TINY_RUN, load_script
from PIL import Image
from test_data import write_imagefolder_with_metadata
from transformers import pipeline

CLASSES = ["cat", "dog", "fish"]


@pytest.mark.slow  # a training run of its own
def test_a_run_on_text_labels_is_evaluated_on_the_same_classes(tmp_path, monkeypatch):
    # "fish" is not in the test split, which holds more dogs than cats: a swapped numbering would change top-1.
    test = ["dog", "dog", "cat", "dog", "dog", "cat", "dog", "dog", "cat", "dog"]
    data = write_imagefolder_with_metadata(tmp_path / "pets", {"train": ["fish", "dog", "cat"] * 12, "test": test})
    run = tmp_path / "run"
    argv = [f"--dataset_name={data}", "--validation_split_size=6", "--num_train_epochs=2", "--learning_rate=3e-3"]
    learnable = ["--per_device_train_batch_size=6", "--mixup_prob=0", "--randaugment_num_ops=0", "--warmup_steps=2"]
    load_script("train").main(argv + TINY_RUN + learnable + [f"--output_dir={run}"])

    config = json.loads((run / "config.json").read_text())
    assert config["id2label"] == {str(index): name for index, name in enumerate(CLASSES)}
    record = json.loads((run / "run_info.json").read_text())
    assert record["dataset"]["columns"] == {"image": "image", "label": "category"}
    assert record["dataset"]["label_names"] == CLASSES
    assert record["data_arguments"]["label_column_name"] == "fine_label"  # the record keeps the flags as given
    trained = json.loads((run / "all_results.json").read_text())
    assert trained["test_accuracy"] > 0.9  # it learned the classes: a numbering that differs would show below

    monkeypatch.chdir(tmp_path)
    evaluate_model = load_script("evaluate_model")
    metrics = evaluate_model.main([str(run)])  # the run's own data, from its record: no flag retyped
    assert metrics["test_num_images"] == len(test) and metrics["test_accuracy"] == trained["test_accuracy"]
    validation = evaluate_model.main([str(run), "--split=validation"])
    assert validation["validation_accuracy"] == trained["eval_accuracy"]

    # The published model's names, read against the files' own: the same top-1.
    classifier = pipeline("image-classification", model=str(run), trust_remote_code=True, top_k=1)
    with open(os.path.join(data, "test", "metadata.csv")) as file:
        rows = list(csv.DictReader(file))
    images = [Image.open(os.path.join(data, "test", row["file_name"])) for row in rows]
    predicted = [prediction[0]["label"] for prediction in classifier(images)]
    assert (
        sum(p == row["category"] for p, row in zip(predicted, rows, strict=True)) / len(rows)
        == metrics["test_accuracy"]
    )
