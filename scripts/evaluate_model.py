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

from transformers import HfArgumentParser

from vtlm.training.arguments import DataArguments
from vtlm.training.cli import parse_flags, run_cli
from vtlm.training.run_record import check_same_hold_out, dataset_display_name, read_run_arguments, results_file
from vtlm.training.sources import check_model_source

SPLITS = ("train", "validation", "test")


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
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {self.batch_size}")


def main(argv=None):
    parser = HfArgumentParser((EvaluationArguments, DataArguments), exit_on_error=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-"):  # the model may come first, without its flag
        argv = ["--model_name_or_path", argv[0], *argv[1:]]
    model = parse_flags(parser, argv).model_name_or_path
    check_model_source(model)
    recorded = read_run_arguments(model)  # {} for a Hub id
    if recorded:  # the run's data flags become the defaults
        parser.set_defaults(**recorded["data_arguments"])
    evaluation_args, data_args = parser.parse_args_into_dataclasses(argv)
    seed = evaluation_args.seed
    if seed is None:
        seed = recorded["training_arguments"]["seed"] if recorded else 42
    if evaluation_args.split == "validation" and recorded:
        check_same_hold_out(model, recorded, data_args, seed)

    from transformers import AutoImageProcessor, AutoModelForImageClassification  # after the checks: seconds

    from vtlm.training.build import build_evaluation_trainer
    from vtlm.training.data import load_image_datasets
    from vtlm.training.metrics import accuracy_sentence

    model_name = os.path.basename(os.path.normpath(model))
    split = evaluation_args.split
    output_dir = evaluation_args.output_dir or os.path.join("runs", "evaluate", f"{model_name}-{split}")
    classifier = AutoModelForImageClassification.from_pretrained(model, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(model)
    data = load_image_datasets(data_args, image_size=classifier.config.image_size, seed=seed)
    model_labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    if model_labels != data.label_names:
        raise ValueError(
            f"{model} predicts {classifier.config.num_labels} labels that differ from the dataset's "
            f"{len(data.label_names)} ({data_args.dataset_name}, column {data.label_column!r})"
        )

    trainer = build_evaluation_trainer(classifier, processor, data, output_dir, batch_size=evaluation_args.batch_size)
    metrics = trainer.evaluate(data.tensors(split), metric_key_prefix=split)
    metrics.pop("epoch", None)  # this Trainer never trained: its epoch means nothing
    trainer.log_metrics(split, metrics)
    report = {"model": model, "dataset": dataset_display_name(data_args), "split": split}
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, results_file(split))
    with open(path, "w") as file:
        json.dump({**report, "seed": seed, **metrics}, file, indent=2)
    print(f"{model_name}, {report['dataset']} {split} split: {accuracy_sentence(metrics, split)}; wrote {path}")
    return metrics


if __name__ == "__main__":
    sys.exit(run_cli(main))
