"""Fashion-MNIST from Debian's package `dataset-fashion-mnist`, written as a local dataset in the Hub's CIFAR-10 schema:
the project's real-image proxy for comparisons (`scripts/compare.py`), since CIFAR-100 comes from the Hub.

The package (`apt-get install dataset-fashion-mnist`; Expat licence, Zalando SE) ships the real Fashion-MNIST: 70,000
28x28 greyscale photos of clothes in 10 classes, 6,000 train and 1,000 test images per class.
"""

import gzip
import json
import logging
import os
import subprocess

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image

logger = logging.getLogger(__name__)

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# The official file names: "t10k" is the test split.
FASHION_MNIST_FILES = {"train": "train", "test": "t10k"}
# In label order, from the table in the package's /usr/share/doc/dataset-fashion-mnist/README.md.gz.
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MANIFEST_FILE = "dataset_manifest.json"


def read_idx(path):
    """An IDX file of unsigned bytes (the format of MNIST and Fashion-MNIST), gzipped or not, as a uint8 array."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as file:
        data = file.read()
    # Two zero bytes, the type (0x08: unsigned byte), the number of dimensions, then each size as a big-endian int32.
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    num_dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * num_dims).reshape(shape)


def load_fashion_mnist(source_dir=FASHION_MNIST_DIR):
    """Fashion-MNIST's official splits: `{"train": (images (60000, 28, 28), labels), "test": (...)}`, uint8."""
    if not os.path.isdir(source_dir):
        raise FileNotFoundError(
            f"no Fashion-MNIST in {source_dir}: install it with `apt-get install {FASHION_MNIST_PACKAGE}`"
        )
    splits = {}
    for split, prefix in FASHION_MNIST_FILES.items():
        images = read_idx(os.path.join(source_dir, f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(source_dir, f"{prefix}-labels-idx1-ubyte.gz"))
        if len(images) != len(labels):
            raise ValueError(f"{source_dir}: {len(images)} {split} images but {len(labels)} labels")
        splits[split] = (images, labels)
    return splits


def stratified_samples(labels, per_class_counts, rng):
    """Disjoint stratified samples of the indices of `labels`: one sorted index array per count of images per class
    in `per_class_counts` (`None`: all the class's remaining images)."""
    samples = [[] for _ in per_class_counts]
    for label in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == label))
        wanted = sum(count for count in per_class_counts if count is not None)
        if wanted > len(indices):
            raise ValueError(f"class {label} has {len(indices)} images, fewer than the {wanted} asked for")
        start = 0
        for sample, count in zip(samples, per_class_counts, strict=True):
            end = len(indices) if count is None else start + count
            sample.append(indices[start:end])
            start = end
    return [np.sort(np.concatenate(sample)) for sample in samples]


def write_dataset(root, splits, label_names):
    """Write `{split: (images (N, H, W) uint8, labels (N,))}` as `root/data/{split}-00000-of-00001.parquet` in the Hub's
    CIFAR-10 schema: `img` (PNG) and `label` (ClassLabel of `label_names`), which `load_dataset(root)` reads."""
    features = Features({"img": Image(), "label": ClassLabel(names=list(label_names))})
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    for split, (images, labels) in splits.items():
        dataset = Dataset.from_dict({"img": list(images), "label": labels.tolist()}, features=features)
        dataset.to_parquet(os.path.join(root, "data", f"{split}-00000-of-00001.parquet"))


def package_version(package):
    """The installed version of a Debian package, or None where dpkg does not know it."""
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def prepare_dataset(dataset_dir, images_per_class, seed=0, source_dir=FASHION_MNIST_DIR):
    """Write the comparison's Fashion-MNIST sample into `dataset_dir`, unless it holds this very sample already, and
    return its manifest (what is in it, for the report).

    `images_per_class` maps "train", "validation" and "test" to a number of images per class; a test of `None` keeps
    the whole official test split. Train and validation are disjoint samples of the official train split.
    """
    sample = {
        "package_version": package_version(FASHION_MNIST_PACKAGE),
        "source_dir": os.path.abspath(source_dir),
        "seed": seed,
        "images_per_class": dict(images_per_class),
    }
    path = os.path.join(dataset_dir, MANIFEST_FILE)
    if os.path.exists(path):
        with open(path) as file:
            manifest = json.load(file)
        if manifest["sample"] != sample:
            raise ValueError(f"{dataset_dir} holds another sample ({path}); pass another --dataset_dir")
        logger.info(f"reusing the dataset in {dataset_dir}")
        return manifest

    official = load_fashion_mnist(source_dir)
    rng = np.random.default_rng(seed)
    train, validation = stratified_samples(
        official["train"][1], [images_per_class["train"], images_per_class["validation"]], rng
    )
    (test,) = stratified_samples(official["test"][1], [images_per_class["test"]], rng)
    chosen = {"train": ("train", train), "validation": ("train", validation), "test": ("test", test)}
    splits = {split: tuple(array[indices] for array in official[source]) for split, (source, indices) in chosen.items()}
    write_dataset(dataset_dir, splits, FASHION_MNIST_LABELS)
    manifest = {
        "name": "Fashion-MNIST",
        "package": FASHION_MNIST_PACKAGE,
        "licence": "Expat (MIT), Zalando SE 2017",
        "label_names": FASHION_MNIST_LABELS,
        "image_shape": list(official["train"][0].shape[1:]),
        "num_images": {split: len(labels) for split, (_, labels) in splits.items()},
        "sample": sample,
    }
    with open(path, "w") as file:  # last: a folder without it was not completely written, and is written again
        json.dump(manifest, file, indent=2)
    logger.info(f"wrote {manifest['num_images']} images of Fashion-MNIST to {dataset_dir}")
    return manifest
