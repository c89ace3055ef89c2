"""Model and training arguments of `scripts/train.py`, with VTLM's recipe as the defaults."""

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from modeling import PRESETS


@dataclass
class ModelArguments:
    model_preset: str = field(
        default="vtlm-37m", metadata={"help": f"Architecture to train from scratch, one of {sorted(PRESETS)}."}
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
        metadata={"help": "Dropout inside the blocks. The seed used 0.1; with Mixup/CutMix and stochastic depth, 0."},
    )

    def __post_init__(self):
        if self.model_preset not in PRESETS:
            raise ValueError(f"--model_preset must be one of {sorted(PRESETS)}, got {self.model_preset!r}")


@dataclass
class VTLMTrainingArguments(TrainingArguments):
    """`TrainingArguments` with VTLM's recipe as the defaults; every Trainer flag still works.

    AdamW at lr 1e-3 for batch 512 (the DeiT rule, 5e-4 x batch/512, doubled as CIFAR ViT recipes do for small
    data), weight decay 0.05, 5 warm-up epochs out of 100, cosine decay, gradient clipping at 1.0, label smoothing
    0.1. Evaluated and saved every epoch; the best epoch on the validation split is kept.
    """

    output_dir: str = field(default="runs/vtlm-37m-cifar100", metadata={"help": "Where checkpoints and results go."})
    hub_vit_model_id: str | None = field(
        default=None,
        metadata={
            "help": "With --push_to_hub: also publish the run's exact export to transformers' built-in ViT (and "
            "ONNX) to this `user/name`, for serving without custom code."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Delete the checkpoints and results already in output_dir and start afresh. Without it, a rerun "
            "resumes the run there, and only when it was made with the same arguments."
        },
    )
    num_train_epochs: float = field(default=100.0, metadata={"help": "Total training epochs."})
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
        metadata={"help": "fp16 mixed precision on CUDA, as the seed used; off with --bf16, --no_fp16 or on a CPU."},
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
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not self.num_train_epochs > 0 and self.max_steps <= 0:
            raise ValueError(f"--num_train_epochs must be positive, got {self.num_train_epochs}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        # fp16 is the default on CUDA only: --bf16 replaces it, and a CPU trains in fp32.
        on_cuda = torch.cuda.is_available() and not self.use_cpu
        self.fp16 = self.fp16 and not self.bf16 and on_cuda
        self.dataloader_pin_memory = self.dataloader_pin_memory and on_cuda
        super().__post_init__()
