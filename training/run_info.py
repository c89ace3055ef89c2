"""`run_info.json`: what defines a run (its arguments, config, code and hardware), written beside its results."""

import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict

import torch
import transformers
from torch.utils import collect_env
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from modeling import CIFAR100_LABELS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        "cuda": env.cuda_runtime_version,
        "transformers": transformers.__version__,
    }


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def is_all_of_cifar100(data):
    """Whether the splits are all of CIFAR-100: its 100 fine labels, 50,000 train + validation and 10,000 test."""
    sizes = {split: len(dataset) for split, dataset in data.datasets.items()}
    return (
        data.label_names == list(CIFAR100_LABELS)
        and sizes["train"] + sizes["validation"] == 50_000
        and sizes["test"] == 10_000
    )


def is_smoke_run(data_args, training_args):
    """A run cut short: a step limit, fewer images than the dataset has, or less than one epoch. Any other run is
    a real run on its dataset, whatever the dataset."""
    return (
        training_args.max_steps > 0
        or data_args.max_train_samples is not None
        or data_args.max_eval_samples is not None
        or training_args.num_train_epochs < 1
    )


def dataset_display_name(data_args):
    """What the run's dataset is called in anything published: `--dataset_display_name`, else the Hub id, else the
    local folder's name (never its path on this machine)."""
    if data_args.dataset_display_name:
        return data_args.dataset_display_name
    if os.path.exists(data_args.dataset_name):
        return os.path.basename(os.path.normpath(data_args.dataset_name))
    return data_args.dataset_name


def describe_dataset(data_args, data):
    """The dataset as the model card shows it: its name, Hub id (None for a local folder), classes and sizes."""
    sizes = {split: len(dataset) for split, dataset in data.datasets.items()}
    # Train and validation together: the images the dataset had for learning, before the hold-out.
    per_class = [a + b for a, b in zip(data.class_counts("train"), data.class_counts("validation"), strict=True)]
    return {
        "name": "CIFAR-100" if is_all_of_cifar100(data) else dataset_display_name(data_args),
        "hub_id": None if os.path.exists(data_args.dataset_name) else data_args.dataset_name,
        "is_cifar100": is_all_of_cifar100(data),
        "num_classes": len(data.label_names),
        "label_names": data.label_names,
        "images": sizes,
        "train_images_per_class": {"min": min(per_class), "max": max(per_class)},
    }


def publishable_run_info(run_info, data_args):
    """`run_info` without paths of this machine: the dataset by its display name, folders by their own names."""
    run_info = json.loads(json.dumps(run_info))
    data_arguments = run_info["data_arguments"]
    if os.path.exists(data_args.dataset_name):
        data_arguments["dataset_name"] = dataset_display_name(data_args)
    data_arguments["cache_dir"] = None
    training_arguments = run_info["training_arguments"]
    for name in ("output_dir", "logging_dir", "resume_from_checkpoint"):
        if isinstance(training_arguments.get(name), str) and training_arguments[name] != "None":
            training_arguments[name] = os.path.basename(os.path.normpath(training_arguments[name]))
    model_path = run_info["model_arguments"].get("model_name_or_path")
    if model_path and os.path.exists(model_path):
        run_info["model_arguments"]["model_name_or_path"] = os.path.basename(os.path.normpath(model_path))
    return run_info


def write_run_info(output_dir, arguments, config, data):
    """Write the run's record into `output_dir`: `run_arguments.json`, exactly as given (it stays on this machine:
    reruns and `scripts/evaluate_model.py` read it), and `run_info.json`, published with the model: the arguments
    without local paths, the dataset, config, code and hardware."""
    model_args, data_args, augmentation_args, training_args = arguments
    recorded = run_arguments(arguments)
    run_info = {
        "git_commit": git_commit(),
        **recorded,
        "dataset": describe_dataset(data_args, data),
        "config": config.to_dict(),
        "hardware": {"device": device_name(training_args.device), "num_processes": training_args.world_size},
        "smoke_run": is_smoke_run(data_args, training_args),
    }
    with open(os.path.join(output_dir, "run_info.json"), "w") as file:
        json.dump(publishable_run_info(run_info, data_args), file, indent=2, default=str)
    with open(os.path.join(output_dir, ARGUMENTS_FILE), "w") as file:  # last: it marks the run as finished
        json.dump(recorded, file, indent=2)


# Arguments that do not change what a run computes: where it writes, what it logs and reports, how fast it loads
# data. A rerun may change these freely; any other difference means another run.
NOT_DEFINING = (
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_", "log_", "disable_tqdm", "report_to",
    "run_name", "project", "trackio_", "push_to_hub", "hub_", "save_total_limit", "save_on_each_node",
    "save_only_model", "enable_jit_checkpoint", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "dataloader_multiprocessing_context",
    "per_device_eval_batch_size", "eval_batch_size", "eval_accumulation_steps", "eval_do_concat_batches",
    "eval_use_gather_object", "include_", "skip_memory_metrics", "ddp_timeout", "ddp_backend", "debug", "local_rank",
    "preprocessing_num_workers", "cache_dir",
)  # fmt: skip
ARGUMENTS_FILE = "run_arguments.json"


def run_arguments(arguments):
    """The four argument groups of a run (`ARGUMENT_CLASSES`) and its number of processes, as JSON values."""
    model_args, data_args, augmentation_args, training_args = arguments
    groups = {
        "model_arguments": asdict(model_args),
        "data_arguments": asdict(data_args),
        "augmentation_arguments": asdict(augmentation_args),
        "training_arguments": training_args.to_sanitized_dict(),  # the token is masked
        "num_processes": training_args.world_size,
    }
    return json.loads(json.dumps(groups, default=str))


def differing_arguments(saved, current):
    """`--name saved -> current` for every argument that defines the run and differs between the two."""
    differences = []
    for group, values in current.items():
        old_values = saved.get(group) or {}
        if not isinstance(values, dict):  # a value of its own, like num_processes
            values, old_values = {group: values}, {group: saved.get(group)}
        for name in sorted(values.keys() | old_values.keys()):
            old, new = old_values.get(name), values.get(name)
            if old != new and not name.startswith(NOT_DEFINING):
                differences.append(f"--{name} {old} -> {new}")
    return differences


class SaveRunArguments(TrainerCallback):
    """Writes the run's arguments into every checkpoint, so that a rerun can tell whether it may resume it."""

    def __init__(self, arguments):
        self.arguments = arguments

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            with open(os.path.join(folder, ARGUMENTS_FILE), "w") as file:
                json.dump(self.arguments, file, indent=2)


class RunMismatchError(ValueError):
    pass


def check_previous_run(output_dir, arguments, checkpoint):
    """Whether `output_dir` already holds this run, finished: its `run_arguments.json` has the same arguments.

    Raises `RunMismatchError` when `output_dir` holds a finished run or `checkpoint` (the one a rerun would resume)
    that other arguments made: resuming it would mix two runs.
    """
    sources = [os.path.join(output_dir, ARGUMENTS_FILE)]
    if checkpoint:
        sources.append(os.path.join(checkpoint, ARGUMENTS_FILE))
    finished = False
    for path in sources:
        if not os.path.isfile(path):
            continue
        with open(path) as file:
            saved = json.load(file)
        saved = {key: saved[key] for key in arguments if key in saved}
        if differences := differing_arguments(saved, arguments):
            what = "a finished run" if path == sources[0] else f"the checkpoint {checkpoint}"
            raise RunMismatchError(
                f"{output_dir} holds {what} made with other arguments ({'; '.join(differences)}). Resuming it would "
                "mix two runs: pass a new --output_dir, or --overwrite_output_dir to delete it and start afresh."
            )
        finished = finished or path == sources[0]
    return finished


def clear_previous_run(output_dir):
    """Delete what a run leaves in `output_dir`: its checkpoints, TensorBoard logs, results and model card."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") or name in ("runs", "examples"):
            shutil.rmtree(path)
        elif name.endswith("_results.json") or name in (
            ARGUMENTS_FILE,
            "run_info.json",
            "trainer_state.json",
            "README.md",
        ):
            os.remove(path)
