"""The data path: loading in the Hub's schema, decoding once, the validation hold-out, limits, errors, batching."""

import csv
import io
import logging
import os
import socket
import time

import numpy as np
import pytest
import torch
from conftest import class_images, write_hub_dataset
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value, load_dataset
from PIL import Image as PILImage
from transformers import HfArgumentParser

import vtlm.training.data
import vtlm.training.hub_access
from vtlm.training.arguments import DataArguments
from vtlm.training.data import ImageTensorDataset, collate_batch, load_image_datasets

CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_splits(root, splits, features):
    """Write `{split: columns}` as `root/data/{split}-00000-of-00001.parquet`, the Hub's layout."""
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    for split, columns in splits.items():
        dataset = Dataset.from_dict(columns, features=Features(features))
        dataset.to_parquet(os.path.join(root, "data", f"{split}-00000-of-00001.parquet"))
    return str(root)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def three_class_columns(num_rows, seed=0):
    labels = np.arange(num_rows) % 3
    return {"img": list(class_images(labels, seed=seed)), "label": labels.tolist()}


THREE_CLASSES = {"img": Image(), "label": ClassLabel(names=["a", "b", "c"])}


def write_imagefolder(root, splits):
    """`{split: [class name, ...]}` as an `imagefolder`: `root/split/class/NNN.png`, one learnable PNG per name.
    Returns the root and `{split: {file path relative to root: class name}}`."""
    files = {}
    for split, names in splits.items():
        files[split] = {}
        classes = sorted(set(names))
        images = class_images([classes.index(name) for name in names])
        for index, (name, image) in enumerate(zip(names, images, strict=True)):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            PILImage.fromarray(image).save(os.path.join(root, split, name, f"{index:03d}.png"))
            files[split][f"{split}/{name}/{index:03d}.png"] = name
    # In the order `imagefolder` lists them: sorted by path.
    return str(root), {split: dict(sorted(paths.items())) for split, paths in files.items()}


def write_imagefolder_with_metadata(root, splits, column="category"):
    """`{split: [class name, ...]}` as an `imagefolder` with a `metadata.csv` per split: `root/split/NNN.png`, and the
    class names, as strings, in the column `column`: each class's images alike (`class_images`). Returns the root."""
    classes = sorted({name for names in splits.values() for name in names})
    for seed, (split, names) in enumerate(splits.items()):
        os.makedirs(os.path.join(root, split))
        images = class_images([classes.index(name) for name in names], seed=seed)
        with open(os.path.join(root, split, "metadata.csv"), "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["file_name", column])
            for index, (name, image) in enumerate(zip(names, images, strict=True)):
                PILImage.fromarray(image).save(os.path.join(root, split, f"{index:03d}.png"))
                writer.writerow([f"{index:03d}.png", name])
    return str(root)


def labels_of(data, split):
    return [data.label_names[label] for label in np.asarray(data.datasets[split][:]["labels"])]


def row_keys(dataset):
    """One key per row, its pixels' bytes: the tiny datasets' images are all different."""
    return [pixels.numpy().tobytes() for pixels in dataset[:]["images"]]


def load(dataset_name, **overrides):
    return load_image_datasets(DataArguments(dataset_name=dataset_name, **overrides), image_size=32, seed=0)


def test_rows_are_decoded_uint8_images_with_labels(cifar100_dir):
    data = load(cifar100_dir, validation_split_size=100)
    assert {split: len(dataset) for split, dataset in data.datasets.items()} == {
        "train": 300,
        "validation": 100,
        "test": 200,
    }
    row = data.datasets["train"][0]
    assert set(row) == {"images", "labels"}
    assert row["images"].dtype == torch.uint8 and row["images"].shape == (3, 32, 32)
    assert isinstance(row["labels"], int)
    # The test split keeps its order: compare with `datasets`' own decoding of the same rows.
    reference = load_dataset(cifar100_dir)["test"]
    for index in (0, 57, 199):
        expected = np.asarray(reference[index]["img"]).transpose(2, 0, 1)
        np.testing.assert_array_equal(data.datasets["test"][index]["images"].numpy(), expected)
        assert data.datasets["test"][index]["labels"] == reference[index]["fine_label"]


def test_label_names_and_superclasses_come_from_the_data(cifar100_dir):
    data = load(cifar100_dir, validation_split_size=100)
    hub_names = load_dataset(cifar100_dir)["train"].features["fine_label"].names
    assert hub_names[26] == "cra" and data.label_names[26] == "crab"
    assert data.label_names[:26] == hub_names[:26] and data.label_names[27:] == hub_names[27:]
    assert data.id2label[26] == "crab" and data.label2id["crab"] == 26
    # conftest gives fine label l the superclass l * 20 // 100.
    assert data.fine_to_coarse == [label * 20 // 100 for label in range(100)]


def test_validation_is_held_out_of_train_disjoint_and_stratified(cifar100_dir):
    data = load(cifar100_dir, validation_split_size=200)
    train, validation = row_keys(data.datasets["train"]), row_keys(data.datasets["validation"])
    assert not set(train) & set(validation)
    source = [np.asarray(image).transpose(2, 0, 1).tobytes() for image in load_dataset(cifar100_dir)["train"]["img"]]
    assert len(train) + len(validation) == len(source) and set(train) | set(validation) == set(source)
    # 4 images per class in train: a stratified hold-out of 200 takes exactly 2 of each.
    assert np.bincount(np.asarray(data.datasets["validation"][:]["labels"]), minlength=100).tolist() == [2] * 100


def test_hold_out_depends_only_on_the_seed(cifar100_dir):
    args = DataArguments(dataset_name=cifar100_dir, validation_split_size=100)
    first = row_keys(load_image_datasets(args, seed=0).datasets["validation"])
    again = row_keys(load_image_datasets(args, seed=0).datasets["validation"])
    other = row_keys(load_image_datasets(args, seed=1).datasets["validation"])
    assert first == again
    assert set(first) != set(other)


def test_limits_cut_after_the_hold_out(cifar100_dir):
    full = load(cifar100_dir, validation_split_size=100)
    cut = load(cifar100_dir, validation_split_size=100, max_train_samples=50, max_eval_samples=30)
    assert [len(cut.datasets[split]) for split in ("train", "validation", "test")] == [50, 30, 30]
    for split in ("train", "validation", "test"):
        assert row_keys(cut.datasets[split]) == row_keys(full.datasets[split])[: len(cut.datasets[split])]


def test_a_validation_split_in_the_dataset_is_used_as_is(tmp_path):
    root = write_hub_dataset(tmp_path, {"train": 200, "validation": 120, "test": 100})
    data = load(root, validation_split_size=50)
    assert [len(data.datasets[split]) for split in ("train", "validation", "test")] == [200, 120, 100]
    reference = load_dataset(root)["validation"]
    np.testing.assert_array_equal(
        data.datasets["validation"][5]["images"].numpy(), np.asarray(reference[5]["img"]).transpose(2, 0, 1)
    )


def test_cifar10_schema(tmp_path):
    root = write_hub_dataset(tmp_path, {"train": 60, "test": 20}, CIFAR10_LABELS, label_column="label", coarse=False)
    data = load(root, label_column_name="label", validation_split_size=20)
    assert data.label_names == CIFAR10_LABELS
    assert data.fine_to_coarse is None
    assert [len(data.datasets[split]) for split in ("train", "validation", "test")] == [40, 20, 20]
    assert np.bincount(np.asarray(data.datasets["validation"][:]["labels"])).tolist() == [2] * 10


def palette_image():
    image = PILImage.new("P", (32, 32), 1)
    image.putpalette([0, 0, 0, 200, 100, 50])
    return image


def test_any_image_mode_and_size_becomes_rgb_at_image_size(tmp_path):
    images = [
        PILImage.new("L", (40, 24), 77),
        PILImage.new("RGBA", (32, 32), (10, 20, 30, 128)),
        palette_image(),
        PILImage.fromarray(np.full((32, 32), 257 * 90, dtype=np.uint16)),
        PILImage.new("RGB", (64, 48), (1, 2, 3)),
        PILImage.new("CMYK", (32, 32), (0, 0, 0, 0)),
    ]
    assert images[3].mode == "I;16"
    test = {"img": images, "label": [0, 1, 2, 0, 1, 2]}
    root = write_splits(tmp_path, {"train": three_class_columns(6), "test": test}, THREE_CLASSES)
    args = DataArguments(dataset_name=root, label_column_name="label", validation_split_size=3)
    pixels = load_image_datasets(args, image_size=32).datasets["test"][:]["images"]  # test rows keep their order
    assert pixels.dtype == torch.uint8 and pixels.shape == (6, 3, 32, 32)
    colours = [tuple(image[:, 0, 0].tolist()) for image in pixels]
    assert (pixels == pixels[:, :, :1, :1]).all()  # every image is one colour, resized or not
    assert colours == [
        (77, 77, 77),  # L: grey in every channel, resized from 40x24
        (10, 20, 30),  # RGBA: alpha dropped
        (200, 100, 50),  # P: palette resolved
        (90, 90, 90),  # 16-bit grey rescaled to 8 bits, not clipped at 255
        (1, 2, 3),  # resized from 64x48
        (255, 255, 255),  # CMYK white
    ]
    assert load_image_datasets(args, image_size=16).datasets["test"][:]["images"].shape == (6, 3, 16, 16)


def test_corrupt_image_fails_naming_split_and_index(tmp_path):
    images = [png_bytes(image) for image in map(PILImage.fromarray, class_images(np.arange(9) % 3))]
    images[4] = b"not an image"
    images[7] = images[7][:40]  # a truncated PNG
    columns = {"img": [{"bytes": data, "path": None} for data in images], "label": (np.arange(9) % 3).tolist()}
    root = write_splits(tmp_path, {"train": columns, "test": three_class_columns(3)}, THREE_CLASSES)
    with pytest.raises(ValueError, match=r"image 4 of split 'train' cannot be decoded.*--corrupt_images skip"):
        load(root, label_column_name="label", validation_split_size=3)


@pytest.mark.parametrize("workers", [None, 2])
def test_corrupt_images_are_skipped_with_a_warning(tmp_path, caplog, workers):
    images = [png_bytes(image) for image in map(PILImage.fromarray, class_images(np.arange(12) % 3))]
    images[4] = b"not an image"
    images[7] = images[7][:40]  # in the second of two workers' shards
    columns = {"img": [{"bytes": data, "path": None} for data in images], "label": (np.arange(12) % 3).tolist()}
    root = write_splits(tmp_path, {"train": columns, "test": three_class_columns(3)}, THREE_CLASSES)
    with caplog.at_level(logging.WARNING, logger="vtlm.training.data"):
        data = load(
            root,
            label_column_name="label",
            validation_split_size=3,
            corrupt_images="skip",
            preprocessing_num_workers=workers,
        )
    assert len(data.datasets["train"]) + len(data.datasets["validation"]) == 10
    assert "skipped 2 images of split 'train' that cannot be decoded: index 4, index 7" in caplog.text


def test_skipped_and_failing_images_are_named_by_their_files(tmp_path, caplog):
    """An `imagefolder` knows each image's file: the warning (and the error without `skip`) names it."""
    root, files = write_imagefolder(tmp_path, {"train": ["cats", "dogs"] * 6, "test": ["cats", "dogs"]})
    with open(os.path.join(root, "train", "cats", "broken.png"), "wb") as file:
        file.write(b"not an image")
    index = sorted(["train/cats/broken.png", *files["train"]]).index("train/cats/broken.png")
    assert (
        load_dataset(root)["train"]
        .cast_column("image", Image(decode=False))[index]["image"]["path"]
        .endswith("train/cats/broken.png")
    )  # `imagefolder` lists the files in sorted order
    with caplog.at_level(logging.WARNING, logger="vtlm.training.data"):
        data = load(root, validation_split_size=4, corrupt_images="skip")
    assert len(data.datasets["train"]) + len(data.datasets["validation"]) == 12
    assert (
        f"skipped 1 image of split 'train' that cannot be decoded: train/cats/broken.png (index {index})" in caplog.text
    )
    with pytest.raises(ValueError, match=rf"image {index} of split 'train' \(train/cats/broken.png\) cannot be"):
        load(root, validation_split_size=4)


def test_skipped_images_of_a_parquet_are_named_by_the_paths_it_records(tmp_path, caplog):
    images = [png_bytes(image) for image in map(PILImage.fromarray, class_images(np.arange(9) % 3))]
    images[5] = b"not an image"
    paths = [f"photos/{index:03d}.jpg" for index in range(9)]
    columns = {
        "img": [{"bytes": data, "path": path} for data, path in zip(images, paths, strict=True)],
        "label": [0, 1, 2] * 3,
    }
    root = write_splits(tmp_path, {"train": columns, "test": three_class_columns(3)}, THREE_CLASSES)
    with caplog.at_level(logging.WARNING, logger="vtlm.training.data"):
        load(root, label_column_name="label", validation_split_size=3, corrupt_images="skip")
    assert "skipped 1 image of split 'train' that cannot be decoded: photos/005.jpg (index 5)" in caplog.text


def test_a_split_with_only_corrupt_images_is_an_error(tmp_path):
    columns = {"img": [{"bytes": b"junk", "path": None}] * 3, "label": [0, 1, 2]}
    root = write_splits(tmp_path, {"train": three_class_columns(9), "test": columns}, THREE_CLASSES)
    with pytest.raises(ValueError, match="split 'test' .* has no image that can be decoded"):
        load(root, label_column_name="label", validation_split_size=3, corrupt_images="skip")


def test_images_are_decoded_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    root = write_hub_dataset(tmp_path, {"train": 30, "test": 10}, CIFAR10_LABELS, label_column="label", coarse=False)
    opened = []
    original_open = PILImage.open
    monkeypatch.setattr(vtlm.training.data.PILImage, "open", lambda *args: opened.append(1) or original_open(*args))
    load(root, label_column_name="label", validation_split_size=10)
    assert len(opened) == 40
    load(root, label_column_name="label", validation_split_size=10, max_train_samples=5)
    assert len(opened) == 40
    # An edited decoder decodes again: `datasets` alone would fingerprint it by name and reuse the old arrays.
    original_decode = vtlm.training.data._decode_image
    monkeypatch.setattr(vtlm.training.data, "_decode_image", lambda image, size: 255 - original_decode(image, size))
    data = load(root, label_column_name="label", validation_split_size=10)
    assert len(opened) == 80
    expected = 255 - np.asarray(load_dataset(root)["test"][0]["img"]).transpose(2, 0, 1)
    np.testing.assert_array_equal(data.datasets["test"][0]["images"].numpy(), expected)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_column_name": "image"}, r"--image_column_name 'image' is not a column .* \['img', 'fine_label'"),
        ({"label_column_name": "label"}, r"--label_column_name 'label' is not a column .* \['img', 'fine_label'"),
        ({"validation_split_size": 400}, r"--validation_split_size \(400\) must be smaller than the train split"),
        ({"validation_split_size": 50}, r"cannot hold out 50 of 400 train images stratified by label"),
        ({"image_column_name": "fine_label"}, r"--image_column_name 'fine_label' must be an Image column"),
    ],
)
def test_bad_arguments_for_the_data_are_clear_errors(cifar100_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        load(cifar100_dir, **overrides)


def test_imagefolder_columns_are_found_when_the_flags_are_left_at_their_defaults(tmp_path, caplog):
    """An `imagefolder`'s `image` and `label`, not CIFAR-100's `img` and `fine_label`: both found, said once."""
    root, files = write_imagefolder(tmp_path, {"train": ["cats", "dogs"] * 6, "test": ["cats", "dogs", "dogs"]})
    with caplog.at_level(logging.INFO, logger="vtlm.training.data"):
        data = load(root, validation_split_size=4)
    assert (data.image_column, data.label_column, data.label_names) == ("image", "label", ["cats", "dogs"])
    (line,) = [record.getMessage() for record in caplog.records if "left at" in record.getMessage()]
    assert line == (
        f"--image_column_name 'img' and --label_column_name 'fine_label' (left at their defaults) are not columns of "
        f"{root!r}: using its only Image column 'image' and its only ClassLabel column 'label'"
    )
    assert labels_of(data, "test") == list(files["test"].values())  # the test split keeps the files' order
    expected = [np.asarray(PILImage.open(os.path.join(root, path))).transpose(2, 0, 1) for path in files["test"]]
    np.testing.assert_array_equal(data.datasets["test"][:]["images"].numpy(), np.stack(expected))


def test_a_flag_given_is_never_replaced(tmp_path):
    root, _ = write_imagefolder(tmp_path, {"train": ["cats", "dogs"] * 6, "test": ["cats", "dogs"]})
    with pytest.raises(ValueError, match=r"^--label_column_name 'kind' is not a column of splits 'train', 'test' of"):
        load(root, label_column_name="kind", validation_split_size=4)


def test_every_missing_column_is_named_in_one_error(cifar100_dir):
    with pytest.raises(ValueError) as error:
        load(cifar100_dir, image_column_name="image", label_column_name="label")
    assert str(error.value) == (
        f"--image_column_name 'image' and --label_column_name 'label' are not columns of splits 'train', 'test' of "
        f"{cifar100_dir!r}; its columns are ['img', 'fine_label', 'coarse_label']. Pass the flags that name the "
        "columns to use."
    )


def test_defaults_that_cannot_be_resolved_are_named_in_one_error_with_why(tmp_path):
    """Two Image columns and two columns of strings: neither default can be guessed."""
    features = {"front": Image(), "back": Image(), "colour": Value("string"), "shape": Value("string")}
    images = list(class_images(np.arange(6) % 3))
    columns = {"front": images, "back": images, "colour": ["red", "blue"] * 3, "shape": ["round", "flat"] * 3}
    root = write_splits(tmp_path, {"train": columns, "test": columns}, features)
    with pytest.raises(ValueError) as error:
        load(root, validation_split_size=2)
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        "--image_column_name 'img' and --label_column_name 'fine_label' are not columns of splits 'train', 'test' of "
        f"{root!r}; its columns are ['front', 'back', 'colour', 'shape']; left at their defaults, --image_column_name "
        "would take its only Image column, but it has 2 ('front', 'back') and --label_column_name would take its "
        "only column of strings, but it has 2 ('colour', 'shape'). Pass the flags that name the columns to use."
    )


def test_imagefolder_metadata_string_labels_are_classes_numbered_alike_in_every_split(tmp_path, caplog):
    """`metadata.csv`'s `category` strings, found by default; "fish" is not in test, and still numbered 1 there."""
    train = ["cat", "fish", "dog", "dog", "cat", "fish"] * 3
    test = ["dog", "cat", "dog", "cat"]
    root = write_imagefolder_with_metadata(tmp_path, {"train": train, "test": test})
    assert load_dataset(root)["train"].features["category"] == Value("large_string")  # as `datasets` reads it
    with caplog.at_level(logging.INFO, logger="vtlm.training.data"):
        data = load(root, validation_split_size=3)
    assert (data.image_column, data.label_column) == ("image", "category")
    assert data.label_names == ["cat", "dog", "fish"]  # sorted, over all splits together
    assert labels_of(data, "test") == test
    assert np.asarray(data.datasets["test"][:]["labels"]).tolist() == [1, 0, 1, 0]
    held = labels_of(data, "train") + labels_of(data, "validation")
    assert sorted(held) == sorted(train)
    assert "its only column of strings 'category'" in caplog.text
    assert "column 'category' holds large_string values, not a ClassLabel: its 3 distinct values" in caplog.text


def test_parquet_string_labels_with_superclass_names(tmp_path):
    features = {"img": Image(), "category": Value("string"), "coarse_label": Value("string")}
    names = ["pear", "apple", "tulip", "rose"]
    kinds = {"pear": "fruit", "apple": "fruit", "tulip": "flower", "rose": "flower"}

    def columns(labels):
        images = list(class_images([names.index(label) for label in labels]))
        return {"img": images, "category": labels, "coarse_label": [kinds[label] for label in labels]}

    test = ["rose", "pear", "rose"]  # neither apple nor tulip
    root = write_splits(tmp_path, {"train": columns(names * 4), "test": columns(test)}, features)
    data = load(root, label_column_name="category", validation_split_size=4)
    assert data.label_names == ["apple", "pear", "rose", "tulip"]
    assert labels_of(data, "test") == test
    assert data.fine_to_coarse == [1, 1, 0, 0]  # superclass names numbered in sorted order: flower 0, fruit 1


def test_integer_labels_that_are_no_class_label_are_classes_named_by_value(tmp_path):
    features = {"img": Image(), "label": Value("int64")}
    labels = [20, 3, 100] * 3
    columns = {"img": list(class_images(np.arange(9) % 3)), "label": labels}
    root = write_splits(tmp_path, {"train": columns, "test": {"img": columns["img"][:2], "label": [100, 3]}}, features)
    data = load(root, label_column_name="label", validation_split_size=3)
    assert data.label_names == ["3", "20", "100"]  # in numeric order, not "100" < "20" < "3"
    assert labels_of(data, "test") == ["100", "3"]


@pytest.mark.parametrize(
    ("feature", "values", "kind"),
    [
        (Value("float32"), [0.0, 1.0, 2.0], "float32 values"),
        (List(Value("int64")), [[0], [1], [2]], r"List values \(List\(Value\('int64'\)\)\)"),
        ({"id": Value("int64")}, [{"id": 0}, {"id": 1}, {"id": 2}], "dicts"),
        (Value("null"), [None, None, None], "null values"),
    ],
    ids=["float", "list", "dict", "null"],
)
def test_a_label_column_that_cannot_hold_classes_is_refused_in_one_line(tmp_path, feature, values, kind):
    columns = {"img": list(class_images([0, 1, 2])), "score": values}
    root = write_splits(tmp_path, {"train": columns, "test": columns}, {"img": Image(), "score": feature})
    with pytest.raises(
        ValueError,
        match=rf"^--label_column_name 'score' is a column of {kind}, which cannot be class "
        "labels: pick a column of class names \\(strings\\) or integers, or a ClassLabel column$",
    ):
        load(root, label_column_name="score", validation_split_size=1)


def test_a_row_without_a_label_is_an_error(tmp_path):
    columns = {"img": list(class_images(np.arange(6) % 3)), "category": ["a", "b", "c", None, "a", "b"]}
    root = write_splits(tmp_path, {"train": columns, "test": columns}, {"img": Image(), "category": Value("string")})
    with pytest.raises(
        ValueError, match="split 'train' has 1 row.* without a label in column 'category', e.g. at index 3"
    ):
        load(root, label_column_name="category", validation_split_size=3)


@pytest.mark.parametrize("bad_label", [3, -1])
def test_labels_outside_the_classes_are_an_error(tmp_path, bad_label):
    columns = three_class_columns(9)
    columns["label"][5] = bad_label
    # Written under 4 classes (the writer checks the range), then declared with 3.
    root = write_splits(tmp_path, {"test": three_class_columns(3)}, THREE_CLASSES)
    Dataset.from_dict(columns, features=Features({"img": Image(), "label": ClassLabel(num_classes=4)})).cast(
        Features(THREE_CLASSES)
    ).to_parquet(os.path.join(root, "data", "train-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=rf"split 'train' has labels outside \[0, 3\).*{bad_label} at index 5"):
        load(root, label_column_name="label", validation_split_size=3)


def test_empty_split_is_an_error(tmp_path, monkeypatch):
    empty = {"img": [], "label": []}
    root = write_splits(tmp_path, {"train": three_class_columns(9), "test": empty}, THREE_CLASSES)
    with pytest.raises(ValueError, match=f"a split of dataset '{root}' has no rows"):
        load(root, label_column_name="label", validation_split_size=3)
    # A loader that returns the empty split instead of raising, as older `datasets` may.
    splits = {"train": three_class_columns(9), "test": empty}
    splits = DatasetDict(
        {split: Dataset.from_dict(rows, features=Features(THREE_CLASSES)) for split, rows in splits.items()}
    )
    monkeypatch.setattr(vtlm.training.data, "load_dataset", lambda *args, **kwargs: splits)
    with pytest.raises(ValueError, match=f"split 'test' of dataset '{root}' has no rows"):
        load(root, label_column_name="label", validation_split_size=3)


def test_missing_test_split_is_an_error(tmp_path):
    root = write_splits(tmp_path, {"train": three_class_columns(9)}, THREE_CLASSES)
    with pytest.raises(ValueError, match=r"has no 'test' split; its splits are \['train'\]"):
        load(root, label_column_name="label", validation_split_size=3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"corrupt_images": "ignore"}, "corrupt_images must be one of"),
        ({"validation_split_size": 0}, r"validation_split_size must be a fraction in \(0, 1\) or a positive integer"),
        ({"validation_split_size": 2.5}, r"validation_split_size must be a fraction in \(0, 1\) or a positive integer"),
        ({"max_train_samples": 0}, "max_train_samples must be a positive integer"),
        ({"max_eval_samples": -5}, "max_eval_samples must be a positive integer"),
        ({"image_column_name": ""}, "image_column_name must be a non-empty string"),
    ],
)
def test_data_arguments_are_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        DataArguments(**overrides)


def test_data_arguments_parse_as_run_image_classification_flags():
    parser = HfArgumentParser(DataArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--dataset_name", "/data/cifar10", "--label_column_name", "label", "--corrupt_images", "skip"]
        + ["--max_train_samples", "10", "--validation_split_size", "7"]
    )
    assert args == DataArguments(
        dataset_name="/data/cifar10",
        label_column_name="label",
        corrupt_images="skip",
        max_train_samples=10,
        validation_split_size=7,
    )
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--corrupt_images", "ignore"])


def test_offline_missing_hub_dataset_fails_fast_with_a_hint():
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"'someone/no-such-dataset'.*--dataset_name /path/to/copy"):
        load("someone/no-such-dataset")
    assert time.monotonic() - start < 5


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def online_without_proxy(monkeypatch):
    """Online mode as `datasets` sees it, with no proxy in the environment."""
    monkeypatch.setattr(vtlm.training.data.datasets.config, "HF_HUB_OFFLINE", False)
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def test_unreachable_hub_fails_fast_with_a_hint(online_without_proxy, monkeypatch):
    monkeypatch.setattr(vtlm.training.hub_access.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"'uoft-cs/cifar100'.*cannot be reached.*--dataset_name /path/to/copy"):
        load("uoft-cs/cifar100")
    assert time.monotonic() - start < 5


def test_hub_check_connects_to_the_proxy_when_one_is_set(online_without_proxy, monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as proxy:
        monkeypatch.setattr(vtlm.training.hub_access.constants, "ENDPOINT", f"https://127.0.0.1:{closed_port()}")
        with pytest.raises(ConnectionError):
            vtlm.training.data._check_hub_reachable("uoft-cs/cifar100")
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        vtlm.training.data._check_hub_reachable("uoft-cs/cifar100")  # the proxy answers: no error


@pytest.mark.parametrize("name", ["/no/such/folder/cifar100", "./no-such-folder"])
def test_missing_local_path_is_a_clear_error(name):
    with pytest.raises(FileNotFoundError, match=f"^{name} is neither a folder nor a Hub id"):
        load(name)


def test_local_folder_without_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"could not load dataset '{tmp_path}'.*--dataset_name"):
        load(str(tmp_path))


def test_tensors_hold_a_split_in_memory_row_for_row(cifar100_dir):
    data = load(cifar100_dir, validation_split_size=100)
    held = data.tensors("validation")
    assert len(held) == len(data.datasets["validation"]) == 100
    assert held.images.dtype == torch.uint8 and held.images.shape == (100, 3, 32, 32)
    for index in (0, 57, 99):
        row = data.datasets["validation"][index]
        torch.testing.assert_close(held[index]["images"], row["images"], atol=0, rtol=0)
        assert int(held[index]["labels"]) == int(row["labels"])


def test_data_loader_gathers_whole_batches_of_uint8_images_and_int64_labels(cifar100_dir):
    """`__getitems__` gathers a batch in one index op; it is exactly the rows the sampler asked for."""
    held = load(cifar100_dir, validation_split_size=100).tensors("validation")
    sampler = torch.utils.data.RandomSampler(held, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(held, batch_size=16, sampler=sampler, collate_fn=collate_batch)
    indices = list(torch.utils.data.BatchSampler(sampler, 16, drop_last=False))[0]
    sampler.generator.manual_seed(0)
    batch = next(iter(loader))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (16, 3, 32, 32)
    assert batch["labels"].dtype == torch.int64 and batch["labels"].shape == (16,)
    assert torch.equal(batch["images"], torch.stack([held[index]["images"] for index in indices]))
    assert batch["labels"].tolist() == [int(held[index]["labels"]) for index in indices]


def test_tensor_dataset_rejects_what_is_not_uint8_images():
    with pytest.raises(ValueError, match="expected uint8 images"):
        ImageTensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="and 3 labels"):
        ImageTensorDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


def test_a_name_that_is_neither_a_folder_nor_found_on_the_hub_says_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConnectionError, match="There is no folder .*my_images' either") as error:
        load("my_images")  # a mistyped local folder, taken for a Hub id (offline here)
    assert "hf download" not in str(error.value)  # not a `namespace/name` id: nothing to download
    with pytest.raises(ConnectionError, match="hf download someone/images --repo-type dataset"):
        load("someone/images")
