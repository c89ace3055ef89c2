"""`run_info.json`: what defines a run (its arguments, config, code and hardware), written beside its results."""

import json
import os
import platform
import re
import subprocess
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from PIL import Image
from torch.utils import collect_env

from modeling import CIFAR100_LABELS

from .arguments import PretrainingArguments

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES_DIR = "examples"  # the widget's example images, in the run folder


def git_commit():
    """The commit of this checkout, with '-dirty' when tracked files have uncommitted changes (untracked files, such
    as run outputs, do not count: setuptools-scm's rule); None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def machine_info(device):
    """The machine a measurement ran on, from `torch.utils.collect_env` (what PyTorch's bug reports use), plus what
    bounds a CPU run: the CPUs this process may use, torch's threads, and the load when it was asked."""
    env = collect_env.get_env_info()
    cpu_model = re.search(r"Model name:\s*(.+)", env.cpu_info or "")
    cpu_model = cpu_model.group(1).strip() if cpu_model else platform.processor()
    return {
        "device_type": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model,
        "cpu_model": cpu_model,
        "cpus_available": len(os.sched_getaffinity(0)),
        "torch_num_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],  # other jobs on the machine slow every measurement alike
        "os": env.os,
        "python": env.python_version.split()[0],
        "torch": env.torch_version,
        "cuda": torch.version.cuda,  # the CUDA this torch was built for: None on a CPU-only build (not the host's nvcc)
        "transformers": transformers.__version__,
    }


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


CIFAR100_HUB_ID = "uoft-cs/cifar100"
ARGUMENTS_FILE = "run_arguments.json"  # the arguments exactly as given; never published
RUN_INFO_FILE = "run_info.json"  # what the card and every report render; published with the model


def is_all_of_cifar100(data):
    """Whether the splits are all of CIFAR-100: its 100 fine labels, 50,000 train + validation and 10,000 test."""
    sizes = {split: len(dataset) for split, dataset in data.datasets.items()}
    return (
        data.label_names == list(CIFAR100_LABELS)
        and sizes["train"] + sizes["validation"] == 50_000
        and sizes["test"] == 10_000
    )


def smoke_run_reasons(data_args, training_args):
    """Why the run is cut short (a step limit, fewer images than the dataset has, or less than one epoch), as the
    flags that cut it; [] for a real run on its dataset, whatever the dataset."""
    reasons = []
    if training_args.max_steps > 0:
        reasons.append(f"`--max_steps {training_args.max_steps}`")
    for name in ("max_train_samples", "max_eval_samples"):
        if getattr(data_args, name) is not None:
            reasons.append(f"`--{name} {getattr(data_args, name)}`")
    if training_args.max_steps <= 0 and training_args.num_train_epochs < 1:
        reasons.append(f"`--num_train_epochs {training_args.num_train_epochs:g}` (less than one epoch)")
    return reasons


def dataset_display_name(data_args):
    """What the run's dataset is called in anything published: `--dataset_display_name`, else the Hub id, else the
    local folder's name (never its path on this machine)."""
    if data_args.dataset_display_name:
        return data_args.dataset_display_name
    return dataset_source_name(data_args)


def dataset_source_name(data_args):
    """Where the data came from, publishable: the Hub id, or a local folder's own name."""
    if os.path.exists(data_args.dataset_name):
        return os.path.basename(os.path.normpath(data_args.dataset_name))
    return data_args.dataset_name


def describe_dataset(data_args, data):
    """The dataset as the card shows it: its name (`--dataset_display_name`, which names and never makes a dataset
    CIFAR-100), where it came from, its Hub id (CIFAR-100's for a complete local copy of it, None for other local
    folders), the columns its images and labels were read from (the flags', or those found in their place:
    `training.data`), classes, whether superclass accuracy means anything, sizes, and the training images per class
    after the validation hold-out."""
    is_cifar100 = is_all_of_cifar100(data)
    local = os.path.exists(data_args.dataset_name)
    train_per_class = data.class_counts("train")
    return {
        "name": "CIFAR-100" if is_cifar100 and not data_args.dataset_display_name else dataset_display_name(data_args),
        "source": dataset_source_name(data_args),  # a Hub id, or a local folder's own name
        "hub_id": CIFAR100_HUB_ID if is_cifar100 else None if local else data_args.dataset_name,
        "is_cifar100": is_cifar100,
        "columns": {"image": data.image_column, "label": data.label_column},
        "num_classes": len(data.label_names),
        "label_names": data.label_names,
        "has_superclasses": data.fine_to_coarse is not None,
        "images": {split: len(dataset) for split, dataset in data.datasets.items()},
        "validation_held_out": data.validation_held_out,  # False: the dataset's own validation split, none held out
        "train_images_per_class": {"min": min(train_per_class), "max": max(train_per_class)},
    }


def publishable_run_info(run_info, data_args):
    """`run_info` without paths of this machine: a local dataset by its folder's name, folders by their own names."""
    run_info = json.loads(json.dumps(run_info))
    data_arguments = run_info["data_arguments"]
    data_arguments["dataset_name"] = dataset_source_name(data_args)
    data_arguments["cache_dir"] = None
    training_arguments = run_info["training_arguments"]
    for name in ("output_dir", "logging_dir", "resume_from_checkpoint"):
        if isinstance(training_arguments.get(name), str) and training_arguments[name] != "None":
            training_arguments[name] = os.path.basename(os.path.normpath(training_arguments[name]))
    for group, name in (
        ("model_arguments", "model_name_or_path"),
        ("distillation_arguments", "teacher_model_name_or_path"),
    ):
        path = (run_info.get(group) or {}).get(name)
        if path and os.path.exists(path):
            run_info[group][name] = os.path.basename(os.path.normpath(path))
    return run_info


def write_run_info(output_dir, arguments, config, data, compute, examples=(), resumed_from=None):
    """Write the run's record into `output_dir`, once, at the end of the run: `run_info.json`, published with the
    model (the arguments without local paths, the dataset, config, code, hardware, whether and why it is a smoke run,
    whether it resumed, its teacher (`describe_teacher`, and whether it held out this run's
    validation split: `training.rerun.source_validation_split`), the model it started from
    (`describe_initialization`), and the true labels of its `examples`, from `save_example_images`),
    and `run_arguments.json`, the arguments exactly as given (it stays on this machine: reruns and
    `scripts/evaluate_model.py` read it). `compute` is what the run cost (`training.flops.describe_compute`)."""
    from .rerun import source_validation_split  # here: rerun reads the records this module writes

    model_args, data_args, augmentation_args, training_args, last_args = arguments
    recorded = run_arguments(arguments)
    reasons = smoke_run_reasons(data_args, training_args)
    dataset = describe_dataset(data_args, data)
    pretraining = isinstance(last_args, PretrainingArguments)
    teacher = None if pretraining else describe_teacher(last_args, dataset, config)
    if teacher:  # whether it trained on the validation images
        source = last_args.teacher_model_name_or_path
        teacher["validation_split"] = source_validation_split(
            source, data_args, training_args.seed, data.validation_held_out
        )[0]
    run_info = {
        "git_commit": git_commit(),
        **recorded,
        "dataset": dataset,
        "teacher": teacher,
        "initialized_from": describe_initialization(model_args),
        "config": config.to_dict(),
        "hardware": {
            "device": device_name(training_args.device),
            "num_processes": training_args.world_size,
            "precision": training_args.precision,  # what this host ran: fp16 runs on CUDA only
            "precision_asked": training_args.precision_asked,
        },
        "smoke_run": bool(reasons),
        "smoke_run_reasons": reasons,
        "resumed_from_checkpoint": os.path.basename(os.path.normpath(resumed_from)) if resumed_from else None,
        "examples": list(examples),
        "compute": compute,
    }
    with open(os.path.join(output_dir, RUN_INFO_FILE), "w") as file:
        json.dump(publishable_run_info(run_info, data_args), file, indent=2, default=str)
    with open(os.path.join(output_dir, ARGUMENTS_FILE), "w") as file:  # last: it marks the run as finished
        json.dump(recorded, file, indent=2)


def describe_teacher(distillation_args, dataset, config):
    """The run's record of its teacher, for `run_info.json` and the card (None without one): its name (a Hub id, or
    a folder's own name, never its path), the method and weights, and, from its run folder where it has one, its
    test top-1, what it was trained on, and whether it saw only this run's dataset (`dataset`, as
    `describe_dataset` records it): trained on it from scratch, by no teacher that saw more."""
    source = distillation_args.teacher_model_name_or_path
    if not source:
        return None
    local = os.path.isdir(source)
    teacher_run, results = (read_saved_record(source, name) for name in ("run_info.json", "all_results.json"))
    teacher_dataset = teacher_run.get("dataset") or {}
    started_from = (teacher_run.get("model_arguments") or {}).get("model_name_or_path")
    own_teacher = teacher_run.get("teacher")
    saw_only_this_dataset = bool(
        teacher_dataset
        and teacher_dataset.get("source") == dataset.get("source")
        and teacher_dataset.get("label_names") == dataset.get("label_names")
        and started_from in (None, "None")
        and (own_teacher is None or own_teacher.get("saw_only_this_dataset"))
    )
    guided = distillation_args.feature_guidance_weight > 0
    return {
        "name": os.path.basename(os.path.normpath(source)) if local else source,
        "hub_id": None if local else source,
        "test_accuracy": results.get("test_accuracy"),
        "smoke_run": teacher_run.get("smoke_run"),
        "trained_on": teacher_dataset.get("name"),
        "started_from": None if started_from in (None, "None") else started_from,
        "saw_only_this_dataset": saw_only_this_dataset,
        "method": {
            "feature_guidance_weight": distillation_args.feature_guidance_weight,
            "feature_guidance_layers": (distillation_args.feature_guidance_layers or "all") if guided else None,
            "distillation_type": distillation_args.distillation_type,
            "distillation_alpha": (
                distillation_args.distillation_alpha if distillation_args.distillation_type != "none" else None
            ),
            "distillation_temperature": (
                distillation_args.distillation_temperature if distillation_args.distillation_type == "soft" else None
            ),
            "attention_initializer": getattr(config, "attention_initializer", None),
        },
    }


def save_example_images(output_dir, images, labels) -> list[dict]:
    """Save images (PIL images or HxWx3 uint8 arrays) as the run's widget examples, replacing any earlier ones, and
    return their records for `run_info.json`: `{"file": "examples/00.png", "label": true class name}`."""
    if len(labels) != len(images):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    examples_dir = Path(output_dir) / EXAMPLES_DIR
    examples_dir.mkdir(parents=True, exist_ok=True)
    for old in examples_dir.glob("*.png"):
        old.unlink()
    records = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        name = f"{EXAMPLES_DIR}/{index:02d}.png"
        image.convert("RGB").save(Path(output_dir) / name)
        records.append({"file": name, "label": str(label)})
    return records


def describe_initialization(model_args):
    """The saved model a run started from (`--model_name_or_path`, by its folder's name or Hub id) and, where that
    folder's own `run_info.json` records one, the masked image modelling that pre-trained it (`scripts/pretrain.py`):
    its dataset, epochs and arguments. None for a run from scratch."""
    source = model_args.model_name_or_path
    if not source:
        return None
    recorded = {}
    if os.path.isfile(path := os.path.join(source, RUN_INFO_FILE)):
        with open(path) as file:
            recorded = json.load(file)
    pretraining = None
    if "pretraining_arguments" in recorded:
        pretraining = {
            "dataset": {key: recorded["dataset"][key] for key in ("name", "source", "hub_id", "images")},
            "num_train_epochs": recorded["training_arguments"]["num_train_epochs"],
            "seed": recorded["training_arguments"]["seed"],
            **recorded["pretraining_arguments"],
        }
    name = os.path.basename(os.path.normpath(source)) if os.path.exists(source) else source
    return {"source": name, "pretraining": pretraining}


def read_run_arguments(folder):
    """The `run_arguments.json` of a run folder or checkpoint, or {} where there is none."""
    path = os.path.join(folder, ARGUMENTS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as file:
        return json.load(file)


def run_arguments(arguments):
    """The argument groups of a run (`ARGUMENT_CLASSES`) and its number of processes, as JSON values. The
    distillation arguments are recorded for a run with a teacher only: a run without one is recorded as before they
    existed, so its checkpoints resume across that change."""
    model_args, data_args, augmentation_args, training_args, last_args = arguments
    groups = {
        "model_arguments": asdict(model_args),
        "data_arguments": asdict(data_args),
        "augmentation_arguments": asdict(augmentation_args),
        "training_arguments": training_args.to_sanitized_dict(),  # the token is masked
        "num_processes": training_args.world_size,
    }
    if isinstance(last_args, PretrainingArguments):
        groups["pretraining_arguments"] = asdict(last_args)
    elif last_args.teacher_model_name_or_path:
        groups["distillation_arguments"] = asdict(last_args)
    return json.loads(json.dumps(groups, default=str))


def read_saved_record(source, name):
    """The JSON file `name` of a saved model's run folder, or of its Hub repository (a published VTLM run carries
    `run_info.json` and `all_results.json`), or {} where it has none or it cannot be fetched now."""
    from transformers.utils import cached_file

    try:
        path = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
    except OSError:  # the Hub unreachable, or not a repository: nothing recorded to read
        return {}
    if path is None:
        return {}
    with open(path) as file:
        return json.load(file)
