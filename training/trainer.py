"""The HF Trainer, taught to augment uint8 batches on the training device and to keep decay off non-matrices."""

import json
import math
import os

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import sort_checkpoints
from transformers.utils import logging

from .augmentation import BatchAugmentation, PixelNormalizer, augmentation_seed

logger = logging.get_logger(__name__)


class VTLMTrainer(Trainer):
    """A `Trainer` whose batches arrive as uint8 `images` and are augmented on the device, in whole batches.

    Training batches go through `augmentation` (crop, flip, RandAugment, erasing, Mixup/CutMix, label smoothing),
    seeded from (seed, global step, rank, micro-step) so a resumed run sees the same pixels as an uninterrupted one.
    Evaluation batches are only normalised, by `normalizer`. Label smoothing lives in the soft targets, so the
    Trainer's own label smoother is switched off. A Trainer that only evaluates needs no `augmentation`.
    """

    def __init__(self, *args, normalizer: PixelNormalizer, augmentation: BatchAugmentation | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.normalizer = normalizer
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
        pixel_values, targets = self.augmentation(inputs["images"], inputs["labels"], seed)
        return super().training_step(model, {"pixel_values": pixel_values, "labels": targets}, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {"pixel_values": self.normalizer(inputs["images"]), "labels": inputs["labels"]}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)


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

    transformers' `get_last_checkpoint` returns the newest folder even when a kill cut it short. The Trainer writes
    `trainer_state.json` last, so a checkpoint whose state does not parse is skipped for the one before it.
    """
    if not os.path.isdir(output_dir):
        return None
    for folder in reversed(sort_checkpoints(output_dir)):
        try:
            with open(os.path.join(folder, "trainer_state.json")) as state:
                json.load(state)
        except (OSError, ValueError):
            logger.warning(f"skipping {folder}: it was not completely written")
            continue
        return folder
    return None
