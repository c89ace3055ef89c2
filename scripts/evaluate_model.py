#!/usr/bin/env python
"""Evaluate a trained VTLM (a run folder or a Hub id) on a split of an image-classification dataset.

    python scripts/evaluate_model.py runs/vtlm-37m-cifar100                  # the run's own data, test split
    python scripts/evaluate_model.py runs/vtlm-37m-cifar100 --split validation
    python scripts/evaluate_model.py Madras1/VTLM37m --dataset_name uoft-cs/cifar100
    python scripts/evaluate_model.py MODEL --dataset_name uoft-cs/cifar10 --label_column_name label

A run folder that `scripts/train.py` wrote is evaluated on the data it was trained on, read from its
`run_arguments.json`: no data flag needs retyping, and flags given replace the recorded ones. Scoring the validation
split with another hold-out (another `--validation_split_size`, `--seed` or dataset) is refused: it would score
images the model was trained on. Prints and writes top-1 (with its 95% interval), top-5 and superclass accuracy and
images/s; evaluation runs through the same Trainer, metric and normalisation as the validation during training.
(Not named `evaluate.py`: run from this folder, that name would hide the `evaluate` library the metric is built on.)
"""

import json
import os
import sys
from dataclasses import dataclass, field

from transformers import AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser

from training.arguments import DataArguments
from training.build import build_evaluation_trainer
from training.cli import run_cli
from training.data import load_image_datasets
from training.metrics import describe_accuracy
from training.run_info import ARGUMENTS_FILE, dataset_display_name

SPLITS = ("train", "validation", "test")
# The data arguments that decide which images the validation split holds.
HOLD_OUT_ARGUMENTS = ("dataset_name", "dataset_config_name", "label_column_name", "validation_split_size")


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(metadata={"help": "A VTLM run folder or Hub id."})
    split: str = field(default="test", metadata={"help": f"Which split to evaluate, one of {SPLITS}."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where `<split>_results.json` goes; default runs/evaluate/<model>-<split>."}
    )
    batch_size: int = field(default=1024, metadata={"help": "Images per evaluation batch."})
    seed: int | None = field(
        default=None, metadata={"help": "Seed of the validation hold-out; default: the run's --seed, else 42."}
    )

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {SPLITS}, got {self.split!r}")


def recorded_arguments(model_name_or_path):
    """The run's `run_arguments.json`, or {} for a model that has none (a Hub id, a folder from elsewhere)."""
    path = os.path.join(model_name_or_path, ARGUMENTS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as file:
        return json.load(file)


def check_hold_out(evaluation_args, data_args, seed, recorded):
    """Refuse a validation split that is not the run's own: it would hold images the run trained on."""
    if evaluation_args.split != "validation" or not recorded:
        return
    trained = {**recorded["data_arguments"], "seed": recorded["training_arguments"]["seed"]}
    asked = {name: getattr(data_args, name) for name in HOLD_OUT_ARGUMENTS} | {"seed": seed}
    if differing := [
        f"--{name} {trained[name]} (now {value})" for name, value in asked.items() if value != trained[name]
    ]:
        raise ValueError(
            f"{evaluation_args.model_name_or_path} was trained with {', '.join(differing)}: that validation split "
            "would hold images the run trained on. Drop those flags to score the run's own validation split."
        )


def main(argv=None):
    parser = HfArgumentParser((EvaluationArguments, DataArguments))
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-"):  # the model may come first, without its flag
        argv = ["--model_name_or_path", argv[0], *argv[1:]]
    model_flag = argv.index("--model_name_or_path") if "--model_name_or_path" in argv else None
    recorded = recorded_arguments(argv[model_flag + 1]) if model_flag is not None and len(argv) > model_flag + 1 else {}
    if recorded:  # the run's data flags become the defaults
        parser.set_defaults(**recorded["data_arguments"])
    evaluation_args, data_args = parser.parse_args_into_dataclasses(argv)
    seed = evaluation_args.seed
    if seed is None:
        seed = recorded["training_arguments"]["seed"] if recorded else 42
    check_hold_out(evaluation_args, data_args, seed, recorded)

    model_name = os.path.basename(os.path.normpath(evaluation_args.model_name_or_path))
    split = evaluation_args.split
    output_dir = evaluation_args.output_dir or os.path.join("runs", "evaluate", f"{model_name}-{split}")
    model = AutoModelForImageClassification.from_pretrained(evaluation_args.model_name_or_path, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(evaluation_args.model_name_or_path)
    data = load_image_datasets(data_args, image_size=model.config.image_size, seed=seed)
    model_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if model_labels != data.label_names:
        raise ValueError(
            f"{evaluation_args.model_name_or_path} predicts {model.config.num_labels} labels that differ from the "
            f"dataset's {len(data.label_names)} ({data_args.dataset_name}, column {data_args.label_column_name!r})"
        )

    trainer = build_evaluation_trainer(model, processor, data, output_dir, batch_size=evaluation_args.batch_size)
    metrics = trainer.evaluate(data.tensors(split), metric_key_prefix=split)
    metrics.pop("epoch", None)  # this Trainer never trained: its epoch means nothing
    trainer.log_metrics(split, metrics)
    report = {"model": evaluation_args.model_name_or_path, "dataset": dataset_display_name(data_args), "split": split}
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{split}_results.json")
    with open(path, "w") as file:
        json.dump({**report, "seed": seed, **metrics}, file, indent=2)
    print(f"{model_name}, {report['dataset']} {split} split: {describe_accuracy(metrics, split)}; wrote {path}")
    return metrics


if __name__ == "__main__":
    sys.exit(run_cli(main))
