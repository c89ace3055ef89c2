#!/usr/bin/env python
"""Train VTLM on CIFAR-100 (or any image-classification dataset in the same schema) with the HF Trainer.

    accelerate launch scripts/train.py                     # the headline run: vtlm-37m, 100 epochs
    python scripts/train.py --model_preset vtlm-5m --num_train_epochs 10
    python scripts/train.py recipe.yaml                    # every flag from one .json or .yaml file

The best epoch is selected on a validation split held out from train; the test split is evaluated once, at the end.
"""

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict

import datasets
import torch
import transformers
from transformers import AutoConfig, AutoModelForImageClassification, HfArgumentParser, set_seed

from modeling import (
    CIFAR100_LABELS,
    VTLMConfig,
    VTLMForImageClassification,
    build_image_processor,
)
from training.arguments import ModelArguments, VTLMTrainingArguments, parse_config_overrides
from training.augmentation import AugmentationArguments
from training.data import DataArguments, load_image_datasets
from training.hub import check_repo_id, publish_run
from training.model_card import save_example_images, write_model_card
from training.trainer import build_augmentation, build_trainer, last_complete_checkpoint

logger = logging.getLogger(__name__)
ARGUMENT_CLASSES = (ModelArguments, DataArguments, AugmentationArguments, VTLMTrainingArguments)


def parse_arguments(argv):
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(argv)


def build_config(model_args, data=None):
    """The preset (or saved model's) config, with the recipe's regularisation, overrides and the dataset's labels."""
    fields = {"drop_path_rate": model_args.drop_path_rate, "hidden_dropout_prob": model_args.hidden_dropout_prob}
    overrides = parse_config_overrides(model_args.config_overrides)
    if twice := sorted(fields.keys() & overrides.keys()):
        raise ValueError(f"--config_overrides: set {', '.join(twice)} with its own flag (--{twice[0]}), not here")
    fields.update(overrides)
    if data is not None:
        fields.update(id2label=data.id2label, label2id=data.label2id)
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=True, **fields)
        config.validate_architecture()  # from_pretrained sets the overrides after construction
        return config
    return VTLMConfig.from_preset(model_args.model_preset, **fields)


def build_model(model_args, config):
    if model_args.model_name_or_path:
        saved = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
        # A new label set gets a fresh classifier; any other shape change is an error, not a silent re-init.
        return AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            trust_remote_code=True,
            ignore_mismatched_sizes=saved.num_labels != config.num_labels,
        )
    return VTLMForImageClassification(config)


def git_commit():
    """The commit of this checkout, with '-dirty' when it has uncommitted changes; None outside git."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


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


def write_run_info(output_dir, arguments, config, training_args, data):
    model_args, data_args, augmentation_args, _ = arguments
    run_info = {
        "git_commit": git_commit(),
        "model_arguments": asdict(model_args),
        "data_arguments": asdict(data_args),
        "augmentation_arguments": asdict(augmentation_args),
        "training_arguments": training_args.to_sanitized_dict(),
        "config": config.to_dict(),
        "hardware": {"device": device_name(training_args.device), "num_processes": training_args.world_size},
        # A full run on all of CIFAR-100, from the Hub or a local copy: anything less must not claim its results.
        "smoke_run": not is_all_of_cifar100(data) or training_args.max_steps > 0,
    }
    with open(os.path.join(output_dir, "run_info.json"), "w") as file:
        json.dump(run_info, file, indent=2, default=str)


def example_images(data, count=4):
    """The first test image of each of the first `count` classes: the card's widget examples, with their labels."""
    test = data.datasets["test"]
    labels = test["labels"][:]
    first = {}
    for index, label in enumerate(int(label) for label in labels):
        if len(first) == count:
            break
        first.setdefault(label, index)
    images = [test[index]["pixel_values"].permute(1, 2, 0).numpy() for index in first.values()]  # (H, W, 3) uint8
    return images, [data.label_names[label] for label in first]


def main(argv=None):
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    model_args, data_args, augmentation_args, training_args = arguments

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if training_args.should_log:  # as the transformers examples do: the default log level "passive" means info here
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)

    # The token is used for the final upload only: the Trainer would pickle it into training_args.bin.
    hub_token, training_args.hub_token = training_args.hub_token, None
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    if push_to_hub:
        check_repo_id(training_args.hub_model_id)  # now, not after hours of training

    resume_from = training_args.resume_from_checkpoint or last_complete_checkpoint(training_args.output_dir)
    if resume_from:
        logger.info(f"resuming from {resume_from}")

    # Before the model is built: the Trainer seeds only in its __init__, after the weights are drawn.
    set_seed(training_args.seed)
    image_size = build_config(model_args).image_size
    with training_args.main_process_first(desc="loading and decoding the dataset"):
        data = load_image_datasets(data_args, image_size=image_size, seed=training_args.seed)
    config = build_config(model_args, data)
    model = build_model(model_args, config)
    logger.info(f"{config.model_type} with {model.num_parameters():,} parameters, {config.num_labels} labels")

    image_processor = build_image_processor(image_size)
    augmentation = build_augmentation(augmentation_args, config, training_args, image_processor)
    trainer = build_trainer(model, training_args, data, augmentation, processing_class=image_processor)

    train_result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model()  # the epoch selected on validation, with its code files and preprocessor_config.json
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    trainer.save_metrics("eval", trainer.evaluate())
    # The test split is seen once, by the selected model.
    trainer.save_metrics("test", trainer.evaluate(data.tensors("test"), metric_key_prefix="test"))

    if trainer.is_world_process_zero():
        write_run_info(training_args.output_dir, arguments, model.config, training_args, data)
        save_example_images(training_args.output_dir, *example_images(data))
        if not push_to_hub:
            write_model_card(training_args.output_dir)
        else:  # renders the card itself, with links to the repo
            publish_run(
                training_args.output_dir,
                repo_id=training_args.hub_model_id,
                token=hub_token,
                private=training_args.hub_private_repo,
                revision=training_args.hub_revision,
            )


if __name__ == "__main__":
    main()
