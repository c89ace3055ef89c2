"""scripts/compare.py: the dataset it writes, the commands it builds, the report it renders, and one real run."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, TINY_CONFIG, TINY_OVERRIDES, load_script
from datasets import ClassLabel, Features, Image, load_dataset

from modeling import VTLMConfig, VTLMForImageClassification
from training.arguments import DataArguments, parse_arguments
from training.data import load_image_datasets
from training.flops import flops_per_image
from training.metrics import wilson_interval

compare = load_script("compare")
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(compare.FASHION_MNIST_DIR),
    reason=f"Fashion-MNIST is not installed in {compare.FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist",
)


def write_idx(path, array, type_code=0x08):
    """An IDX file as LeCun's page describes it: 0, 0, the type, the number of dimensions, big-endian int32 sizes."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def test_read_idx(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "images.gz", array)
    read = compare.read_idx(str(tmp_path / "images.gz"))
    assert read.dtype == np.uint8 and read.shape == (2, 3, 4) and (read == array).all()
    write_idx(tmp_path / "floats.gz", array, type_code=0x0D)
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        compare.read_idx(str(tmp_path / "floats.gz"))


def test_stratified_samples_are_disjoint_balanced_and_seeded():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(3), 10))
    train, validation, rest = compare.stratified_samples(labels, [4, 2, None], np.random.default_rng(1))
    assert [np.bincount(labels[sample], minlength=3).tolist() for sample in (train, validation, rest)] == [
        [4, 4, 4],
        [2, 2, 2],
        [4, 4, 4],
    ]
    assert sorted(np.concatenate([train, validation, rest]).tolist()) == list(range(30))  # disjoint, all of them
    again = compare.stratified_samples(labels, [4, 2, None], np.random.default_rng(1))
    other = compare.stratified_samples(labels, [4, 2, None], np.random.default_rng(2))
    assert (again[0] == train).all() and (other[0] != train).any()
    with pytest.raises(ValueError, match="fewer than the 11 asked for"):
        compare.stratified_samples(labels, [6, 5], np.random.default_rng(1))


@needs_fashion_mnist
def test_dataset_is_fashion_mnist_in_the_hub_schema(tmp_path):
    images_per_class = {"train": 7, "validation": 3, "test": 2}
    manifest = compare.prepare_dataset(str(tmp_path), images_per_class, seed=1)
    for split in ("train", "validation", "test"):
        assert (tmp_path / "data" / f"{split}-00000-of-00001.parquet").is_file()
    raw = load_dataset(str(tmp_path))
    expected_features = Features({"img": Image(), "label": ClassLabel(names=compare.FASHION_MNIST_LABELS)})
    assert {split: dataset.features for split, dataset in raw.items()} == dict.fromkeys(raw, expected_features)
    for split, per_class in images_per_class.items():
        assert np.bincount(raw[split]["label"], minlength=10).tolist() == [per_class] * 10
        assert manifest["num_images"][split] == 10 * per_class
    assert manifest["label_names"] == compare.FASHION_MNIST_LABELS and manifest["image_shape"] == [28, 28]

    # Every image is one of the official split's, with its label; train and validation share none.
    official = compare.load_fashion_mnist()
    seen = {}
    for split, source in (("train", "train"), ("validation", "train"), ("test", "test")):
        images, labels = official[source]
        by_bytes = {image.tobytes(): label for image, label in zip(images, labels, strict=True)}
        rows = raw[split]
        assert {row["img"].mode for row in rows} == {"L"}
        pixels = [np.asarray(row["img"]).tobytes() for row in rows]
        assert [by_bytes.get(image) for image in pixels] == rows["label"]
        seen[split] = set(pixels)
    assert not seen["train"] & seen["validation"]

    # train.py's loader keeps the validation split as it is, and converts the images to RGB at the model's size.
    data = load_image_datasets(DataArguments(dataset_name=str(tmp_path), label_column_name="label"), image_size=32)
    assert data.label_names == compare.FASHION_MNIST_LABELS
    assert {split: len(dataset) for split, dataset in data.datasets.items()} == {
        "train": 70,
        "validation": 30,
        "test": 20,
    }
    row = data.tensors("train")[0]  # an RGB image and its label, whatever the loader names them
    assert sorted(tuple(value.shape) for value in row.values()) == [(), (3, 32, 32)]

    # The same sample is reused as it is; another one in the same folder is refused.
    written = os.path.getmtime(tmp_path / "data" / "train-00000-of-00001.parquet")
    assert compare.prepare_dataset(str(tmp_path), images_per_class, seed=1) == manifest
    assert os.path.getmtime(tmp_path / "data" / "train-00000-of-00001.parquet") == written
    with pytest.raises(ValueError, match="holds another sample"):
        compare.prepare_dataset(str(tmp_path), images_per_class, seed=2)


def test_arm_flags_reach_train_py_in_order(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "learning_rate: 0.0005\nnum_train_epochs: 300\nhorizontal_flip: false\nreport_to: [none]\nmixup_alpha: 0.0\n"
        "output_dir: elsewhere\n"
    )
    arm = compare.parse_arm(f"seed recipe={recipe} --num_train_epochs 3 --mixup_alpha 0.5")
    assert arm.name == "seed recipe" and arm.flags == ["--num_train_epochs", "3", "--mixup_alpha", "0.5"]
    assert arm.recipe_flags[6:9] == ["--report_to", "none", "--mixup_alpha"]  # a list is one flag, its items after
    common = ["--num_train_epochs", "2", "--learning_rate", "0.002"]
    arguments = compare.train_arguments(arm, common, tmp_path / "data", tmp_path / "run", seed=7)
    model_args, data_args, augmentation_args, training_args = parse_arguments(arguments)
    assert training_args.learning_rate == 0.002  # --common replaces the recipe's value
    assert training_args.num_train_epochs == 3 and augmentation_args.mixup_alpha == 0.5  # the arm's replace both
    assert not augmentation_args.horizontal_flip  # from the recipe: nothing replaces it
    assert training_args.output_dir == str(tmp_path / "run") and training_args.seed == 7  # the script's own
    assert data_args.dataset_name == str(tmp_path / "data") and data_args.label_column_name == "label"
    assert training_args.disable_tqdm


@pytest.mark.parametrize(
    "text, match",
    [
        ("no flags but no equals sign", "expected NAME=FLAGS"),
        ("=--mixup_alpha 0", "expected NAME=FLAGS"),
        ("mine=--seed 3", "--seed is set by compare.py"),
        ("mine=--output_dir=x --dataset_name y", "--dataset_name, --output_dir is set by compare.py"),
    ],
)
def test_bad_arms_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        compare.parse_arm(text)


def test_recipe_values_that_are_no_flag_are_refused(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("save_total_limit: null\n")
    with pytest.raises(ValueError, match="save_total_limit: None cannot be given"):
        compare.parse_arm(f"a={recipe}")


def test_schedule_reverses_the_arms_every_round():
    arms = [compare.parse_arm(f"{name}=") for name in "abc"]
    order = [(arm.name, seed) for arm, seed in compare.schedule(arms, [1, 2, 3])]
    assert order == [("a", 1), ("b", 1), ("c", 1), ("c", 2), ("b", 2), ("a", 2), ("a", 3), ("b", 3), ("c", 3)]


def test_a_folder_of_another_command_is_not_reused(tmp_path):
    arm = compare.parse_arm("a=--mixup_alpha 0")
    (tmp_path / compare.RUN_FILE).write_text(json.dumps({"train_arguments": ["--mixup_alpha", "1"], "dataset": {}}))
    with pytest.raises(ValueError, match="holds a run of another command"):
        compare.run_arm(arm, [], tmp_path / "data", str(tmp_path), 42, {}, "a")


def test_seconds_per_epoch():
    # The median of the gaps between epoch ends; the first epoch (data loading, start-up) has no gap of its own.
    assert compare.seconds_per_epoch([[1.0, 50.0], [2.0, 150.0], [3.0, 260.0], [4.0, 330.0]], 999, 4) == (100.0, 3)
    assert compare.seconds_per_epoch([[1.0, 10.0], [3.0, 30.0]], 999, 3) == (10.0, 1)  # an epoch end not seen
    assert compare.seconds_per_epoch([[1.0, 50.0]], 120.0, 1.0) == (120.0, 0)
    assert compare.seconds_per_epoch([], 300.0, 3.0) == (100.0, 0)


def fake_run(folder, accuracy, num_images, train_runtime, epochs, epoch_ends=None):
    """A run folder as train.py leaves it, with made-up results, for the report to read."""
    os.makedirs(folder)
    config = VTLMConfig(**TINY_CONFIG, num_labels=10)
    config.save_pretrained(folder)
    results = {
        "test_results.json": {"test_accuracy": accuracy, "test_num_images": num_images},
        "train_results.json": {"train_runtime": train_runtime, "epoch": epochs},
        "run_info.json": {"git_commit": "abc123", "hardware": {"device": "cpu"}},
    }
    if epoch_ends is not None:
        results[compare.EPOCH_ENDS_FILE] = epoch_ends
    for name, content in results.items():
        with open(os.path.join(folder, name), "w") as file:
            json.dump(content, file)
    return config


def test_report_renders_what_the_run_folders_say(tmp_path):
    config = fake_run(tmp_path / "a", 0.8123, 10_000, 900.0, 3.0, [[1.0, 50.0], [2.0, 150.0], [3.0, 260.0]])
    fake_run(tmp_path / "b", 0.5, 30, 120.0, 1.0)
    arm_a = compare.parse_arm("old | new=--randaugment_magnitude 5")
    arm_b = compare.parse_arm("plain=")
    runs = [compare.read_run(str(tmp_path / "a"), arm_a, 42), compare.read_run(str(tmp_path / "b"), arm_b, 43)]
    flops = flops_per_image(config)
    num_parameters = VTLMForImageClassification(config).num_parameters()
    assert (runs[0].seconds_per_epoch, runs[0].epochs_timed) == (105.0, 2)
    assert (runs[1].seconds_per_epoch, runs[1].epochs_timed) == (120.0, 0)
    assert (runs[0].forward_flops, runs[0].training_flops) == (flops.forward, flops.forward + flops.backward)
    assert runs[0].num_parameters == num_parameters

    dataset = {
        "name": "Fashion-MNIST",
        "package": "dataset-fashion-mnist",
        "licence": "Expat (MIT), Zalando SE 2017",
        "label_names": compare.FASHION_MNIST_LABELS,
        "image_shape": [28, 28],
        "num_images": {"train": 5000, "validation": 1000, "test": 10_000},
        "sample": {
            "package_version": "1.2-3",
            "seed": 0,
            "images_per_class": {"train": 500, "validation": 100, "test": None},
        },
    }
    machine = {
        "cpu": "Some CPU",
        "cores": 2,
        "torch_threads": 2,
        "torch": "9.9",
        "transformers": "8.8",
        "python": "3.x",
    }
    common = ["--num_train_epochs", "3", "--config_overrides", TINY_OVERRIDES]
    report = compare.render_report("python scripts/compare.py --arm x=", dataset, machine, common, runs, "today")

    lower, upper = wilson_interval(8123, 10_000)
    forward, training = f"{flops.forward / 1e6:,.1f}", f"{(flops.forward + flops.backward) / 1e6:,.1f}"
    assert (
        f"| old \\| new | `--randaugment_magnitude 5` | 42 | 81.23% [{100 * lower:.2f}, {100 * upper:.2f}] | 105.0 | "
        f"{forward} | {training} | {num_parameters:,} |"
    ) in report.splitlines()
    lower, upper = wilson_interval(15, 30)
    assert (
        f"| plain | (none) | 43 | 50.00% [{100 * lower:.2f}, {100 * upper:.2f}] | 120.0 * | "
        f"{forward} | {training} | {num_parameters:,} |"
    ) in report.splitlines()
    assert "python scripts/compare.py --arm x=" in report and "Generated by `scripts/compare.py` on today" in report
    assert "`dataset-fashion-mnist` 1.2-3" in report and "500 images per class (5,000)" in report
    assert "test: 10,000 images, the whole official test split" in report
    assert f"`--num_train_epochs 3 --config_overrides {TINY_OVERRIDES}`" in report
    assert "Some CPU, 2 cores" in report and "`abc123`" in report and "not CIFAR-100" in report


@needs_fashion_mnist
@pytest.mark.slow
def test_one_real_arm_end_to_end(tmp_path):
    """The command line as a user runs it: one tiny arm for 2 epochs through train.py, then the same command again."""
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "scripts", "compare.py"),
        f"--output_dir={tmp_path}",
        "--train_images_per_class=5",
        "--validation_images_per_class=2",
        "--test_images_per_class=3",
        f"--common=--config_overrides {TINY_OVERRIDES} --num_train_epochs 2 --report_to none",
        "--arm",
        "no RandAugment=--randaugment_num_ops 0",
    ]
    first = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "no-randaugment-seed42"
    assert "'no RandAugment' seed 42: epoch 2 done" in first.stderr

    recorded = json.loads((run_dir / "run_arguments.json").read_text())
    assert recorded["augmentation_arguments"]["randaugment_num_ops"] == 0  # the arm's flag reached train.py
    assert recorded["data_arguments"]["dataset_name"] == str(tmp_path / "fashion-mnist")
    # What is published names the dataset folder, not its path on this machine.
    assert json.loads((run_dir / "run_info.json").read_text())["data_arguments"]["dataset_name"] == "fashion-mnist"
    test = json.loads((run_dir / "test_results.json").read_text())
    assert test["test_num_images"] == 30
    epoch_ends = json.loads((run_dir / compare.EPOCH_ENDS_FILE).read_text())
    assert [epoch for epoch, _ in epoch_ends] == [1.0, 2.0]

    report = (tmp_path / "report.md").read_text()
    correct = round(test["test_accuracy"] * 30)
    lower, upper = wilson_interval(correct, 30)
    row = next(line for line in report.splitlines() if line.startswith("| no RandAugment |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:5] == [
        "no RandAugment",
        "`--randaugment_num_ops 0`",
        "42",
        f"{100 * correct / 30:.2f}% [{100 * lower:.2f}, {100 * upper:.2f}]",
        f"{epoch_ends[1][1] - epoch_ends[0][1]:.1f}",
    ]
    assert cells[7] == f"{VTLMForImageClassification(VTLMConfig.from_pretrained(run_dir)).num_parameters():,}"
    assert "train: 5 images per class (50)" in report and "test: 30 images, 3 per class" in report

    # The same command again reuses the run instead of training it again.
    log_written = os.path.getmtime(run_dir / "train.log")
    second = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing the results" in second.stderr and os.path.getmtime(run_dir / "train.log") == log_written
