#!/usr/bin/env python
"""Pre-train VTLM's encoder by masked image modelling (MAE) on a dataset's training split, then fine-tune it.

    accelerate launch scripts/pretrain.py                                   # vtlm-37m on CIFAR-100, 200 epochs
    accelerate launch scripts/train.py --model_name_or_path runs/vtlm-37m-mae --num_train_epochs 100 \
        --output_dir runs/vtlm-37m-mae-cifar100                             # fine-tune it as a classifier

Takes `train.py`'s model, data and Trainer flags, and the same seed holds out the same validation images: pre-training
reads the training split only, never the validation or test images. The folder it writes holds the encoder alone
(`VTLMModel`, no decoder), its record (`run_info.json`) and card; its checkpoints hold the decoder too, for resuming.
"""

import logging
import shlex
import sys

from training.arguments import PRETRAINING_ARGUMENT_CLASSES, PRETRAINING_DEFAULTS, parse_arguments
from training.cli import run_cli, setup_logging

logger = logging.getLogger(__name__)


def main(argv=None):
    arguments = parse_arguments(
        sys.argv[1:] if argv is None else argv, PRETRAINING_ARGUMENT_CLASSES, PRETRAINING_DEFAULTS
    )
    import transformers
    from transformers import set_seed

    from modeling import build_image_processor
    from training.build import build_augmentation, build_config, build_pretraining_trainer
    from training.data import load_image_datasets
    from training.flops import describe_compute
    from training.model_card import write_pretraining_card
    from training.pretraining import VTLMForMaskedImageModeling, check_maskable
    from training.rerun import SaveRunArguments, prepare_output_dir, same_data_flags, train_resumably
    from training.run_info import run_arguments, write_run_info

    model_args, data_args, augmentation_args, training_args, pretraining_args = arguments
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    setup_logging(training_args.get_process_log_level())
    if training_args.push_to_hub:
        raise ValueError("--push_to_hub: publish the fine-tuned model (scripts/train.py), not its pre-training")
    if model_args.model_name_or_path:
        raise ValueError("--model_name_or_path: pre-training starts from a preset (--model_preset)")
    config = build_config(model_args)
    check_maskable(config)
    if model_args.locality_bias or config.attention_initializer == "impulse":  # hidden patches leave holes in it
        raise ValueError(
            "--locality_bias and --attention_initializer impulse shape attention on the full grid of patch tokens, "
            "which masked image modelling hides most of: use them when fine-tuning (scripts/train.py)"
        )

    recorded_arguments = run_arguments(arguments)
    previous = prepare_output_dir(training_args, recorded_arguments)
    # On the data it was pre-trained on, with the same images held out for validation.
    fine_tune = " ".join(["python scripts/train.py --model_name_or_path", shlex.quote(training_args.output_dir),
                          *same_data_flags(data_args, training_args)])  # fmt: skip
    if previous.finished:
        logger.info(
            f"{training_args.output_dir} already holds this pre-training, finished: fine-tune it with `{fine_tune}`, "
            "or pass --overwrite_output_dir to pre-train again."
        )
        return
    if previous.checkpoint:
        logger.info(f"resuming from {previous.checkpoint}")

    with training_args.main_process_first(desc="loading and decoding the dataset"):
        data = load_image_datasets(data_args, image_size=config.image_size, seed=training_args.seed)
    config.id2label = data.id2label
    config.label2id = data.label2id
    set_seed(training_args.seed)  # before the weights are drawn
    model = VTLMForMaskedImageModeling(config, pretraining_args)
    logger.info(
        f"masked image modelling of {model.vtlm.num_parameters():,} encoder parameters "
        f"(decoder {model.num_parameters() - model.vtlm.num_parameters():,}, pre-training only)"
    )
    image_processor = build_image_processor(config.image_size)
    trainer = build_pretraining_trainer(
        model,
        training_args,
        data,
        build_augmentation(augmentation_args, config, training_args),
        image_processor,
        callbacks=[SaveRunArguments(recorded_arguments)],
    )
    train_result = train_resumably(trainer, previous)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        model.vtlm.save_pretrained(training_args.output_dir)  # the encoder alone: the decoder stays in checkpoints
        image_processor.save_pretrained(training_args.output_dir)
        compute = describe_compute(
            trainer.image_flops(),
            model.vtlm.num_parameters(),
            trainer.state.total_flos,
        )
        write_run_info(training_args.output_dir, arguments, config, data, compute, resumed_from=previous.checkpoint)
        write_pretraining_card(training_args.output_dir)
    logger.info(f"pre-trained {training_args.output_dir}: fine-tune it with `{fine_tune}`")


if __name__ == "__main__":
    sys.exit(run_cli(main))
