#!/usr/bin/env python
"""Measure how fast VTLM trains and evaluates, through the Trainer that `scripts/train.py` builds, on random images.

    python scripts/benchmark.py                                       # vtlm-37m, batch 512, fp16 on a GPU
    python scripts/benchmark.py --model_preset vtlm-5m --batch_size 64 --steps 10 --eval_batch_size 256
    python scripts/benchmark.py --teacher_model_name_or_path runs/vtlm-37m-conv-cifar100   # a taught model's step
    python scripts/benchmark.py --summarize runs/benchmark-*.json     # one table of earlier results

Each of `--repeats` rounds builds the run with `training.build` and times, after `--untimed_steps` warm-up steps:
training (`trainer.train()`, optimizer step end to step end, CUDA events on a GPU); the bare loop (that trainer's
own `training_step` and optimizer update on batches indexed out of one tensor on the device: training / bare step time
is the cost of the Trainer loop and DataLoader); the input pipeline (the train DataLoader plus augmentation, no
model); evaluation (`trainer.evaluate()`, metrics included); with --teacher_model_name_or_path, the teacher's
forward pass on each augmented batch (its cost per step, also inside the training and bare-loop figures). Every figure
is a median.
FLOPs come from `training/flops.py` (the model's own: a teacher's are not counted); MFU needs a peak, from
`--peak_tflops` or the table of known GPUs. Pixel values are random: speed does not depend on them. The timing is
`training/benchmark.py`'s; this script parses the flags and prints.
"""

import json
import os
import sys

import torch
import transformers
from transformers import HfArgumentParser

from vtlm.training.arguments import AugmentationArguments, DistillationArguments, ModelArguments
from vtlm.training.benchmark import BenchmarkArguments, markdown_table, run
from vtlm.training.cli import parse_flags, run_cli, setup_logging


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser(
        (ModelArguments, AugmentationArguments, DistillationArguments, BenchmarkArguments), exit_on_error=False
    )
    parse_flags(parser, argv)
    model_args, augmentation_args, distillation_args, bench = parser.parse_args_into_dataclasses(argv)
    if bench.summarize:
        results = []
        for path in bench.summarize:
            with open(path) as file:
                results.append(json.load(file))
    else:
        setup_logging(transformers.logging.WARNING)
        if bench.torch_num_threads or not torch.cuda.is_available():
            torch.set_num_threads(bench.torch_num_threads or 1)
        results = [run(model_args, augmentation_args, bench, distillation_args)]
        os.makedirs(os.path.dirname(os.path.abspath(bench.output_json)), exist_ok=True)
        with open(bench.output_json, "w") as file:
            json.dump(results[0], file, indent=2)
        print(f"wrote {bench.output_json}")
    print(markdown_table(results))
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))
