"""The HF Trainer, taught to augment uint8 batches on the training device, to keep decay off non-matrices, and to
learn from a teacher."""

import math
import os
import time

from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .augmentation import BatchAugmentation, augmentation_seed
from .distillation import GUIDANCE_FILE, GUIDANCE_MODULE, Distillation
from .flops import ImageFlops, flops_per_image
from .image_ops import Normalize
from .locality import LocalityBias

# The key of the training clock in every log entry (`trainer_state.json`'s `log_history`).
TRAINING_SECONDS = "training_seconds"


class VTLMTrainer(Trainer):
    """A `Trainer` whose batches arrive as uint8 `images` and are augmented on the device, in whole batches.

    Training batches go through `augmentation` (crop, flip, RandAugment, erasing, Mixup/CutMix, label smoothing),
    seeded from (seed, global step, rank, micro-step) so a resumed run sees the same pixels as an uninterrupted one.
    Every batch is normalised by `self.normalize`, built from `processing_class` (the image processor published
    with the model), so training and evaluation see what the processor gives at inference. Label smoothing lives in
    the soft targets, so the Trainer's own label smoother is switched off. A Trainer that only evaluates needs no
    `augmentation`.

    Every log entry carries `training_seconds`: the wall time of training so far, summed over the processes of a
    resumed run (from the checkpoint's own log), which `train_runtime` covers only for the last process.

    With a `distillation` (`training.distillation`), the loss of a training batch also learns from its teacher, which
    sees the model's own augmented batch. Its feature guidance projections must already be attached to the model
    (`Distillation.attach`, done by `training.build.build_trainer`); every checkpoint saves them beside the model,
    and a resumed run loads them back.

    With a `locality_bias` (`training.locality`), every training step's attention adds that step's annealed
    neighbourhood bias; evaluation and saving never see it.
    """

    def __init__(
        self,
        *args,
        augmentation: BatchAugmentation | None = None,
        distillation: Distillation | None = None,
        locality_bias: LocalityBias | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.normalize = Normalize(self.processing_class.image_mean, self.processing_class.image_std)
        self.augmentation = augmentation
        self.distillation = distillation
        self.locality_bias = locality_bias
        self._loss_parts = {}  # name -> (sum, count) of a taught run's loss parts since the last training log
        if distillation is not None:  # never prepared by the accelerator: no DDP, no optimizer, no saving
            distillation.place(self.args.device, self.model.dtype)
        self.label_smoother = None
        self._micro_step = (-1, 0)  # (global step, micro-steps seen at that step) for gradient accumulation
        self._clock = None  # (time.monotonic() when this process started training, training seconds before it)
        self._image_flops = None

    def train(self, *args, **kwargs):
        self._clock = (time.monotonic(), None)
        return super().train(*args, **kwargs)

    def log(self, logs, start_time=None):
        if self._clock is not None:
            started, before = self._clock
            if before is None:  # the first log of this process: the resumed checkpoint's log is restored by now
                before = training_seconds(self.state.log_history) or 0.0
                self._clock = (started, before)
            logs = {**logs, TRAINING_SECONDS: round(before + time.monotonic() - started, 3)}  # not the caller's dict
        if "loss" in logs and self._loss_parts:  # a training log: the mean of each part over its micro-batches
            logs = {
                **logs,
                **{name: round(total.item() / count, 4) for name, (total, count) in self._loss_parts.items()},
            }
            self._loss_parts = {}
        super().log(logs, start_time)

    def image_flops(self) -> ImageFlops:
        """The forward and training FLOPs of one image of the model (`training.flops.flops_per_image`), counted once
        (about a second, on the meta device): what the Trainer's `total_flos` adds up and the run's record shows."""
        if self._image_flops is None:
            self._image_flops = self.count_image_flops(self.accelerator.unwrap_model(self.model))
        return self._image_flops

    def count_image_flops(self, model) -> ImageFlops:
        return flops_per_image(model.config)

    def floating_point_ops(self, inputs):
        """Training FLOPs of the batch: the Trainer's own estimate counts text tokens, 0 here."""
        return self.image_flops().training * len(inputs["images"])

    def get_decay_parameter_names(self, model):
        no_decay = set(self.accelerator.unwrap_model(model).no_weight_decay_parameter_names())
        return [name for name, _ in model.named_parameters() if name not in no_decay]

    def training_step(self, model, inputs, num_items_in_batch=None):
        step, micro_step = self._micro_step
        micro_step = micro_step + 1 if step == self.state.global_step else 0
        self._micro_step = (self.state.global_step, micro_step)
        inputs = self.training_inputs(inputs, micro_step)
        if self.locality_bias is None:
            return super().training_step(model, inputs, num_items_in_batch)
        with self.locality_bias.applied(self.state.global_step, self.state.max_steps):
            return super().training_step(model, inputs, num_items_in_batch)

    def training_inputs(self, inputs, micro_step):
        """The model's inputs for the uint8 training batch `inputs` at `micro_step` of this optimizer step: the
        augmented, normalised `pixel_values` and their soft-target `labels`."""
        seed = augmentation_seed(self.args.seed, self.state.global_step, self.args.process_index, micro_step)
        pixel_values, targets = self.augmentation(inputs["images"], inputs["labels"], seed, self.normalize)
        return {"pixel_values": pixel_values, "labels": targets}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.distillation is None or not model.training:  # evaluation keeps the plain loss on the labels
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        outputs = model(**inputs, output_hidden_states=self.distillation.needs_hidden_states)
        loss, parts = self.distillation.loss(outputs, inputs["pixel_values"], self.normalize, self.accelerator.autocast)
        for name, value in parts.items():  # summed on the device: read once a log, not once a step
            total, count = self._loss_parts.get(name, (0.0, 0))
            self._loss_parts[name] = (total + value, count + 1)
        return (loss, outputs) if return_outputs else loss

    def _save_checkpoint(self, model, trial):
        # Before the Trainer's own files: it writes trainer_state.json last, which marks the checkpoint complete.
        guidance = self._feature_guidance()
        if guidance is not None and self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            save_file({name: tensor.contiguous() for name, tensor in guidance.state_dict().items()},
                      os.path.join(folder, GUIDANCE_FILE))  # fmt: skip
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        guidance = self._feature_guidance()
        if guidance is not None:
            path = os.path.join(resume_from_checkpoint, GUIDANCE_FILE)
            if not os.path.isfile(path):
                raise ValueError(f"{resume_from_checkpoint} has no {GUIDANCE_FILE}: it was not saved by this run")
            guidance.load_state_dict(load_file(path, device=str(self.args.device)))

    def _feature_guidance(self):
        """The feature guidance projections attached to the model, or None."""
        return getattr(self.accelerator.unwrap_model(self.model), GUIDANCE_MODULE, None)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {"pixel_values": self.normalize(inputs["images"]), "labels": inputs["labels"]}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)


def training_seconds(log_history):
    """The run's training wall time so far: `training_seconds` of the last log entry that has it, or None."""
    return next((entry[TRAINING_SECONDS] for entry in reversed(log_history) if TRAINING_SECONDS in entry), None)


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
