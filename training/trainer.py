"""The HF Trainer, taught to augment uint8 batches on the training device and to keep decay off non-matrices."""

import json
import math
import os
import re

from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from .augmentation import BatchAugmentation, augmentation_seed
from .data import collate_batch
from .metrics import build_compute_metrics, preprocess_logits_for_metrics

logger = logging.get_logger(__name__)


class VTLMTrainer(Trainer):
    """A `Trainer` whose batches arrive as uint8 images and are augmented on the device, in whole batches.

    Training batches go through `augmentation` (crop, flip, RandAugment, erasing, Mixup/CutMix, label smoothing),
    seeded from (seed, global step, rank, micro-step) so a resumed run sees the same pixels as an uninterrupted one.
    Evaluation batches are only normalised. Label smoothing lives in the soft targets, so the Trainer's own label
    smoother is switched off.
    """

    def __init__(self, *args, augmentation: BatchAugmentation, **kwargs):
        super().__init__(*args, **kwargs)
        self.augmentation = augmentation
        self.label_smoother = None
        self._micro_step = (-1, 0)  # (global step, micro-steps seen at that step) for gradient accumulation

    def get_decay_parameter_names(self, model):
        no_decay = set(self.accelerator.unwrap_model(model).no_weight_decay_parameter_names())
        return [name for name, _ in model.named_parameters() if name not in no_decay]

    def training_step(self, model, inputs, num_items_in_batch=None):
        step, micro_step = self._micro_step
        micro_step = micro_step + 1 if step == self.state.global_step else 0
        self._micro_step = (self.state.global_step, micro_step)
        seed = augmentation_seed(self.args.seed, self.state.global_step, self.args.process_index, micro_step)
        pixel_values, targets = self.augmentation(inputs["pixel_values"], inputs["labels"], seed)
        return super().training_step(model, {"pixel_values": pixel_values, "labels": targets}, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {**inputs, "pixel_values": self.augmentation.normalize(inputs["pixel_values"])}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)


def build_augmentation(augmentation_args, config, args, image_processor):
    """The recipe's batch augmentation for `config`'s labels. It normalises with `image_processor`'s mean and std, so
    training sees what the published processor gives at inference, and puts the training arguments' label smoothing
    into its soft targets."""
    return BatchAugmentation(
        augmentation_args,
        num_labels=config.num_labels,
        mean=image_processor.image_mean,
        std=image_processor.image_std,
        label_smoothing=args.label_smoothing_factor,
    )


def build_trainer(model, args, data, augmentation, callbacks=(), processing_class=None):
    """The `VTLMTrainer` of `scripts/train.py`, which `scripts/benchmark.py` times: train on the train split, select
    on the validation split, both held in memory as uint8 tensors (`ImageDatasets.tensors`)."""
    return VTLMTrainer(
        model=model,
        args=args,
        train_dataset=data.tensors("train"),
        eval_dataset=data.tensors("validation"),
        data_collator=collate_batch,
        compute_metrics=build_compute_metrics(data.fine_to_coarse),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        processing_class=processing_class,
        augmentation=augmentation,
        callbacks=[StopOnNonFiniteLoss(), *callbacks],
    )


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop a diverging run at the first non-finite training or validation loss.

    Every save follows an evaluation, which logs `eval_loss` first: raising there keeps diverged weights out of
    every checkpoint, so the last one on disk is good.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                raise FloatingPointError(
                    f"{key} is {value} at step {state.global_step}; training stopped. The checkpoints in "
                    f"{args.output_dir} hold no diverged weights: lower --learning_rate, then resume from the last."
                )


def last_complete_checkpoint(output_dir):
    """The newest `checkpoint-N` in `output_dir` that was completely written, or None.

    The Trainer writes `trainer_state.json` last, so a checkpoint whose state does not parse was cut short by a kill
    and is skipped.
    """
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps.append(int(match.group(1)))
    for step in sorted(steps, reverse=True):
        folder = os.path.join(output_dir, f"checkpoint-{step}")
        try:
            with open(os.path.join(folder, "trainer_state.json")) as state:
                json.load(state)
        except (OSError, ValueError):
            logger.warning(f"skipping {folder}: it was not completely written")
            continue
        return folder
    return None
