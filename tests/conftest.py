"""Shared test set-up: offline Hub, a private HF cache, a tiny config, and datasets written in the Hub's schema."""

import os
import subprocess
import sys
import tempfile

# Before transformers or datasets are imported: no network, and a private cache for remote code and datasets.
_HF_HOME = tempfile.mkdtemp(prefix="vtlm-test-hf-home-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_MODULES_CACHE"] = os.path.join(_HF_HOME, "modules")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import ClassLabel, Dataset, Features, Image  # noqa: E402

from modeling import CIFAR100_LABELS, VTLMConfig, VTLMForImageClassification, build_image_processor  # noqa: E402

# The Hub's spelling of CIFAR-100's names, typo included, and its 20 superclasses.
HUB_FINE_LABELS = [("cra" if label == "crab" else label) for label in CIFAR100_LABELS]
HUB_COARSE_LABELS = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
]  # fmt: skip
TINY_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}


def class_images(labels, image_size=32, seed=0):
    """Learnable RGB images: each class has its own colour and stripe frequency, plus noise. (N, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    palette = np.random.default_rng(1234).uniform(40, 215, size=(labels.max() + 1, 3))
    rows = np.arange(image_size)[None, :, None]
    stripes = 30 * np.sin(rows * (1 + labels[:, None, None] % 7) * np.pi / image_size)  # (N, H, 1)
    images = palette[labels][:, None, None, :] + stripes[..., None] + rng.normal(0, 12, (len(labels), image_size, 1, 3))
    images = np.broadcast_to(images, (len(labels), image_size, image_size, 3))
    return np.clip(images, 0, 255).astype(np.uint8)


def write_hub_dataset(root, splits, label_names=HUB_FINE_LABELS, label_column="fine_label", coarse=True, seed=0):
    """Write `{split: num_rows}` as `root/data/{split}-00000-of-00001.parquet` in the Hub's CIFAR schema.

    The default is `uoft-cs/cifar100`'s schema (`img`, `fine_label`, `coarse_label`); `label_column="label"` with
    `coarse=False` gives `uoft-cs/cifar10`'s. Labels cycle through the classes, so every split has all of them.
    """
    features = {"img": Image(), label_column: ClassLabel(names=list(label_names))}
    if coarse:
        features["coarse_label"] = ClassLabel(names=HUB_COARSE_LABELS)
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    for index, (split, num_rows) in enumerate(splits.items()):
        labels = np.arange(num_rows) % len(label_names)
        columns = {"img": list(class_images(labels, seed=seed + index)), label_column: labels.tolist()}
        if coarse:
            columns["coarse_label"] = (labels * len(HUB_COARSE_LABELS) // len(label_names)).tolist()
        dataset = Dataset.from_dict(columns, features=Features(features))
        dataset.to_parquet(os.path.join(root, "data", f"{split}-00000-of-00001.parquet"))
    return str(root)


# Prepended to scripts that must run as a user without this repository: with the package installed (editable, as in
# CI), `import modeling` would otherwise succeed, and transformers could use our classes instead of the shipped files.
_BLOCK_MODELING = "import sys\nsys.modules['modeling'] = sys.modules['training'] = None  # not importable\n"


def run_without_modeling(script, *args, cwd, python_path=None):
    """Run Python `script` in a fresh interpreter, in `cwd`, where `modeling` and `training` cannot be imported.

    `python_path` goes in front of the installed packages (to run under another transformers, say).
    """
    path = os.path.join(cwd, "user_script.py")
    with open(path, "w") as file:
        file.write(_BLOCK_MODELING + script)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if python_path:
        env["PYTHONPATH"] = str(python_path)
    return subprocess.run(
        [sys.executable, path, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def save_tiny_model(folder, seed=0):
    """Save a tiny classifier with its image processor, as training leaves a run folder; return it in eval mode."""
    torch.manual_seed(seed)
    model = VTLMForImageClassification(VTLMConfig(**TINY_CONFIG)).eval()
    model.save_pretrained(folder)
    build_image_processor().save_pretrained(folder)
    return model


@pytest.fixture
def tiny_config():
    return VTLMConfig(**TINY_CONFIG)


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory):
    """A small dataset in `uoft-cs/cifar100`'s exact schema: 400 train and 200 test images."""
    return write_hub_dataset(tmp_path_factory.mktemp("cifar100"), {"train": 400, "test": 200})
