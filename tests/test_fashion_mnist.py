"""training/fashion_mnist.py: the IDX reader, the stratified sample, and the proxy dataset it writes."""

import gzip
import os

import numpy as np
import pytest
from datasets import ClassLabel, Features, Image, load_dataset

from vtlm.training import fashion_mnist
from vtlm.training.arguments import DataArguments
from vtlm.training.data import load_image_datasets

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
@pytest.mark.slow  # reads all of Fashion-MNIST
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
