"""Image classification data: load a dataset (the Hub's CIFAR schema, an `imagefolder`, parquet files), decode it once,
split it, and batch it.

Images are decoded once into uint8 arrays that `datasets` caches on disk, in a column called `images`. Normalisation
and augmentation happen later, on whole batches on the device; only then do they become the model's float
`pixel_values`.
"""

import inspect
import io
import logging
import os
from dataclasses import dataclass, fields

import datasets
import numpy as np
import torch
from datasets import Array3D, ClassLabel, DatasetDict, Features, Image, Value, load_dataset
from datasets.fingerprint import Hasher
from PIL import Image as PILImage
from torch.utils.data import default_convert

from vtlm.endpoint.handler import to_rgb

from .arguments import DataArguments
from .hub_access import hub_unreachable_reason
from .sources import check_source, is_hub_id, is_local

logger = logging.getLogger(__name__)

# The Hub's CIFAR-100 spells label 26 "cra"; checkpoints publish the real word.
LABEL_NAME_FIXES = {"cra": "crab"}


@dataclass
class ImageDatasets:
    """What `load_image_datasets` returns.

    Args:
        datasets (`DatasetDict`): "train", "validation" and "test", each row
            `{"images": uint8 tensor (3, image_size, image_size), "labels": int}`.
        label_names (`list[str]`): class names in label order, as they should be published.
        fine_to_coarse (`list[int]` or `None`): the superclass of each label, or `None` without a superclass column.
        validation_held_out (`bool`): whether "validation" was held out of train (by the seed), not the dataset's own.
        image_column (`str` or `None`), label_column (`str` or `None`): the dataset's columns the images and labels
            were read from: the flags', or those found when the flags were left at defaults the dataset lacks.
    """

    datasets: DatasetDict
    label_names: list[str]
    fine_to_coarse: list[int] | None
    validation_held_out: bool = True
    image_column: str | None = None
    label_column: str | None = None

    @property
    def id2label(self):
        return dict(enumerate(self.label_names))

    @property
    def label2id(self):
        return {name: index for index, name in enumerate(self.label_names)}

    def class_counts(self, split):
        """How many images of each label `split` holds, in label order."""
        labels = np.array([int(label) for label in self.datasets[split]["labels"][:]])
        return np.bincount(labels, minlength=len(self.label_names)).tolist()

    def examples(self, split="test", count=4):
        """The first image of each of the first `count` classes of `split`, as (H, W, 3) uint8 arrays, and the
        classes' names: the model card's widget examples."""
        first = {}
        for index, label in enumerate(int(label) for label in self.datasets[split]["labels"][:]):
            if len(first) == count:
                break
            first.setdefault(label, index)
        images = [self.datasets[split][index]["images"].permute(1, 2, 0).numpy() for index in first.values()]
        return images, [self.label_names[label] for label in first]

    def tensors(self, split):
        """`split` read once into memory as an `ImageTensorDataset`: what the Trainer trains and evaluates on."""
        columns = self.datasets[split][:]
        return ImageTensorDataset(columns["images"], torch.as_tensor(columns["labels"], dtype=torch.int64))


class ImageTensorDataset(torch.utils.data.Dataset):
    """A split held as one uint8 tensor (N, 3, H, W) and its labels (N,).

    The DataLoader gathers a whole batch with one index op (`__getitems__`), about a millisecond for 512 images in
    the main process, where `datasets`' per-row formatting takes tens of milliseconds a batch (enough to starve a
    GPU, or to need worker processes). CIFAR-100's train split is 138 MB this way.
    """

    def __init__(self, images, labels):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(
                f"expected uint8 images (N, C, H, W) and N labels, got {images.dtype} "
                f"{tuple(images.shape)} and {len(labels)} labels"
            )
        self.images = images
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"images": self.images[index], "labels": self.labels[index]}

    def __getitems__(self, indices):
        """A batch, `{"images": uint8 (B, 3, H, W), "labels": int64 (B,)}`: what torch's DataLoader asks for when it
        batches, in place of one `__getitem__` per row."""
        indices = torch.as_tensor(indices)
        return {"images": self.images[indices], "labels": self.labels[indices]}


def load_image_datasets(data_args, image_size=32, seed=42):
    """Load `data_args.dataset_name`, decode every image once to uint8 RGB, and return train, validation and test.

    The columns are the flags' (`_resolve_columns`); labels are a ClassLabel's classes, or a column's strings or
    integers encoded as classes (`_label_classes`). Without a "validation" split in the dataset,
    `validation_split_size` images are held out of train, stratified by label; the hold-out depends only on `seed`.
    `max_train_samples` and `max_eval_samples` cut after that.
    """
    raw = _check_splits(_load_raw_splits(data_args), data_args)
    image_column, label_column = _resolve_columns(raw, data_args)
    label_names, label_ids = _label_classes(raw, label_column)
    fine_to_coarse = _fine_to_coarse(raw, label_column, label_ids, len(label_names), data_args.coarse_label_column_name)
    columns = {"image_column": image_column, "label_column": label_column, "label_ids": label_ids}

    splits = DatasetDict(
        {
            split: _decode_split(dataset, split, data_args, label_names, image_size, **columns)
            for split, dataset in raw.items()
        }
    )
    validation_held_out = "validation" not in splits
    if validation_held_out:
        splits["train"], splits["validation"] = _hold_out(splits["train"], data_args.validation_split_size, seed)
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_eval_samples,
    }
    for split, limit in limits.items():
        if limit is not None and limit < len(splits[split]):
            splits[split] = splits[split].select(range(limit))
    splits = DatasetDict({split: splits[split] for split in limits})
    # The torch formatter would widen uint8 pixels to int64 (8x the memory): pin the images' dtype, labels stay ints.
    splits.set_format("torch", columns=["images"], dtype=torch.uint8, output_all_columns=True)
    return ImageDatasets(splits, label_names, fine_to_coarse, validation_held_out, image_column, label_column)


# The Trainer's `data_collator`: `ImageTensorDataset.__getitems__` already returns the batch, which passes through.
collate_batch = default_convert


def _load_raw_splits(data_args):
    """`load_dataset` for a Hub id and a local folder alike, failing within seconds when neither can be read."""
    name = data_args.dataset_name
    check_source(name)
    if not is_local(name) and not datasets.config.HF_HUB_OFFLINE:
        _check_hub_reachable(name)
    try:
        return load_dataset(name, name=data_args.dataset_config_name, cache_dir=data_args.cache_dir)
    except ConnectionError as error:
        raise ConnectionError(_unavailable_message(name, error)) from error
    except FileNotFoundError as error:
        raise FileNotFoundError(_unavailable_message(name, error)) from error
    except ValueError as error:
        if "corresponds to no data" in str(error):  # how `datasets` words an empty split
            raise ValueError(f"a split of dataset {name!r} has no rows ({error})") from error
        raise


def _check_hub_reachable(name):
    """Fail within seconds when the Hub cannot be reached, rather than wait out `load_dataset`'s retries (~25 s)."""
    if reason := hub_unreachable_reason():
        raise ConnectionError(_unavailable_message(name, reason))


def _unavailable_message(name, reason):
    message = f"could not load dataset {name!r}: {reason}."
    if not is_local(name):  # it was taken for a Hub id: say so, for a mistyped local folder
        message += f" There is no folder {os.path.abspath(name)!r} either."
    message += " To train on a local copy in the same schema, pass `--dataset_name /path/to/copy`, a folder that "
    if is_hub_id(name) and "/" in name:  # `namespace/name`: it can be downloaded where the Hub is reachable
        return message + (
            "`load_dataset` reads; make one where the Hub is reachable with "
            f"`hf download {name} --repo-type dataset --local-dir /path/to/copy`."
        )
    return message + "`load_dataset` reads."


def _check_splits(raw, data_args):
    """Keep train, validation (if any) and test; check that each has rows."""
    for split in ("train", "test"):
        if split not in raw:
            raise ValueError(f"dataset {data_args.dataset_name!r} has no {split!r} split; its splits are {list(raw)}")
    raw = DatasetDict({split: raw[split] for split in ("train", "validation", "test") if split in raw})
    for split, dataset in raw.items():
        if len(dataset) == 0:
            raise ValueError(f"split {split!r} of dataset {data_args.dataset_name!r} has no rows")
    return raw


# `Value` dtypes whose distinct values can be classes: a label column of these is encoded (`_label_classes`).
TEXT_DTYPES = ("string", "large_string")
INTEGER_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _resolve_columns(raw, data_args):
    """The image and label columns to read: `--image_column_name` and `--label_column_name`, or, for a flag left at
    its default that is a column of no split (CIFAR-100's `img` and `fine_label`, on an `imagefolder` whose
    columns are `image` and `label`), the dataset's only Image column or its only label column (`_label_candidates`),
    said in one info line. Otherwise raises once, naming every missing column and the dataset's columns.

    The run's record keeps the flags as given: the same flags find the same columns in the same dataset, so a rerun
    or an evaluation that repeats them reads the same data, and `training.rerun`'s hold-out check stays sound."""
    defaults = {field.name: field.default for field in fields(DataArguments)}
    features = raw["train"].features
    common = [name for name in features if all(name in dataset.column_names for dataset in raw.values())]
    candidates = {
        "image_column_name": [name for name in common if isinstance(features[name], Image)],
        "label_column_name": _label_candidates(features, common),
    }
    columns, found, unresolved = {}, [], []
    for flag in ("image_column_name", "label_column_name"):
        columns[flag] = asked = getattr(data_args, flag)
        if asked != defaults[flag] or any(asked in dataset.column_names for dataset in raw.values()):
            continue
        kind = "Image column" if flag == "image_column_name" else _label_kind(features, candidates[flag])
        if len(candidates[flag]) == 1:
            columns[flag] = candidates[flag][0]
            found.append((f"--{flag} {asked!r}", f"its only {kind} {columns[flag]!r}"))
        else:
            has = ", ".join(repr(name) for name in candidates[flag]) if candidates[flag] else "none"
            unresolved.append(f"--{flag} would take its only {kind}, but it has {len(candidates[flag])} ({has})")

    by_columns = {}  # the splits that lack the same flags' columns, with the same columns of their own
    for split, dataset in raw.items():
        missing = tuple(f"--{flag} {name!r}" for flag, name in columns.items() if name not in dataset.column_names)
        if missing:
            by_columns.setdefault((missing, tuple(dataset.column_names)), []).append(split)
    if by_columns:
        problems = [
            f"{' and '.join(missing)} {'is not a column' if len(missing) == 1 else 'are not columns'} of split"
            f"{'s' if len(splits) > 1 else ''} {', '.join(map(repr, splits))} of {data_args.dataset_name!r}; its "
            f"columns are {list(dataset_columns)}"
            for (missing, dataset_columns), splits in by_columns.items()
        ]
        if unresolved:
            problems.append(
                f"left at {'its default' if len(unresolved) == 1 else 'their defaults'}, {' and '.join(unresolved)}"
            )
        raise ValueError("; ".join(problems) + ". Pass the flags that name the columns to use.")
    if found:
        absent = (
            "(left at its default) is not a column" if len(found) == 1 else "(left at their defaults) are not columns"
        )
        logger.info(
            f"{' and '.join(asked for asked, _ in found)} {absent} of {data_args.dataset_name!r}: using "
            f"{' and '.join(used for _, used in found)}"
        )
    return columns["image_column_name"], columns["label_column_name"]


def _label_candidates(features, columns):
    """The columns of `columns` that could hold the labels: the ClassLabel columns, or, without any, the columns of
    strings (an `imagefolder`'s `metadata.csv`, say). Integer columns are not guessed: they are often ids."""
    class_labels = [name for name in columns if isinstance(features[name], ClassLabel)]
    if class_labels:
        return class_labels
    return [name for name in columns if isinstance(features[name], Value) and features[name].dtype in TEXT_DTYPES]


def _label_kind(features, candidates):
    if any(isinstance(features[name], ClassLabel) for name in candidates):
        return "ClassLabel column"
    return "ClassLabel column, or else column of strings" if not candidates else "column of strings"


def _label_classes(raw, label_column):
    """The class names in label order, as they should be published, and how the column's values become label ids:
    `None` for a ClassLabel, whose values are the ids (each is checked to be one of its classes); otherwise
    `{value: id}` over the sorted distinct values of all splits together (strings, or integers in numeric order, named
    as written), so every split numbers the classes alike, a class missing from one of them included, and so does a
    later evaluation of the same data. (`datasets`' `class_encode_column` numbers each split on its own.)

    Refuses in one line a column whose values cannot be classes (floats, lists, dicts, nulls), and a row without a
    label."""
    feature = raw["train"].features[label_column]
    encoded = isinstance(feature, Value) and feature.dtype in TEXT_DTYPES + INTEGER_DTYPES
    if not (isinstance(feature, ClassLabel) or encoded):
        raise ValueError(
            f"--label_column_name {label_column!r} is a column of {_kind_of_values(feature)}, which cannot be class "
            "labels: pick a column of class names (strings) or integers, or a ClassLabel column"
        )
    for split, dataset in raw.items():
        labels = dataset.select_columns([label_column]).with_format("arrow")[:][label_column]
        if labels.null_count:
            raise ValueError(
                f"split {split!r} has {labels.null_count} row(s) without a label in column {label_column!r}, e.g. at "
                f"index {np.flatnonzero(labels.is_null().to_numpy())[0]}: every image needs a class"
            )
    if encoded:
        classes = np.unique(np.concatenate([_column(dataset, label_column) for dataset in raw.values()])).tolist()
        names = [str(value) for value in classes]
        logger.info(
            f"column {label_column!r} holds {feature.dtype} values, not a ClassLabel: its {len(names)} distinct values "
            f"over all splits, sorted, are the classes ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
        )
        return names, {value: index for index, value in enumerate(classes)}
    for split, dataset in raw.items():
        labels = _column(dataset, label_column)
        outside = (labels < 0) | (labels >= feature.num_classes)
        if outside.any():
            raise ValueError(
                f"split {split!r} has labels outside [0, {feature.num_classes}) in column {label_column!r}, "
                f"e.g. {labels[outside][0]} at index {np.flatnonzero(outside)[0]}: every image needs one of the "
                "ClassLabel's classes"
            )
    return [LABEL_NAME_FIXES.get(name, name) for name in feature.names], None


def _kind_of_values(feature):
    if isinstance(feature, Value):
        return f"{feature.dtype} values"
    if isinstance(feature, dict):
        return "dicts"
    return f"{type(feature).__name__} values ({feature})"


def _column(dataset, name):
    """One column as a numpy array, read in one go (iterating `dataset[name]` would format row by row)."""
    return dataset.select_columns([name]).with_format("numpy")[:][name]


def _label_ids(dataset, label_column, label_ids):
    """The label id of each row, as `_label_classes` numbers the classes."""
    labels = _column(dataset, label_column)
    return labels if label_ids is None else np.array([label_ids[label] for label in labels.tolist()], dtype=np.int64)


def _fine_to_coarse(raw, label_column, label_ids, num_labels, coarse_column):
    """The superclass of every label, read off the rows (superclass ids, or names); `None` without a usable superclass
    column, or with one that groups nothing (the label column itself, or one superclass per label: superclass
    accuracy would be top-1)."""
    if coarse_column in (None, label_column) or any(coarse_column not in ds.column_names for ds in raw.values()):
        return None
    fine = np.concatenate([_label_ids(dataset, label_column, label_ids) for dataset in raw.values()])
    coarse = np.concatenate([_column(dataset, coarse_column) for dataset in raw.values()])
    if coarse.dtype.kind in "OUS" and not any(value is None for value in coarse.tolist()):
        coarse = np.unique(coarse.astype(str), return_inverse=True)[1]  # superclass names, numbered in sorted order
    if coarse.dtype.kind not in "iu":
        logger.warning(f"column {coarse_column!r} holds no superclass ids or names: no superclass accuracy")
        return None
    pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)  # (distinct (fine, coarse) pairs, 2)
    if (coarse < 0).any() or len(pairs) != num_labels or len(np.unique(pairs[:, 0])) != num_labels:
        logger.warning(
            f"column {coarse_column!r} does not give every label exactly one superclass: no superclass accuracy"
        )
        return None
    if len(np.unique(pairs[:, 1])) == num_labels:
        return None
    return pairs[:, 1].tolist()  # `pairs` is sorted by fine label, one row per label


def _decode_split(dataset, split, data_args, label_names, image_size, image_column, label_column, label_ids):
    """Decode a split's images to uint8 (3, image_size, image_size) arrays, once: `datasets` caches the result."""
    if not isinstance(dataset.features[image_column], Image):
        raise ValueError(
            f"--image_column_name {image_column!r} must be an Image column, but it is {dataset.features[image_column]}"
        )
    features = Features(
        {
            "images": Array3D(shape=(3, image_size, image_size), dtype="uint8"),
            "labels": ClassLabel(names=label_names),
            "source_index": Value("int64"),  # the row's index in the split as loaded, to name skipped images
        }
    )
    encoded = dataset.cast_column(image_column, Image(decode=False))
    input_columns = [image_column, label_column]
    fn_kwargs = {
        "split": split,
        "image_size": image_size,
        "skip_corrupt": data_args.corrupt_images == "skip",
        "label_ids": label_ids,
    }
    root = os.path.abspath(data_args.dataset_name) if is_local(data_args.dataset_name) else None
    # `datasets` fingerprints a module-level function by its name, not its code: hash the decoder's source as well,
    # so that editing it decodes again instead of reusing stale cached arrays. `root` only names files in errors.
    decoder_source = "".join(inspect.getsource(function) for function in (_decode_batch, _decode_image, to_rgb))
    decoded = encoded.map(
        _decode_batch,
        batched=True,
        with_indices=True,
        input_columns=input_columns,
        remove_columns=dataset.column_names,
        features=features,
        fn_kwargs={**fn_kwargs, "root": root},
        num_proc=data_args.preprocessing_num_workers,
        desc=f"Decoding {split} images",
        new_fingerprint=Hasher.hash([encoded._fingerprint, decoder_source, input_columns, fn_kwargs, features]),
    )
    if len(decoded) < len(dataset):
        skipped = np.setdiff1d(np.arange(len(dataset)), _column(decoded, "source_index"))
        shown = skipped[:20].tolist()
        rows = [
            f"{name} (index {index})" if (name := _file_name(image, root)) else f"index {index}"
            for image, index in zip(encoded.select(shown)[image_column], shown, strict=True)
        ]
        logger.warning(
            f"skipped {len(skipped)} image{'s' if len(skipped) > 1 else ''} of split {split!r} that cannot be "
            f"decoded: {', '.join(rows)}{' and more' if len(skipped) > len(shown) else ''}"
        )
    if len(decoded) == 0:
        raise ValueError(f"split {split!r} of dataset {data_args.dataset_name!r} has no image that can be decoded")
    return decoded.remove_columns("source_index")


def _file_name(image, root):
    """The file an encoded image (`{"bytes", "path"}`) came from, relative to the dataset's folder `root` when it lies
    there (`cats/broken.jpg` of an `imagefolder`); `None` where the dataset does not know it."""
    path = (image or {}).get("path")
    if path and root and os.path.isabs(path):
        relative = os.path.relpath(path, root)
        if not relative.startswith(os.pardir):
            return relative
    return path or None


def _hold_out(train, validation_split_size, seed):
    """Split `validation_split_size` images (or that fraction of them) off `train`, stratified by label:
    (train, validation), disjoint."""
    if validation_split_size < 1:
        validation_split_size = round(validation_split_size * len(train))
    validation_split_size = int(validation_split_size)
    if validation_split_size >= len(train):
        raise ValueError(
            f"--validation_split_size ({validation_split_size}) must be smaller than the train split "
            f"({len(train)} images): pass a smaller one"
        )
    try:
        parts = train.train_test_split(test_size=validation_split_size, stratify_by_column="labels", seed=seed)
    except ValueError as error:  # e.g. fewer held-out images than classes
        raise ValueError(
            f"cannot hold out {validation_split_size} of {len(train)} train images stratified by label: {error}"
        ) from error
    return parts["train"], parts["test"]


def _decode_batch(images, labels, indices, split, image_size, skip_corrupt, label_ids, root):
    batch = {"images": [], "labels": [], "source_index": []}
    for image, label, index in zip(images, labels, indices, strict=True):
        try:
            pixels = _decode_image(image, image_size)
        except Exception as error:  # PIL raises many types on bad bytes; all mean "cannot be decoded"
            if skip_corrupt:
                continue
            name = _file_name(image, root)
            raise ValueError(
                f"image {index} of split {split!r}{f' ({name})' if name else ''} cannot be decoded "
                f"({type(error).__name__}: {error}). Pass `--corrupt_images skip` to drop such images."
            ) from error
        batch["images"].append(pixels)
        batch["labels"].append(label if label_ids is None else label_ids[label])
        batch["source_index"].append(index)
    return batch


def _decode_image(image, image_size):
    """Encoded image (`{"bytes", "path"}`) -> uint8 RGB array (3, image_size, image_size)."""
    if image is None or (image["bytes"] is None and image["path"] is None):
        raise ValueError("the row has no image")
    with PILImage.open(io.BytesIO(image["bytes"]) if image["bytes"] is not None else image["path"]) as opened:
        opened.load()
        # Converted as the endpoint converts, and resized bilinearly as the published ViTImageProcessor resizes.
        picture = to_rgb(opened)
        if picture.size != (image_size, image_size):
            picture = picture.resize((image_size, image_size), PILImage.Resampling.BILINEAR)
        return np.asarray(picture).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
