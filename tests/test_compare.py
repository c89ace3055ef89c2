"""scripts/compare.py: the dataset it writes, the commands it builds, the report it renders, and one real run."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, TINY_CONFIG, TINY_OVERRIDES, load_script
from datasets import ClassLabel, Features, Image, load_dataset
from transformers import TrainerState

from modeling import VTLMConfig, VTLMForImageClassification, build_image_processor
from training import fashion_mnist
from training.arguments import DataArguments, parse_arguments
from training.data import load_image_datasets
from training.flops import flops_per_image
from training.metrics import wilson_interval
from training.run_info import machine_info

compare = load_script("compare")
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(fashion_mnist.FASHION_MNIST_DIR),
    reason=f"Fashion-MNIST is not installed: apt-get install {fashion_mnist.FASHION_MNIST_PACKAGE}",
)


def write_idx(path, array, type_code=0x08):
    """An IDX file as LeCun's page describes it: 0, 0, the type, the number of dimensions, big-endian int32 sizes."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def test_read_idx(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "images.gz", array)
    read = fashion_mnist.read_idx(str(tmp_path / "images.gz"))
    assert read.dtype == np.uint8 and read.shape == (2, 3, 4) and (read == array).all()
    write_idx(tmp_path / "floats.gz", array, type_code=0x0D)
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        fashion_mnist.read_idx(str(tmp_path / "floats.gz"))


def test_stratified_samples_are_disjoint_balanced_and_seeded():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(3), 10))
    train, validation, rest = fashion_mnist.stratified_samples(labels, [4, 2, None], np.random.default_rng(1))
    assert [np.bincount(labels[sample], minlength=3).tolist() for sample in (train, validation, rest)] == [
        [4, 4, 4],
        [2, 2, 2],
        [4, 4, 4],
    ]
    assert sorted(np.concatenate([train, validation, rest]).tolist()) == list(range(30))  # disjoint, all of them
    again = fashion_mnist.stratified_samples(labels, [4, 2, None], np.random.default_rng(1))
    other = fashion_mnist.stratified_samples(labels, [4, 2, None], np.random.default_rng(2))
    assert (again[0] == train).all() and (other[0] != train).any()
    with pytest.raises(ValueError, match="fewer than the 11 asked for"):
        fashion_mnist.stratified_samples(labels, [6, 5], np.random.default_rng(1))


@needs_fashion_mnist
def test_dataset_is_fashion_mnist_in_the_hub_schema(tmp_path):
    images_per_class = {"train": 7, "validation": 3, "test": 2}
    manifest = fashion_mnist.prepare_dataset(str(tmp_path), images_per_class, seed=1)
    for split in ("train", "validation", "test"):
        assert (tmp_path / "data" / f"{split}-00000-of-00001.parquet").is_file()
    raw = load_dataset(str(tmp_path))
    expected_features = Features({"img": Image(), "label": ClassLabel(names=fashion_mnist.FASHION_MNIST_LABELS)})
    assert {split: dataset.features for split, dataset in raw.items()} == dict.fromkeys(raw, expected_features)
    for split, per_class in images_per_class.items():
        assert np.bincount(raw[split]["label"], minlength=10).tolist() == [per_class] * 10
        assert manifest["num_images"][split] == 10 * per_class
    assert manifest["label_names"] == fashion_mnist.FASHION_MNIST_LABELS and manifest["image_shape"] == [28, 28]

    # Every image is one of the official split's, with its label; train and validation share none.
    official = fashion_mnist.load_fashion_mnist()
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
    assert data.label_names == fashion_mnist.FASHION_MNIST_LABELS
    assert {split: len(dataset) for split, dataset in data.datasets.items()} == {
        "train": 70,
        "validation": 30,
        "test": 20,
    }
    row = data.tensors("train")[0]  # an RGB image and its label, whatever the loader names them
    assert sorted(tuple(value.shape) for value in row.values()) == [(), (3, 32, 32)]

    # The same sample is reused as it is; another one in the same folder is refused.
    written = os.path.getmtime(tmp_path / "data" / "train-00000-of-00001.parquet")
    assert fashion_mnist.prepare_dataset(str(tmp_path), images_per_class, seed=1) == manifest
    assert os.path.getmtime(tmp_path / "data" / "train-00000-of-00001.parquet") == written
    with pytest.raises(ValueError, match="holds another sample"):
        fashion_mnist.prepare_dataset(str(tmp_path), images_per_class, seed=2)


def test_arm_flags_reach_train_py_in_order(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "learning_rate: 0.0005\nnum_train_epochs: 300\nhorizontal_flip: false\nreport_to: [none]\nmixup_alpha: 0.0\n"
        "output_dir: elsewhere\n"
    )
    arm = compare.parse_arm(f"my recipe={recipe} --num_train_epochs 3 --mixup_alpha 0.5")
    assert arm.name == "my recipe" and arm.flags == [str(recipe), "--num_train_epochs", "3", "--mixup_alpha", "0.5"]
    common = ["--num_train_epochs", "2", "--learning_rate", "0.002"]
    arguments = compare.train_arguments(arm, common, tmp_path / "data", tmp_path / "run", seed=7)
    model_args, data_args, augmentation_args, training_args, _ = parse_arguments(arguments)
    assert training_args.learning_rate == 0.002  # --common replaces the recipe's value
    assert training_args.num_train_epochs == 3 and augmentation_args.mixup_alpha == 0.5  # the arm's replace both
    assert not augmentation_args.horizontal_flip and training_args.report_to == []  # the recipe's "none", kept
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


def test_a_missing_recipe_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no recipe file"):
        compare.parse_arm(f"a={tmp_path / 'missing.yaml'} --seed_x 1")


def test_schedule_reverses_the_arms_every_round():
    arms = [compare.parse_arm(f"{name}=") for name in "abc"]
    order = [(arm.name, seed) for arm, seed in compare.schedule(arms, [1, 2, 3])]
    assert order == [("a", 1), ("b", 1), ("c", 1), ("c", 2), ("b", 2), ("a", 2), ("a", 3), ("b", 3), ("c", 3)]


def test_a_folder_of_another_command_is_not_reused(tmp_path):
    arm = compare.parse_arm("a=--mixup_alpha 0")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a-seed42.json").write_text(json.dumps({"train_arguments": ["--mixup_alpha", "1"]}))
    with pytest.raises(ValueError, match="holds a run of another command"):
        compare.run_arm(arm, [], tmp_path / "data", str(tmp_path), 42, {}, "a")


def log_history(epoch_ends, final_epoch=None):
    """`trainer_state.json`'s log: a training loss mid-epoch and a validation entry at each `(epoch, training
    seconds)`, as `training.trainer.VTLMTrainer` logs them; the final evaluation repeats the last epoch."""
    history = []
    for epoch, seconds in epoch_ends:
        history.append({"loss": 1.0, "epoch": epoch - 0.5, "training_seconds": seconds - 1})
        history.append({"eval_loss": 0.5, "epoch": epoch, "training_seconds": seconds})
    if final_epoch is not None:
        history.append({"train_runtime": 1.0, "epoch": final_epoch, "training_seconds": epoch_ends[-1][1] + 5})
        history.append({"eval_loss": 0.5, "epoch": final_epoch, "training_seconds": epoch_ends[-1][1] + 9})
    return history


def test_seconds_per_epoch():
    # The median of the gaps between epoch ends; the first epoch (data loading, start-up) has no gap of its own.
    ends = [(1.0, 50.0), (2.0, 150.0), (3.0, 260.0), (4.0, 330.0)]
    assert compare.seconds_per_epoch(log_history(ends, final_epoch=4.0)) == (100.0, 3)
    assert compare.seconds_per_epoch(log_history([(1.0, 10.0), (3.0, 30.0)])) == (10.0, 1)  # an epoch end not seen
    assert compare.seconds_per_epoch(log_history([(1.0, 120.0)])) == (120.0, 0)
    assert compare.seconds_per_epoch(log_history([(2.0, 300.0)])) == (150.0, 0)


def fake_run(folder, accuracy, num_images, epoch_ends, **fields):
    """A run folder with the files train.py leaves, with made-up results, for the report to read."""
    os.makedirs(folder)
    config = VTLMConfig(**TINY_CONFIG, num_labels=10, **fields)
    VTLMForImageClassification(config).save_pretrained(folder)
    build_image_processor().save_pretrained(folder)
    TrainerState(log_history=log_history(epoch_ends)).save_to_json(os.path.join(folder, "trainer_state.json"))
    results = {
        "test_results.json": {"test_accuracy": accuracy, "test_num_images": num_images},
        "run_info.json": {"git_commit": "abc123", "hardware": {"device": "cpu"}},
    }
    for name, content in results.items():
        with open(os.path.join(folder, name), "w") as file:
            json.dump(content, file)
    return config


def test_report_renders_what_the_run_folders_say(tmp_path):
    config = fake_run(tmp_path / "a", 0.8123, 10_000, [(1.0, 50.0), (2.0, 150.0), (3.0, 260.0)])
    fake_run(tmp_path / "b", 0.5, 30, [(1.0, 120.0)])
    fake_run(tmp_path / "c", 0.6, 30, [(1.0, 120.0)], pooling="mean")  # a layout the built-in ViT cannot express
    arm_a = compare.parse_arm("old | new=--randaugment_magnitude 5")
    arm_b = compare.parse_arm("plain=")
    runs = [compare.read_run(str(tmp_path / "a"), arm_a, 42), compare.read_run(str(tmp_path / "b"), arm_b, 43)]
    runs.append(compare.read_run(str(tmp_path / "c"), arm_b, 44))
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
        "label_names": fashion_mnist.FASHION_MNIST_LABELS,
        "image_shape": [28, 28],
        "num_images": {"train": 5000, "validation": 1000, "test": 10_000},
        "sample": {
            "package_version": "1.2-3",
            "seed": 0,
            "images_per_class": {"train": 500, "validation": 100, "test": None},
        },
    }
    machine = {**machine_info(torch.device("cpu")), "cpu_model": "Some CPU", "cpus_available": 2}
    common = ["--num_train_epochs", "3", "--config_overrides", TINY_OVERRIDES]
    report = compare.render_report("python scripts/compare.py --arm x=", dataset, machine, common, runs, "today")

    lower, upper = wilson_interval(8123, 10_000)
    forward, training = f"{flops.forward / 1e6:,.1f}", f"{(flops.forward + flops.backward) / 1e6:,.1f}"
    assert (
        f"| old \\| new | `--randaugment_magnitude 5` | 42 | 81.23% [{100 * lower:.2f}, {100 * upper:.2f}] | 105.0 | "
        f"{forward} | {training} | {num_parameters:,} | 0.0e+00 |"
    ) in report.splitlines()
    lower, upper = wilson_interval(15, 30)
    assert (
        f"| plain | (none) | 43 | 50.00% [{100 * lower:.2f}, {100 * upper:.2f}] | 120.0 * | "
        f"{forward} | {training} | {num_parameters:,} | 0.0e+00 |"
    ) in report.splitlines()
    assert runs[2].vit_export_difference is None and report.splitlines()[-3].endswith("| custom code only |")
    assert "python scripts/compare.py --arm x=" in report and "Generated by `scripts/compare.py` on today" in report
    assert "`dataset-fashion-mnist` 1.2-3" in report and "500 images per class (5,000)" in report
    assert "test: 10,000 images, the whole official test split" in report
    assert f"`--num_train_epochs 3 --config_overrides {TINY_OVERRIDES}`" in report
    assert "Some CPU, 2 available" in report and "`abc123`" in report and "not CIFAR-100" in report
    # Per arm, the mean and sample std over its seeds; one seed has no spread.
    assert "| old \\| new | 1 | 81.23% (one seed) | 105.0 |" in report.splitlines()
    assert "| plain | 2 | 55.00% ± 7.07 | 120.0 |" in report.splitlines()


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

    recorded = json.loads((run_dir / "run_arguments.json").read_text())
    assert recorded["augmentation_arguments"]["randaugment_num_ops"] == 0  # the arm's flag reached train.py
    assert recorded["data_arguments"]["dataset_name"] == str(tmp_path / "fashion-mnist")
    # What is published names the dataset folder, not its path on this machine.
    assert json.loads((run_dir / "run_info.json").read_text())["data_arguments"]["dataset_name"] == "fashion-mnist"
    test = json.loads((run_dir / "test_results.json").read_text())
    assert test["test_num_images"] == 30
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    epoch_ends = [(entry["epoch"], entry["training_seconds"]) for entry in history if "eval_loss" in entry]
    assert [epoch for epoch, _ in epoch_ends[:2]] == [1.0, 2.0]
    assert sorted(os.listdir(tmp_path / "logs")) == ["no-randaugment-seed42.json", "no-randaugment-seed42.log"]

    report = (tmp_path / "report.md").read_text()
    correct = round(test["test_accuracy"] * 30)
    lower, upper = wilson_interval(correct, 30)
    runs_table = report.split("## Runs", 1)[1]
    row = next(line for line in runs_table.splitlines() if line.startswith("| no RandAugment |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:5] == [
        "no RandAugment",
        "`--randaugment_num_ops 0`",
        "42",
        f"{100 * correct / 30:.2f}% [{100 * lower:.2f}, {100 * upper:.2f}]",
        f"{epoch_ends[1][1] - epoch_ends[0][1]:.1f}",
    ]
    assert cells[7] == f"{VTLMForImageClassification(VTLMConfig.from_pretrained(run_dir)).num_parameters():,}"
    assert cells[8] == "0.0e+00"  # the plain layout's built-in ViT export gives identical logits
    assert "train: 5 images per class (50)" in report and "test: 30 images, 3 per class" in report

    # The same command again reuses the run instead of training it again.
    log = tmp_path / "logs" / "no-randaugment-seed42.log"
    log_written = os.path.getmtime(log)
    second = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing the results" in second.stderr and os.path.getmtime(log) == log_written
    assert "'no RandAugment' seed 42: epoch 2 of 2, validation top-1" in first.stderr  # progress from the checkpoints
