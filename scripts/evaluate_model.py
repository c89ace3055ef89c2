#!/usr/bin/env python
"""Evaluate a trained VTLM (a local folder or a Hub id) on a split of an image-classification dataset.

    python scripts/evaluate_model.py runs/vtlm-37m-cifar100                  # CIFAR-100's test split
    python scripts/evaluate_model.py Madras1/VTLM37m --split validation
    python scripts/evaluate_model.py MODEL --dataset_name uoft-cs/cifar10 --label_column_name label

The dataset flags are the training script's. Prints and writes top-1, top-5 and superclass accuracy and images/s;
evaluation runs through the same Trainer, metric and normalisation as the validation during training.
(Not named `evaluate.py`: run from this folder, that name would hide the `evaluate` library the metric is built on.)
"""

import json
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser, TrainingArguments

from training.augmentation import AugmentationArguments, BatchAugmentation
from training.data import DataArguments, collate_batch, load_image_datasets
from training.metrics import build_compute_metrics, preprocess_logits_for_metrics
from training.trainer import VTLMTrainer

SPLITS = ("train", "validation", "test")


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(metadata={"help": "A VTLM run folder or Hub id."})
    split: str = field(default="test", metadata={"help": f"Which split to evaluate, one of {SPLITS}."})
    output_dir: str = field(default="runs/evaluate", metadata={"help": "Where `<split>_results.json` is written."})
    batch_size: int = field(default=1024, metadata={"help": "Images per evaluation batch."})
    seed: int = field(default=42, metadata={"help": "Seed of the validation hold-out; training's --seed."})

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {SPLITS}, got {self.split!r}")


def main(argv=None):
    parser = HfArgumentParser((EvaluationArguments, DataArguments))
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-"):  # the model may come first, without its flag
        argv = ["--model_name_or_path", argv[0], *argv[1:]]
    evaluation_args, data_args = parser.parse_args_into_dataclasses(argv)

    model = AutoModelForImageClassification.from_pretrained(evaluation_args.model_name_or_path, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(evaluation_args.model_name_or_path)
    data = load_image_datasets(data_args, image_size=model.config.image_size, seed=evaluation_args.seed)
    model_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if model_labels != data.label_names:
        raise ValueError(
            f"{evaluation_args.model_name_or_path} predicts {model.config.num_labels} labels that differ from the "
            f"dataset's {len(data.label_names)} ({data_args.dataset_name}, column {data_args.label_column_name!r})"
        )

    trainer = VTLMTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=evaluation_args.output_dir,
            per_device_eval_batch_size=evaluation_args.batch_size,
            report_to="none",
            dataloader_pin_memory=torch.cuda.is_available(),
        ),
        data_collator=collate_batch,
        compute_metrics=build_compute_metrics(data.fine_to_coarse),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        augmentation=BatchAugmentation(
            AugmentationArguments(), model.config.num_labels, processor.image_mean, processor.image_std
        ),
    )
    split = evaluation_args.split
    metrics = trainer.evaluate(data.tensors(split), metric_key_prefix=split)
    trainer.log_metrics(split, metrics)
    os.makedirs(evaluation_args.output_dir, exist_ok=True)
    path = os.path.join(evaluation_args.output_dir, f"{split}_results.json")
    with open(path, "w") as file:
        json.dump({"model": evaluation_args.model_name_or_path, "dataset": data_args.dataset_name, **metrics}, file)
    print(f"wrote {path}")
    return metrics


if __name__ == "__main__":
    main()
