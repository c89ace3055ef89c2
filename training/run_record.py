"""A run folder's record: the names of the files a run writes, `run_info.json` (what defines the run: its arguments,
dataset, config, code, hardware and cost, published with the model) and `run_arguments.json` (the arguments exactly as
given, which stay on this machine), written once at the end of a run, the readers of every record file, and the
comparison of two records (which arguments define a run, and which decide its validation images).

The card (`training.model_card`), publishing (`training.hub`), reruns (`training.rerun`) and the comparison reports
only read what this module wrote, through its readers.
"""

import json
import os
import shlex
from dataclasses import asdict, fields
from pathlib import Path

from huggingface_hub.constants import REPOCARD_NAME
from PIL import Image
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import CONFIG_NAME, IMAGE_PROCESSOR_NAME, SAFE_WEIGHTS_NAME

from vtlm.modeling import CIFAR100_LABELS

from .provenance import device_name, git_commit
from .sources import is_local, publishable_name

# The files of a run folder, each named here once.
RUN_INFO_FILE = "run_info.json"  # what the card and every report render; published with the model
ARGUMENTS_FILE = "run_arguments.json"  # the arguments exactly as given; never published. Written last: the run is done


def results_file(split):
    """The file of `split`'s metrics, as `Trainer.save_metrics` names it ("all": every split's)."""
    return f"{split}_results.json"


ALL_RESULTS_FILE = results_file("all")
RESULTS_FILES = results_file("*")  # all, train, eval and test
TRAINER_STATE_FILE = "trainer_state.json"  # the Trainer's log history and selected checkpoint (its TRAINER_STATE_NAME)
CARD_FILE = REPOCARD_NAME  # the model card, README.md
CURVES_FILE = "training_curves.png"  # the card's plot
EXAMPLES_DIR = "examples"  # the widget's example images
TENSORBOARD_DIR = "runs"  # the Trainer's own TensorBoard files
ENDPOINT_FILES = ("handler.py", "requirements.txt")  # the Inference Endpoint's, copied in by publishing
MODEL_FILES = (CONFIG_NAME, SAFE_WEIGHTS_NAME, IMAGE_PROCESSOR_NAME)  # what loads the model, in transformers' names
# A record being written (`write_record`): left behind only by a kill mid-write, and never read.
PARTIAL_SUFFIX = ".partial"
PARTIAL_RECORDS = f"*.json{PARTIAL_SUFFIX}"
# What a rerun deletes with --overwrite_output_dir (with the checkpoints, logs and examples): the run's results and
# record, and its card.
RECORD_FILES = (RESULTS_FILES, ARGUMENTS_FILE, RUN_INFO_FILE, TRAINER_STATE_FILE, CARD_FILE, PARTIAL_RECORDS)
# What a run writes at the top of its output folder (fnmatch patterns): anything else there is not a run's, and a
# run never trains into it (it would be overwritten, or published with the model).
RUN_FILES = (
    f"{PREFIX_CHECKPOINT_DIR}-*", TENSORBOARD_DIR, EXAMPLES_DIR, *MODEL_FILES, "configuration_*.py", "modeling_*.py",
    "training_args.bin", *RECORD_FILES, CURVES_FILE, *ENDPOINT_FILES,
)  # fmt: skip
# What is published of a run folder (fnmatch patterns on paths relative to it; `*` also matches "/").
UPLOAD_PATTERNS = [
    *MODEL_FILES,
    "*.py",  # the model's code (configuration_vtlm.py, modeling_vtlm.py) and the endpoint's handler.py
    CARD_FILE,
    CURVES_FILE,
    f"{EXAMPLES_DIR}/*.png",
    RESULTS_FILES,
    RUN_INFO_FILE,
    TRAINER_STATE_FILE,
    "requirements.txt",
]
CIFAR100_HUB_ID = "uoft-cs/cifar100"


# Reading the record.


def read_record(folder, name=RUN_INFO_FILE) -> dict:
    """The JSON file `name` of the run folder or checkpoint `folder` (`RUN_INFO_FILE`, `ARGUMENTS_FILE`,
    `ALL_RESULTS_FILE`, `TRAINER_STATE_FILE`), or {} where there is none."""
    path = Path(folder) / name
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:  # a ValueError: the scripts print it as one line, which must name the file
        raise ValueError(f"{path} is not a complete JSON file ({error}): was its run killed as it wrote it?") from None


def read_run_arguments(folder) -> dict:
    """The `run_arguments.json` of a run folder or checkpoint, or {} where there is none."""
    return read_record(folder, ARGUMENTS_FILE)


def read_saved_record(source, name=RUN_INFO_FILE) -> dict:
    """The JSON file `name` of a saved model's run folder, or of its Hub repository (a published VTLM run carries
    `run_info.json` and `all_results.json`), or {} where it has none or it cannot be fetched now."""
    from transformers.utils import cached_file

    try:
        path = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
    except OSError:  # the Hub unreachable, or not a repository: nothing recorded to read
        return {}
    if path is None:
        return {}
    return read_record(os.path.dirname(path), os.path.basename(path))


# Writing the record.


def write_record(folder, name, record):
    """Write `record` as the JSON file `name` in `folder` (a run folder, a checkpoint, a comparison's logs), whole or
    not at all: it is written beside it (`PARTIAL_RECORDS`) and renamed into place, so a kill never leaves a record
    cut short."""
    path = os.path.join(folder, name)
    with open(path + PARTIAL_SUFFIX, "w") as file:
        json.dump(record, file, indent=2, default=str)
    os.replace(path + PARTIAL_SUFFIX, path)


def run_arguments(arguments):
    """The argument groups of a run (`training.arguments.RunArguments`) and its number of processes, as JSON values.
    The distillation arguments are recorded for a run with a teacher only: a run without one is recorded as before
    they existed, so its checkpoints resume across that change."""
    training_args = arguments.training_args
    groups = {
        "model_arguments": asdict(arguments.model_args),
        "data_arguments": asdict(arguments.data_args),
        "augmentation_arguments": asdict(arguments.augmentation_args),
        "training_arguments": training_args.to_sanitized_dict(),  # the token is masked
        "num_processes": training_args.world_size,
    }
    if arguments.pretraining_args:
        groups["pretraining_arguments"] = asdict(arguments.pretraining_args)
    elif arguments.distillation_args.teacher_model_name_or_path:
        groups["distillation_arguments"] = asdict(arguments.distillation_args)
    return json.loads(json.dumps(groups, default=str))


def write_run_info(
    output_dir, arguments, config, data, compute, examples=(), resumed_from=None, validation_splits=None
):
    """Write the run's record into `output_dir`, once, at the end of the run: `run_info.json`, published with the
    model (the arguments without local paths, the dataset, config, code, hardware, whether and why it is a smoke run,
    whether it resumed, its teacher (`describe_teacher`, with whether it held out this run's validation split: its
    verdict in `validation_splits`, from `check_sources_hold_out`), the model it started from
    (`describe_initialization`), and the true labels of its `examples`, from `save_example_images`),
    and `run_arguments.json`, the arguments exactly as given (it stays on this machine: reruns and
    `scripts/evaluate_model.py` read it). `compute` is what the run cost (`training.flops.describe_compute`)."""
    data_args, training_args = arguments.data_args, arguments.training_args
    recorded = run_arguments(arguments)
    reasons = smoke_run_reasons(data_args, training_args)
    dataset = describe_dataset(data_args, data)
    teacher = describe_teacher(arguments.distillation_args, dataset, config) if arguments.distillation_args else None
    if teacher:  # whether it trained on the validation images
        teacher["validation_split"] = (validation_splits or {}).get("teacher_model_name_or_path")
    run_info = {
        "git_commit": git_commit(),
        **recorded,
        "dataset": dataset,
        "teacher": teacher,
        "initialized_from": describe_initialization(arguments.model_args),
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
    write_record(output_dir, RUN_INFO_FILE, publishable_run_info(run_info, data_args))
    write_record(output_dir, ARGUMENTS_FILE, recorded)  # last: it marks the run as finished


def publishable_run_info(run_info, data_args):
    """`run_info` without paths of this machine: a local dataset by its folder's name, folders by their own names."""
    run_info = json.loads(json.dumps(run_info))
    data_arguments = run_info["data_arguments"]
    data_arguments["dataset_name"] = publishable_name(data_args.dataset_name)
    data_arguments["cache_dir"] = None
    training_arguments = run_info["training_arguments"]
    for name in ("output_dir", "logging_dir", "resume_from_checkpoint"):
        if isinstance(training_arguments.get(name), str) and training_arguments[name] != "None":
            training_arguments[name] = os.path.basename(os.path.normpath(training_arguments[name]))
    for group, name in (
        ("model_arguments", "model_name_or_path"),
        ("distillation_arguments", "teacher_model_name_or_path"),
    ):
        if path := (run_info.get(group) or {}).get(name):
            run_info[group][name] = publishable_name(path)
    return run_info


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
    return data_args.dataset_display_name or publishable_name(data_args.dataset_name)


def describe_dataset(data_args, data):
    """The dataset as the card shows it: its name (`--dataset_display_name`, which names and never makes a dataset
    CIFAR-100), where it came from, its Hub id (CIFAR-100's for a complete local copy of it, None for other local
    folders), the columns its images and labels were read from (the flags', or those found in their place:
    `training.data`), classes, whether superclass accuracy means anything, sizes, and the training images per class
    after the validation hold-out."""
    is_cifar100 = is_all_of_cifar100(data)
    hub_id = None if is_local(data_args.dataset_name) else data_args.dataset_name
    train_per_class = data.class_counts("train")
    return {
        "name": "CIFAR-100" if is_cifar100 and not data_args.dataset_display_name else dataset_display_name(data_args),
        "source": publishable_name(data_args.dataset_name),  # a Hub id, or a local folder's own name
        "hub_id": CIFAR100_HUB_ID if is_cifar100 else hub_id,
        "is_cifar100": is_cifar100,
        "columns": {"image": data.image_column, "label": data.label_column},
        "num_classes": len(data.label_names),
        "label_names": data.label_names,
        "has_superclasses": data.fine_to_coarse is not None,
        "images": {split: len(dataset) for split, dataset in data.datasets.items()},
        "validation_held_out": data.validation_held_out,  # False: the dataset's own validation split, none held out
        "train_images_per_class": {"min": min(train_per_class), "max": max(train_per_class)},
    }


def describe_teacher(distillation_args, dataset, config):
    """The run's record of its teacher, for `run_info.json` and the card (None without one): its name (a Hub id, or
    a folder's own name, never its path), the method and weights, and, from its run folder where it has one, its
    test top-1, what it was trained on, and whether it saw only this run's dataset (`dataset`, as
    `describe_dataset` records it): trained on it from scratch, by no teacher that saw more."""
    source = distillation_args.teacher_model_name_or_path
    if not source:
        return None
    teacher_run, results = (read_saved_record(source, name) for name in (RUN_INFO_FILE, ALL_RESULTS_FILE))
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
        "name": publishable_name(source),
        "hub_id": None if is_local(source) else source,
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


def describe_initialization(model_args):
    """The saved model a run started from (`--model_name_or_path`, by its folder's name or Hub id; its `hub_id`, None
    for a local folder) and, where that
    folder's own `run_info.json` records one, the masked image modelling that pre-trained it (`scripts/pretrain.py`):
    its dataset, epochs and arguments. None for a run from scratch."""
    source = model_args.model_name_or_path
    if not source:
        return None
    recorded = read_record(source)
    pretraining = None
    if "pretraining_arguments" in recorded:
        pretraining = {
            "dataset": {key: recorded["dataset"][key] for key in ("name", "source", "hub_id", "images")},
            "num_train_epochs": recorded["training_arguments"]["num_train_epochs"],
            "seed": recorded["training_arguments"]["seed"],
            **recorded["pretraining_arguments"],
        }
    hub_id = None if is_local(source) else source
    return {"source": publishable_name(source), "hub_id": hub_id, "pretraining": pretraining}


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


# Comparing two records.

# Arguments that do not change what a run computes: where it writes, what it logs and reports, how fast it loads
# data. A rerun may change these freely; any other difference means another run.
NOT_DEFINING = (
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_", "log_", "disable_tqdm", "report_to",
    "run_name", "project", "trackio_", "push_to_hub", "hub_", "space_id", "static_space_id", "save_total_limit",
    "save_on_each_node", "save_only_model", "enable_jit_checkpoint", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "dataloader_multiprocessing_context",
    "per_device_eval_batch_size", "eval_batch_size", "eval_accumulation_steps", "eval_do_concat_batches",
    "eval_use_gather_object", "include_", "skip_memory_metrics", "ddp_timeout", "ddp_backend", "debug", "local_rank",
    "preprocessing_num_workers", "cache_dir",
)  # fmt: skip
# The data arguments that decide which images the validation split holds (with the seed).
HOLD_OUT_ARGUMENTS = ("dataset_name", "dataset_config_name", "label_column_name", "validation_split_size")
# Data arguments that only cut a run short or make it faster: another run on the same data need not repeat them.
NOT_WHICH_DATA = ("max_train_samples", "max_eval_samples", "preprocessing_num_workers")


def differing_arguments(saved, current):
    """`--name saved -> current` for every argument that defines the run and differs between the two records."""
    differences = []
    # Every group of either record: one that only one of them has (distillation_arguments, recorded for a run with
    # a teacher) differs in each of its values.
    for group in [*current, *(group for group in saved if group not in current)]:
        values, old_values = current.get(group), saved.get(group)
        if not isinstance(values if group in current else old_values, dict):  # a value of its own: num_processes
            values, old_values = {group: values}, {group: old_values}
        values, old_values = values or {}, old_values or {}
        for name in sorted(values.keys() | old_values.keys()):
            old, new = old_values.get(name), values.get(name)
            if old != new and not name.startswith(NOT_DEFINING):
                differences.append(f"--{name} {old} -> {new}")
    return differences


def hold_out_arguments(data_arguments, seed):
    """What decides which images a run's validation split holds, from its data arguments (a dict) and seed."""
    return {"data_arguments": {name: data_arguments.get(name) for name in HOLD_OUT_ARGUMENTS}, "seed": seed}


def same_data_flags(data_args, training_args):
    """The flags that give `scripts/train.py` the data of a run of `data_args` and `training_args`: the same images,
    read the same way, with the same validation hold-out (a fine-tuning that holds out other images is refused:
    `check_source_hold_out`), each where it differs from the default, quoted for a shell."""
    values = [(field.name, getattr(data_args, field.name), field.default) for field in fields(data_args)]
    seed = next(field.default for field in fields(training_args) if field.name == "seed")
    values.append(("seed", training_args.seed, seed))
    flags = []
    for name, value, default in values:
        if name not in NOT_WHICH_DATA and value != default:
            value = int(value) if isinstance(value, float) and value.is_integer() else value
            flags.append(f"--{name} {shlex.quote(str(value))}")
    return flags


def check_same_hold_out(run, recorded, data_args, seed):
    """Raise unless `data_args` and `seed` hold out the same validation split as the run `recorded` (its
    `run_arguments.json`): another one would hold images the run trained on."""
    trained = hold_out_arguments(recorded["data_arguments"], recorded["training_arguments"]["seed"])
    if differences := differing_arguments(trained, hold_out_arguments(vars(data_args), seed)):
        raise ValueError(
            f"{run} was trained with other data or seed ({'; '.join(differences)}): that validation split would hold "
            "images the run trained on. Drop those flags to score the run's own validation split."
        )


def source_validation_split(source, data_args, seed, held_out=True):
    """Whether the model `source` (a teacher, or the saved model a run starts from, pre-trained or not: a folder or Hub
    id) held out the validation split that `data_args` and `seed` hold out (`held_out`: False for a dataset's own
    validation split, which no seed moves), from its `run_info.json`: "same"; "other", with the arguments that differ
    (it trained on images of this run's split); or, where its record cannot tell, "not recorded" (no VTLM record) or
    "another dataset" (whose images may still be this one's)."""
    recorded = read_saved_record(source)
    if not recorded.get("data_arguments") or not recorded.get("training_arguments"):
        return "not recorded", []
    # run_info.json names a local dataset by its folder's name: this run's is compared the same way.
    current = {**vars(data_args), "dataset_name": publishable_name(data_args.dataset_name)}
    if recorded["data_arguments"].get("dataset_name") != current["dataset_name"]:
        return "another dataset", []
    if not held_out:
        return "same", []
    teachers = hold_out_arguments(recorded["data_arguments"], recorded["training_arguments"].get("seed"))
    differences = differing_arguments(teachers, hold_out_arguments(current, seed))
    return ("other" if differences else "same"), differences


def check_source_hold_out(flag, source, data_args, seed, held_out=True):
    """Raise, before any training, when the model `source` given by `--flag` (a teacher, or the saved model to start
    from) trained on images of this run's validation split (the same dataset, another hold-out): the best epoch would
    be chosen on images that shaped it. Return the verdict of `source_validation_split` otherwise."""
    verdict, differences = source_validation_split(source, data_args, seed, held_out)
    if verdict == "other":
        raise ValueError(
            f"--{flag} {source} held out another validation split of this dataset ({'; '.join(differences)}): it "
            "trained on images this run would validate on. Train with its hold-out, or from a model trained without "
            "these images."
        )
    return verdict


def check_sources_hold_out(arguments, held_out) -> dict:
    """`check_source_hold_out` for each saved model the run of `arguments` learns from (its teacher, the model it
    starts from), on its data (`held_out`: whether its validation split was held out of train); return
    `{flag: verdict}`, what `write_run_info` records."""
    distillation_args, seed = arguments.distillation_args, arguments.training_args.seed
    sources = {
        "teacher_model_name_or_path": distillation_args.teacher_model_name_or_path if distillation_args else None,
        "model_name_or_path": arguments.model_args.model_name_or_path,
    }
    return {
        flag: check_source_hold_out(flag, source, arguments.data_args, seed, held_out)
        for flag, source in sources.items()
        if source
    }
