"""The arguments of `scripts/train.py`, with VTLM's recipe as the defaults, and their parser.

This module imports only torch, PyYAML, transformers' `TrainingArguments` and parser, VTLM's config (its presets),
the image ops' policy names and `training.cli`'s flag parsing, so `--help` and a bad flag answer before the model
classes, `datasets` or the Trainer load.
"""

import argparse
import copy
import inspect
import logging
import math
import os
import sys
import textwrap
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from vtlm.modeling import PRESETS
from vtlm.modeling.configuration_vtlm import ATTENTION_INITIALIZERS

from .cli import given_flags, parse_flags, suggest_flags
from .image_ops import AUTO_AUGMENT_POLICIES

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    _argument_group_name = "model"  # a class attribute, not a field: HfArgumentParser's title of the group in --help
    model_preset: str | None = field(
        default="vtlm-37m",
        metadata={
            "help": f"Architecture to train from scratch, one of {sorted(PRESETS)}; none with --model_name_or_path, "
            "whose saved config is the architecture."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A saved VTLM folder or Hub id to fine-tune or continue from, instead of a preset."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Override config fields of the preset, e.g. 'hidden_size=64,num_hidden_layers=2'."},
    )
    drop_path_rate: float = field(
        default=0.1, metadata={"help": "Stochastic depth of the last block; DeiT and CIFAR ViT recipes use 0.1."}
    )
    hidden_dropout_prob: float = field(
        default=0.0,
        metadata={
            "help": "Dropout inside the blocks. The original model used 0.1; with Mixup/CutMix and stochastic depth, 0."
        },
    )

    attention_initializer: str | None = field(
        default=None,
        metadata={
            "help": "How the attention weights start (the config field): `normal`, `mimetic` (Trockman & Kolter "
            "2023; its constants are the config's `mimetic_*` fields) or `impulse` (Zheng et al. 2025: each head "
            "starts attending to one neighbour, through positions scaled up; `impulse_*` fields). Default: "
            "`mimetic` for a fresh model taught by --teacher_model_name_or_path (the best way found to learn from "
            "a teacher), the preset's `normal` otherwise. A model loaded with --model_name_or_path keeps its "
            "weights either way.",
            "choices": ATTENTION_INITIALIZERS,
        },
    )
    locality_bias: float = field(
        default=0.0,
        metadata={
            "help": "Add this to the attention logit from each patch token to one neighbour of its 3x3 window (each "
            "head its own neighbour, as impulse initialisation's) in every block, falling linearly to exactly 0 at "
            "--locality_bias_fraction of the training steps and absent after: a convolution's locality early on, "
            "and a plain ViT at the end (the saved model, its config and exports are exactly those of a run without "
            "it). Only in training steps, never in evaluation. 0: off."
        },
    )
    locality_bias_fraction: float = field(
        default=0.3, metadata={"help": "The share of the training steps over which --locality_bias falls to 0."}
    )

    def __post_init__(self):
        if self.model_preset not in PRESETS:
            raise ValueError(f"--model_preset must be one of {sorted(PRESETS)}, got {self.model_preset!r}")
        if self.model_name_or_path:  # its config is the architecture: record no preset the run did not use
            self.model_preset = None
        if self.attention_initializer not in (None, *ATTENTION_INITIALIZERS):
            raise ValueError(
                f"--attention_initializer must be one of {ATTENTION_INITIALIZERS}, got {self.attention_initializer!r}"
            )
        if not 0 <= self.locality_bias < math.inf:
            raise ValueError(f"--locality_bias must be >= 0 and finite, got {self.locality_bias}")
        if not 0 < self.locality_bias_fraction <= 1:
            raise ValueError(f"--locality_bias_fraction must be in (0, 1], got {self.locality_bias_fraction}")


CORRUPT_IMAGE_POLICIES = ("fail", "skip")


@dataclass
class DataArguments:
    """Which data to train and evaluate on. Names follow transformers' `run_image_classification.py`."""

    _argument_group_name = "data"

    dataset_name: str = field(
        default="uoft-cs/cifar100",
        metadata={
            "help": "A Hub dataset id, or a local folder in the same schema (e.g. one made with `hf download "
            "uoft-cs/cifar100 --repo-type dataset --local-dir DIR`). Both are read by the same `load_dataset` call."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration, if any."})
    dataset_display_name: str | None = field(
        default=None,
        metadata={
            "help": "What the model card and its model-index call the dataset. Default: the Hub id, or the local "
            "folder's name (a path of the training machine is never published)."
        },
    )
    image_column_name: str = field(default="img", metadata={"help": "The column holding the images."})
    label_column_name: str = field(
        default="fine_label", metadata={"help": "The ClassLabel column to predict (`label` for uoft-cs/cifar10)."}
    )
    coarse_label_column_name: str | None = field(
        default="coarse_label",
        metadata={"help": "The superclass column, for superclass accuracy; ignored when the dataset lacks it."},
    )
    validation_split_size: float = field(
        default=0.1,
        metadata={
            "help": "Images held out of train, stratified by label, when the dataset has no validation split: a "
            "fraction of train (below 1; 0.1 is 5,000 of CIFAR-100's 50,000) or a number of images. The split "
            "depends only on the seed."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many training images (after the validation hold-out)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many images in each of validation and test."}
    )
    corrupt_images: str = field(
        default="fail",
        metadata={
            "help": "What to do with an image that cannot be decoded: `fail` raises, naming its split and index; "
            "`skip` drops it with a warning.",
            "choices": CORRUPT_IMAGE_POLICIES,
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes that decode images (once; the result is cached)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where `datasets` keeps downloads and its cache."})

    def __post_init__(self):
        if self.corrupt_images not in CORRUPT_IMAGE_POLICIES:
            raise ValueError(f"corrupt_images must be one of {CORRUPT_IMAGE_POLICIES}, got {self.corrupt_images!r}")
        for name in ("dataset_name", "image_column_name", "label_column_name"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        size = self.validation_split_size
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not (0 < size < 1 or size == int(size) > 0):
            raise ValueError(f"validation_split_size must be a fraction in (0, 1) or a positive integer, got {size!r}")
        for name in ("max_train_samples", "max_eval_samples", "preprocessing_num_workers"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class AugmentationArguments:
    """The training-time augmentation recipe. The defaults are the usual ViT-from-scratch recipe on CIFAR-100
    (DeiT's ingredients with CIFAR's pad-and-crop); 0 (or False, or None) turns an ingredient off."""

    _argument_group_name = "augmentation"

    crop_padding: int = field(
        default=4,
        metadata={
            "help": "Zero-pad each side by this many pixels, then crop a random image-sized window (0: no crop). "
            "Pad-and-crop is the CIFAR standard: it shifts pixels without resampling them, where a RandomResizedCrop "
            "blurs 32x32 images for a zoom range that RandAugment's shear and translate already cover."
        },
    )
    random_resized_crop_scale: float | None = field(
        default=None,
        metadata={
            "help": "RandomResizedCrop instead of pad-and-crop (needs --crop_padding 0): a box of a random share of "
            "the image's area, from this value to 1, and of aspect ratio 3/4 to 4/3, resized bilinearly back to the "
            "image's size (torchvision's algorithm; the original model used 0.8). None: off."
        },
    )
    horizontal_flip: bool = field(default=True, metadata={"help": "Flip each image left-right with probability 0.5."})
    randaugment_num_ops: int = field(
        default=2,
        metadata={"help": "RandAugment rounds: in each, every image draws one of the 14 ops (0: no RandAugment)."},
    )
    randaugment_magnitude: float = field(
        default=9.0,
        metadata={
            "help": "RandAugment's mean magnitude on the 0-10 scale of the paper and timm (10: strongest); timm's `m`."
        },
    )
    randaugment_magnitude_std: float = field(
        default=0.5,
        metadata={
            "help": "Each applied op draws its magnitude from N(randaugment_magnitude, this), clipped to [0, 10]; "
            "timm's `mstd` (0: always randaugment_magnitude)."
        },
    )
    randaugment_prob: float = field(
        default=0.5,
        metadata={
            "help": "Probability that a round's op is applied to an image; timm's `p` (1: every round changes it)."
        },
    )
    auto_augment_policy: str | None = field(
        default=None,
        metadata={
            "help": "AutoAugment instead of RandAugment (needs --randaugment_num_ops 0): `cifar10`, the policy the "
            "paper learned on CIFAR-10, as torchvision's, with a sub-policy drawn per image. None: off."
        },
    )
    mixup_alpha: float = field(default=0.8, metadata={"help": "Mixup's lambda ~ Beta(alpha, alpha) (0: no Mixup)."})
    cutmix_alpha: float = field(default=1.0, metadata={"help": "CutMix's lambda ~ Beta(alpha, alpha) (0: no CutMix)."})
    mixup_prob: float = field(
        default=1.0, metadata={"help": "Probability that an image is mixed at all, by Mixup or CutMix (0: never)."}
    )
    mixup_switch_prob: float = field(
        default=0.5,
        metadata={"help": "When both Mixup and CutMix are on: probability that a mixed image uses CutMix."},
    )
    random_erasing_prob: float = field(
        default=0.25,
        metadata={"help": "Probability that a random box of each image is replaced by Gaussian noise (0: never)."},
    )

    def __post_init__(self):
        for name in ("crop_padding", "randaugment_num_ops", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if not 0 <= self.randaugment_magnitude <= 10:
            raise ValueError(f"`randaugment_magnitude` must be in [0, 10], got {self.randaugment_magnitude}.")
        if not 0 <= self.randaugment_magnitude_std < math.inf:  # timm's inf (uniform magnitudes) is not supported
            raise ValueError(
                f"`randaugment_magnitude_std` must be >= 0 and finite, got {self.randaugment_magnitude_std}."
            )
        for name in ("randaugment_prob", "mixup_prob", "mixup_switch_prob", "random_erasing_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        if self.random_resized_crop_scale is not None:
            if not 0 < self.random_resized_crop_scale <= 1:
                raise ValueError(
                    f"`random_resized_crop_scale` must be in (0, 1], got {self.random_resized_crop_scale}."
                )
            if self.crop_padding > 0:
                raise ValueError(
                    f"`random_resized_crop_scale` {self.random_resized_crop_scale} and `crop_padding` "
                    f"{self.crop_padding} are two crops: set `crop_padding` to 0 to use RandomResizedCrop."
                )
        if self.auto_augment_policy is not None:
            if self.auto_augment_policy not in AUTO_AUGMENT_POLICIES:
                raise ValueError(
                    f"`auto_augment_policy` must be one of {sorted(AUTO_AUGMENT_POLICIES)} or None, "
                    f"got {self.auto_augment_policy!r}."
                )
            if self.randaugment_num_ops > 0:
                raise ValueError(
                    f"`auto_augment_policy` {self.auto_augment_policy!r} and `randaugment_num_ops` "
                    f"{self.randaugment_num_ops} are two augmentation policies: set `randaugment_num_ops` to 0 to use "
                    "AutoAugment."
                )


DISTILLATION_TYPES = ("none", "soft", "hard")


# What feature guidance does, in the words of --feature_guidance_weight's help and of the card.
FEATURE_GUIDANCE = (
    "the model's patch tokens after each guided block, layer-normalised and projected by a Linear that exists only in "
    "training, are pulled (MSE) to the teacher's layer-normalised tokens at the same places in the image, at the "
    "matching depth (the teacher's token grid average-pooled, or resized, to the model's where the two differ)"
)


@dataclass
class DistillationArguments:
    """Teaching the model from a trained teacher (`training.distillation`). Giving only --teacher_model_name_or_path
    uses it the way that measured best on the project's proxy (docs/compare-teacher-30-epochs.md and
    docs/compare-teacher-100-epochs.md): feature guidance at weight 1 on every block, mimetic attention init, no
    output distillation. Each part turns off with 0 or `none`; they combine."""

    _argument_group_name = "distillation"

    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A trained image classifier (a run folder or Hub id, loaded with the Auto classes) that teaches "
            "the model. It must predict the dataset's labels, by the same names in the same order. It only teaches: "
            "the saved model is exactly its preset."
        },
    )
    teacher_trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the teacher's own code files when it has custom code that is not VTLM's (VTLM teachers load "
            "with this checkout's code)."
        },
    )
    feature_guidance_weight: float = field(
        default=1.0,
        metadata={"help": f"Weight of feature guidance: {FEATURE_GUIDANCE} (0: off)."},
    )
    feature_guidance_layers: list[int] | None = field(
        default=None,
        metadata={"help": "The model's blocks (0-based) that are guided, e.g. `3 7 11`. Default: every block."},
    )
    distillation_type: str = field(
        default="none",
        metadata={
            "help": "Distillation of the teacher's outputs through the model's one head (no distillation token, so a "
            "plain model still exports exactly): `soft` (KL to the teacher's softened probabilities), `hard` "
            "(cross-entropy to the teacher's top class), or `none`.",
            "choices": DISTILLATION_TYPES,
        },
    )
    distillation_alpha: float = field(
        default=0.5,
        metadata={"help": "The loss is (1 - alpha) x the label loss + alpha x the distillation loss (DeiT's 0.5)."},
    )
    distillation_temperature: float = field(
        default=1.0,
        metadata={"help": "Temperature tau of `soft` distillation; its loss is scaled by tau^2, as DeiT's."},
    )

    def __post_init__(self):
        if self.distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f"--distillation_type must be one of {DISTILLATION_TYPES}, got {self.distillation_type!r}")
        if not 0 <= self.distillation_alpha <= 1:
            raise ValueError(f"--distillation_alpha must be in [0, 1], got {self.distillation_alpha}")
        if not self.distillation_temperature > 0:
            raise ValueError(f"--distillation_temperature must be positive, got {self.distillation_temperature}")
        if not 0 <= self.feature_guidance_weight < math.inf:
            raise ValueError(f"--feature_guidance_weight must be >= 0 and finite, got {self.feature_guidance_weight}")
        if self.feature_guidance_layers is not None and any(layer < 0 for layer in self.feature_guidance_layers):
            raise ValueError(
                f"--feature_guidance_layers must be block indices >= 0, got {self.feature_guidance_layers}"
            )
        if self.teacher_model_name_or_path and self.feature_guidance_weight == 0 and self.distillation_type == "none":
            raise ValueError(
                "--teacher_model_name_or_path with --feature_guidance_weight 0 and --distillation_type none: the "
                "teacher would teach nothing; drop it, or turn one of them on"
            )


@dataclass
class VTLMTrainingArguments(TrainingArguments):
    """`TrainingArguments` with VTLM's recipe as the defaults; every Trainer flag still works.

    AdamW at lr 1e-3 for batch 512 (the DeiT rule, 5e-4 x batch/512, doubled as CIFAR ViT recipes do for small
    data), weight decay 0.05, a linear warm-up over the first 5% of steps (15 of the 300 epochs), cosine decay,
    gradient clipping at 1.0, label smoothing 0.1. Evaluated and saved every epoch; the best epoch on the validation
    split is kept.
    """

    # --help shows the fields declared here (VTLM's defaults and flags) in this group; the Trainer's other flags are
    # listed by --help_all only (`ArgumentParser`).
    _argument_group_name = "training (transformers' Trainer, with VTLM's defaults)"

    output_dir: str = field(default="runs/vtlm-37m-cifar100", metadata={"help": "Where checkpoints and results go."})
    hub_vit_model_id: str | None = field(
        default=None,
        metadata={
            "help": "With --push_to_hub: also publish the run's exact export to transformers' built-in ViT (and "
            "ONNX) to this `user/name`, for serving without custom code; for a layout the ViT cannot express, its "
            "ONNX graph alone (for transformers.js, optimum and onnxruntime)."
        },
    )
    space_id: str | None = field(
        default=None,
        metadata={
            "help": "With --push_to_hub: also publish a Gradio demo of the model to this Space (`user/name`), "
            "linked from the model card; it loads the --hub_vit_model_id export when there is one."
        },
    )
    static_space_id: str | None = field(
        default=None,
        metadata={
            "help": "With --push_to_hub and --hub_vit_model_id: also publish a static Space (`user/name`) that runs "
            "the export's ONNX graph in the visitor's browser with transformers.js (no server, no custom code)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Delete the checkpoints and results already in output_dir and start afresh. Without it, a rerun "
            "resumes the run there, and only when it was made with the same arguments."
        },
    )
    # 300: CCT's and DHVT's CIFAR-100 schedules; on the project's proxy, training the plain ViT longer reached each
    # accuracy at less compute than a teacher or pre-training did (README: "Which way, at equal compute").
    num_train_epochs: float = field(default=300.0, metadata={"help": "Total training epochs."})
    per_device_train_batch_size: int = field(default=512, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=1024, metadata={"help": "Batch size per device for evaluation."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(
        default=0.05, metadata={"help": "AdamW weight decay; never on biases, norms, positions or the CLS token."}
    )
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Linear warm-up: steps, or a fraction of all steps when below 1."}
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after warm-up."})
    label_smoothing_factor: float = field(default=0.1, metadata={"help": "Label smoothing of the training targets."})
    eval_strategy: str = field(default="epoch", metadata={"help": "Evaluate on the validation split every epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "Save a checkpoint every epoch."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep the best and the latest checkpoint."})
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Select the best epoch by validation accuracy (never by the test split)."}
    )
    metric_for_best_model: str | None = field(default="accuracy", metadata={"help": "Validation metric to select."})
    greater_is_better: bool | None = field(default=True, metadata={"help": "Higher accuracy is better."})
    logging_steps: float = field(
        default=0.005,
        metadata={"help": "Log the training loss every N steps, or every that fraction of all steps when below 1 "
                  "(0.005: 200 points on any run's curve, at least one every step of a short run)."},
    )  # fmt: skip
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Log non-finite losses as they are, so a diverging run is stopped."}
    )
    fp16: bool = field(
        default=True,
        metadata={
            "help": "fp16 mixed precision on a CUDA GPU, as the original model used; off with --bf16 or --no_fp16. "
            "A CPU trains in fp32 (and says so once when --fp16 was given)."
        },
    )
    bf16: bool = field(
        default=False,
        metadata={
            "help": "bf16 mixed precision instead of fp16, on a CUDA GPU that has it (Ampere or newer), or on the CPU "
            "with --use_cpu. Elsewhere the run trains in fp32 and says so once."
        },
    )
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "Publish the finished run to --hub_model_id once, at the end of training (never at each save): "
            "the selected weights, code, card, results and logs, no pickles or checkpoints. The token, the route to "
            "the Hub and the right to write are checked before the first step."
        },
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Batches carry uint8 pixel_values."})
    dataloader_num_workers: int = field(
        default=0, metadata={"help": "Worker processes that read batches; none needed for in-memory uint8 images."}
    )
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={"help": "Every parameter is used."})
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "Loggers: TensorBoard (installed with the package), or 'none'."}
    )

    def __post_init__(self):
        # Checked here, before any data is decoded; the Trainer would find some of these only when it starts.
        for name in ("hub_vit_model_id", "space_id", "static_space_id"):
            if getattr(self, name) and not self.push_to_hub:
                raise ValueError(f"--{name} is published with --push_to_hub only: add it, or publish the finished run "
                                 f"later with `scripts/push_to_hub.py --{name} ...`")  # fmt: skip
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not self.num_train_epochs > 0 and self.max_steps <= 0:
            raise ValueError(f"--num_train_epochs must be positive, got {self.num_train_epochs}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        # --bf16 replaces the default fp16. The Trainer gets what this host can run; the record keeps what was asked
        # for (`to_dict`), the same on every host.
        self.fp16 = self.fp16 and not self.bf16
        asked = ("fp16", "bf16", "dataloader_pin_memory", "use_cpu")
        self.asked_for = {name: getattr(self, name) for name in asked}
        # A launcher's processes (torchrun, `accelerate launch`) on a machine without CUDA train as one DDP run over
        # gloo: without `use_cpu` each would train alone, all into one output_dir.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            self.use_cpu = True
        # Mixed precision where this host runs it (`PRECISION_NEEDS`), fp32 elsewhere: fp16 and pinned memory on
        # CUDA only; bf16 on a CUDA GPU that has it, or on the CPU when --use_cpu was asked for with it (the Trainer
        # would refuse bf16 on a host without it).
        on_cuda = torch.cuda.is_available() and not self.use_cpu
        self.fp16 = self.fp16 and on_cuda
        self.bf16 = self.bf16 and (self.asked_for["use_cpu"] or (on_cuda and torch.cuda.is_bf16_supported()))
        self.dataloader_pin_memory = self.dataloader_pin_memory and on_cuda
        super().__post_init__()

    def to_dict(self):
        """The arguments as asked for, whatever the host: the recipe that `run_arguments.json`, the card and a
        rerun's comparison read."""
        return {**super().to_dict(), **self.asked_for}

    @property
    def precision(self):
        """The precision this host trains in: `fp16` or `bf16` (mixed), or `fp32`."""
        return _precision_name(self.fp16, self.bf16)

    @property
    def precision_asked(self):
        """The precision the arguments ask for: the default fp16 trains in fp32 on a CPU."""
        return _precision_name(self.asked_for["fp16"], self.asked_for["bf16"])

    def precision_fallback(self):
        """The one line that says this host trains in another precision than the one asked for, or None."""
        asked, used = self.precision_asked, self.precision
        if asked == used:
            return None
        needs = PRECISION_NEEDS[asked]
        return f"--{asked}: this host cannot train in {asked} ({asked} needs {needs}); training in {used} instead"


# Where each mixed precision trains; elsewhere a run trains in fp32. Said by the warning of a run that asked for one
# and by its model card.
PRECISION_NEEDS = {
    "fp16": "a CUDA GPU",
    "bf16": "a CUDA GPU with bf16, Ampere or newer, or --use_cpu",
}


def _precision_name(fp16, bf16):
    return "fp16" if fp16 else "bf16" if bf16 else "fp32"


@dataclass
class PretrainingArguments:
    """Masked image modelling (`scripts/pretrain.py`), as MAE (He et al. 2022) and transformers' `ViTMAEConfig` name
    it. The decoder exists only in pre-training; MAE found a narrow decoder enough (its fine-tuning accuracy barely
    moves between 1 and 8 blocks), so the default is half of vtlm-37m's width, 4 blocks."""

    _argument_group_name = "pre-training (masked image modelling)"

    mask_ratio: float = field(default=0.75, metadata={"help": "Share of each image's patches hidden from the encoder."})
    norm_pix_loss: bool = field(
        default=True,
        metadata={"help": "Predict each patch's pixels normalised by their own mean and std (MAE's best setting)."},
    )
    decoder_hidden_size: int = field(default=256, metadata={"help": "Width of the decoder's blocks."})
    decoder_num_hidden_layers: int = field(default=4, metadata={"help": "Blocks of the decoder."})
    decoder_num_attention_heads: int = field(default=8, metadata={"help": "Attention heads of the decoder's blocks."})
    decoder_intermediate_size: int = field(default=1024, metadata={"help": "MLP width of the decoder's blocks."})

    def __post_init__(self):
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"--mask_ratio must be between 0 and 1, got {self.mask_ratio}")


PRETRAINING_ARGUMENT_CLASSES = (
    ModelArguments,
    DataArguments,
    AugmentationArguments,
    VTLMTrainingArguments,
    PretrainingArguments,
)
# `scripts/pretrain.py`'s recipe where it differs from train.py's: Gani et al.'s (BMVC 2022) 200 epochs of
# pre-training on CIFAR-100 itself (fine-tuned for 100 after: README), MAE's optimiser (lr 1.5e-4 x batch / 256 at batch
# 512, AdamW betas (0.9, 0.95), weight decay 0.05, 5% warm-up, cosine), no stochastic depth, and crop and flip only
# (MAE's augmentation; CIFAR's pad-and-crop rather than its RandomResizedCrop, for the reason
# `AugmentationArguments.crop_padding` gives). No evaluation: pre-training reads the training split only.
PRETRAINING_DEFAULTS = {
    "output_dir": "runs/vtlm-37m-mae",
    "num_train_epochs": 200,
    "learning_rate": 3e-4,
    "adam_beta2": 0.95,
    "drop_path_rate": 0.0,
    "randaugment_num_ops": 0,
    "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0,
    "random_erasing_prob": 0.0,
    "label_smoothing_factor": 0.0,
    "eval_strategy": "no",
    "load_best_model_at_end": False,
    "metric_for_best_model": None,
    "greater_is_better": None,
    "save_total_limit": 1,
}


ARGUMENT_CLASSES = (ModelArguments, DataArguments, AugmentationArguments, VTLMTrainingArguments, DistillationArguments)


class RunArguments(NamedTuple):
    """A run's argument groups, as `parse_arguments` returns them: `scripts/train.py`'s have `distillation_args`,
    `scripts/pretrain.py`'s `pretraining_args`; the other is None."""

    model_args: ModelArguments
    data_args: DataArguments
    augmentation_args: AugmentationArguments
    training_args: VTLMTrainingArguments
    distillation_args: DistillationArguments | None = None
    pretraining_args: PretrainingArguments | None = None


RECIPE_SUFFIXES = (".json", ".yaml", ".yml")
USAGE = "%(prog)s [RECIPE.yaml] [--flag value ...]"
RECIPE_HELP = (
    "RECIPE.yaml (optional, first): flag values from a .yaml or .json file (recipes/), replaced by the flags after "
    "it. Every flag also takes dashes: --num-train-epochs."
)
# --help's groups, in this order: what the script is for first (pre-training's masking and decoder), the rest as
# train.py reads them. The Trainer's other flags come last, with --help_all only.
HELP_ORDER = (
    PretrainingArguments,
    ModelArguments,
    DataArguments,
    AugmentationArguments,
    DistillationArguments,
    VTLMTrainingArguments,
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """transformers' help formatter (each flag with its default) that keeps the description's lines as written, and
    names each flag once: its dashed twin (`--num-train-epochs`) is said once, in the description."""

    def _format_action_invocation(self, action):
        if len(action.option_strings) > 1 and action.option_strings[0].startswith("--"):
            action = copy.copy(action)
            action.option_strings = action.option_strings[:1]
        return super()._format_action_invocation(action)

    def _get_help_string(self, action):
        if isinstance(action, argparse._StoreFalseAction):  # `--no_X`: its "default" is X's, said beside X
            return action.help
        return super()._get_help_string(action)

    def _split_lines(self, text, width):  # `uoft-cs/cifar100` and `--flag_names` kept whole on one line
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class HelpAction(argparse.Action):
    """`--help` (the project's flags) or, with `full`, `--help_all` (the Trainer's other flags too); exits 0."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None, full=False):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)
        self.full = full

    def __call__(self, parser, namespace, values, option_string=None):
        parser._print_message(parser.format_help(full=self.full), sys.stdout)
        parser.exit()


class ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` over VTLM's argument classes, whose `--help` a reader can use: the script's description
    and its usage with a recipe file first, then the project's flags, one group per argument class (its
    `_argument_group_name`, in `HELP_ORDER`; of `VTLMTrainingArguments`, the fields it declares itself). The
    Trainer's other flags parse as ever, and `--help_all` lists them too, titled as such."""

    def __init__(self, argument_classes, prog=None, description=None):
        super().__init__(
            argument_classes,
            prog=prog,
            usage=USAGE,
            description="\n\n".join(part for part in ((description or "").strip(), _fill(RECIPE_HELP)) if part),
            formatter_class=HelpFormatter,
            add_help=False,
            exit_on_error=False,
        )
        self.add_argument("-h", "--help", action=HelpAction, help="Show this help: the project's flags, and exit.")
        self.add_argument(
            "--help_all", action=HelpAction, full=True, help="Show every flag, the Trainer's too, and exit."
        )
        titles = {cls._argument_group_name: cls for cls in HELP_ORDER}
        self.trainer_flags = self.add_argument_group("the Trainer's other flags (transformers' TrainingArguments)")
        for group in self._action_groups:
            if titles.get(group.title) is VTLMTrainingArguments:
                own = set(inspect.get_annotations(VTLMTrainingArguments))
                self.trainer_flags._group_actions = [a for a in group._group_actions if a.dest not in own]
                group._group_actions = [a for a in group._group_actions if a.dest in own]
        # The project's groups first, then argparse's own (the two help flags), then the Trainer's other flags.
        order = [*HELP_ORDER, None]
        self._action_groups.sort(
            key=lambda group: len(order) if group is self.trainer_flags else order.index(titles.get(group.title))
        )

    def format_help(self, full=True):
        """The help text; without `full`, the Trainer's other flags are only counted, and named by --help_all."""
        groups, epilog = self._action_groups, self.epilog
        if not full:
            self._action_groups = [group for group in groups if group is not self.trainer_flags]
            count = len({action.dest for action in self.trainer_flags._group_actions})
            self.epilog = _fill(
                f"The Trainer's other {count} flags (transformers' TrainingArguments: --seed, --max_steps, "
                "--hub_model_id, --gradient_accumulation_steps, ...) work too: --help_all lists them."
            )
        try:
            return super().format_help()
        finally:
            self._action_groups, self.epilog = groups, epilog


def _fill(text):
    return textwrap.fill(text, 79, break_on_hyphens=False)


def parse_arguments(argv, argument_classes=ARGUMENT_CLASSES, defaults=None, prog=None, description=None):
    """The `RunArguments` of `argument_classes` (`ARGUMENT_CLASSES` or `PRETRAINING_ARGUMENT_CLASSES`) from
    command-line flags, optionally after a recipe file (`.json` or `.yaml`) whose values the flags replace:
    `train.py recipes/madras1-vtlm37m.yaml --dataset_name DIR`. `defaults` replace the classes' own
    (`PRETRAINING_DEFAULTS`), and the recipe file replaces those. `--help` shows `description` and `prog`, by
    default the calling script's docstring and file name.

    A precision asked for (`--fp16`, `--bf16`, or a recipe's value other than the default) that this host cannot
    train in is said in one warning, by the main process; the default fp16 on a CPU is not."""
    caller = sys._getframe(1).f_globals  # the script whose main() parses: its docstring describes it
    parser = ArgumentParser(
        argument_classes,
        prog=prog or os.path.basename(caller.get("__file__") or sys.argv[0]),
        description=caller.get("__doc__") if description is None else description,
    )
    parser.set_defaults(**(defaults or {}))
    given = set()
    if argv and argv[0].endswith(RECIPE_SUFFIXES) and not argv[0].startswith("-"):
        recipe = read_recipe(argv[0], parser)
        given = {name for name, value in recipe.items() if value != parser.get_default(name)}
        parser.set_defaults(**recipe)
        argv = argv[1:]
    # Flags first, as one line for any mistake: HfArgumentParser finds an unknown flag only after building every
    # dataclass, and building TrainingArguments loads transformers' integrations (seconds).
    try:
        parse_flags(parser, argv)
    except ValueError as error:  # a recipe after the flags is an unknown argument to argparse: say where it goes
        named = str(error).replace(";", " ").split()
        misplaced = [argument for argument in argv if argument.endswith(RECIPE_SUFFIXES) and argument in named]
        if misplaced:
            raise ValueError(f"{misplaced[0]}: a recipe file comes first, before any flag "
                             f"(`train.py {misplaced[0]} --flag value`)") from None  # fmt: skip
        raise
    groups = {type(group): group for group in parser.parse_args_into_dataclasses(argv)}
    arguments = RunArguments(*(groups.get(cls) for cls in (*ARGUMENT_CLASSES, PretrainingArguments)))
    given |= given_flags(parser, argv)
    training_args = arguments.training_args
    fallback = training_args.precision_asked in given and training_args.precision_fallback()
    if fallback and training_args.process_index == 0:
        logger.warning(fallback)
    return arguments


def read_recipe(path, parser):
    """A recipe file's `{flag name: value}`, every name one of `parser`'s."""
    with open(path) as file:
        try:
            recipe = yaml.safe_load(file)  # JSON is YAML
        except yaml.MarkedYAMLError as error:  # where and what, not the parser's stack
            mark = error.problem_mark
            raise ValueError(f"{path} is not valid YAML: line {mark.line + 1}, column {mark.column + 1}: "
                             f"{error.problem}") from None  # fmt: skip
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe maps train.py's flag names to values")
    if unknown := [name for name in recipe if name not in {action.dest for action in parser._actions}]:
        raise suggest_flags([f"--{name}" for name in unknown], parser, where=path)
    return recipe
