"""Everything a script needs to build a run from its arguments (`training.arguments`): config, model, augmentation
and the classifier's Trainer.

`scripts/train.py`, `scripts/pretrain.py` (its config and augmentation: its model and Trainer are
`training.pretraining`'s), `scripts/evaluate_model.py`, the benchmarks, the comparisons and the tests all build through
these functions, so a run is put together one way only.
"""

import difflib

import torch
from transformers import AutoConfig, AutoModelForImageClassification, TrainingArguments

from vtlm.modeling import VTLMConfig, VTLMForImageClassification

from .augmentation import BatchAugmentation
from .config_fields import field_names
from .data import collate_batch
from .distillation import Distillation, load_teacher
from .locality import LocalityBias
from .metrics import build_compute_metrics, preprocess_logits_for_metrics
from .trainer import StopOnNonFiniteLoss, VTLMTrainer

# Fields of the config that the recipe sets with flags of their own (`ModelArguments`), not --config_overrides.
RECIPE_CONFIG_FIELDS = ("drop_path_rate", "hidden_dropout_prob", "attention_initializer")
# How a fresh model taught by a teacher starts its attention, unless --attention_initializer says otherwise: the
# way found best to learn from a teacher (`training.arguments.DistillationArguments`).
TAUGHT_ATTENTION_INITIALIZER = "mimetic"


def build_config(model_args, distillation_args=None):
    """The preset's (or the saved model's) config with the recipe's regularisation, attention initialisation and
    `--config_overrides`.

    The labels are the dataset's, set by `build_model`: everything else is known before the data is loaded, so a
    bad override fails before any image is decoded.
    """
    recipe = {name: getattr(model_args, name) for name in RECIPE_CONFIG_FIELDS}
    if recipe["attention_initializer"] is None:
        taught = distillation_args is not None and distillation_args.teacher_model_name_or_path
        if taught and not model_args.model_name_or_path:
            recipe["attention_initializer"] = TAUGHT_ATTENTION_INITIALIZER
        else:  # the preset's, or the one a saved model (whose weights are loaded) was made with
            del recipe["attention_initializer"]
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=True, **recipe)
    else:
        config = VTLMConfig.from_preset(model_args.model_preset, **recipe)
    if model_args.config_overrides:
        apply_config_overrides(config, model_args.config_overrides)
    config.validate_architecture()  # update_from_string sets fields after construction
    return config


def apply_config_overrides(config, overrides):
    """Set `config`'s fields from `--config_overrides` (`key=value,key=value`): a bad pair, a field with a flag of its
    own or a field the config lacks (with the closest one) is a one-line `ValueError`. Validate the config after."""
    pairs = overrides.replace(" ", "").split(",")
    if any(pair.count("=") != 1 for pair in pairs):
        raise ValueError(f"--config_overrides: expected key=value,key=value, got {overrides!r}")
    overridden = {pair.partition("=")[0] for pair in pairs}
    if twice := sorted(overridden & set(RECIPE_CONFIG_FIELDS)):
        raise ValueError(f"--config_overrides: set {', '.join(twice)} with its own flag (--{twice[0]}), not here")
    names = field_names(config)
    if unknown := sorted(overridden - set(names)):
        close = difflib.get_close_matches(unknown[0], names, n=1)
        raise ValueError(
            f"--config_overrides: {', '.join(unknown)} is not a field of the config"
            f"{f' (did you mean {close[0]}?)' if close else ''}; the fields are {', '.join(names)}"
        )
    try:
        config.update_from_string(",".join(pairs))
    except ValueError as error:
        raise ValueError(f"--config_overrides {overrides!r}: {error}") from None


def build_model(model_args, config, label_names):
    """The model to train, predicting `label_names`: a fresh one for a preset, or the saved one.

    A saved model keeps every weight; only a new label set gets a fresh classifier. Any other shape change (from
    `--config_overrides`) is an error, never a silent re-initialisation.
    """
    new_labels = [config.id2label[index] for index in range(config.num_labels)] != list(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: index for index, name in enumerate(label_names)}
    if not model_args.model_name_or_path:
        return VTLMForImageClassification(config)
    return AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path, config=config, trust_remote_code=True, ignore_mismatched_sizes=new_labels
    )


def build_augmentation(augmentation_args, config, training_args):
    """The recipe's batch augmentation for `config`'s labels, with the training arguments' label smoothing in its
    soft targets."""
    return BatchAugmentation(
        augmentation_args, num_labels=config.num_labels, label_smoothing=training_args.label_smoothing_factor
    )


def sync_batch_norm(model, training_args):
    """`model` with every BatchNorm synchronised across processes when it trains on several GPUs: the statistics of
    the global batch, as one process with that batch would have (DHVT's reference syncs its patch embedding's;
    syncing all of them keeps a multi-GPU run equal to a one-GPU run). torch's `SyncBatchNorm` runs on CUDA only, so
    CPU (gloo) processes keep their own statistics. Saved weights are the same either way."""
    if training_args.world_size > 1 and training_args.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def build_distillation(distillation_args, config, label_names):
    """What the model learns from `--teacher_model_name_or_path` (a `Distillation`), or None without a teacher. The
    teacher is loaded and its labels checked against `label_names` here, before any training."""
    if not distillation_args.teacher_model_name_or_path:
        return None
    return Distillation(distillation_args, load_teacher(distillation_args, label_names), config)


def build_locality_bias(model_args, model):
    """The annealed neighbourhood attention bias of `--locality_bias` for `model`, or None when it is off."""
    if not model_args.locality_bias:
        return None
    return LocalityBias(model, model_args.locality_bias, model_args.locality_bias_fraction)


def build_trainer(
    model, training_args, data, augmentation, image_processor, callbacks=(), distillation=None, locality_bias=None
):
    """The `VTLMTrainer` of a training run: train on the train split, select on the validation split, both held in
    memory as uint8 tensors (`ImageDatasets.tensors`), normalised as `image_processor` normalises; taught by
    `distillation`'s teacher when there is one, its feature guidance projections trained with the model; with
    `locality_bias` (`build_locality_bias`) added to the attention of every training step while it lasts."""
    if distillation is not None:
        distillation.attach(model)
    return VTLMTrainer(
        model=sync_batch_norm(model, training_args),
        args=training_args,
        train_dataset=data.tensors("train"),
        eval_dataset=data.tensors("validation"),
        data_collator=collate_batch,
        compute_metrics=build_compute_metrics(data.fine_to_coarse),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        processing_class=image_processor,
        augmentation=augmentation,
        distillation=distillation,
        locality_bias=locality_bias,
        callbacks=[StopOnNonFiniteLoss(), *callbacks],
    )


def build_evaluation_trainer(model, image_processor, data, output_dir, batch_size):
    """A `VTLMTrainer` that only evaluates: the same batches, normalisation and metric as validation in training."""
    training_args = TrainingArguments(
        output_dir=output_dir,
        per_device_eval_batch_size=batch_size,
        report_to="none",
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    return VTLMTrainer(
        model=model,
        args=training_args,
        data_collator=collate_batch,
        compute_metrics=build_compute_metrics(data.fine_to_coarse),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        processing_class=image_processor,
    )
