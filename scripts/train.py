#!/usr/bin/env python
"""Train VTLM on CIFAR-100 (or any image-classification dataset in the same schema) with the HF Trainer.

    accelerate launch scripts/train.py                     # the headline run: vtlm-37m, 300 epochs
    python scripts/train.py --model_preset vtlm-5m --num_train_epochs 10
    python scripts/train.py recipes/madras1-vtlm37m.yaml   # every flag from one .json or .yaml file
    python scripts/train.py recipes/madras1-vtlm37m.yaml --dataset_name DIR   # flags after it replace the recipe's

The best epoch is selected on a validation split (the dataset's own, or one held out from train); the test split is
evaluated once, at the end.
"""

import logging
import os
import sys

from training.arguments import parse_arguments
from training.cli import USER_ERRORS, check_model_source, run_cli, setup_logging

logger = logging.getLogger(__name__)


def main(argv=None):
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    # Imported once the flags parse: `--help` and a mistyped flag answer without loading the model code, datasets and
    # the Trainer, which take seconds.
    import transformers
    from transformers import set_seed

    from modeling import build_image_processor
    from training.build import (
        build_augmentation,
        build_config,
        build_distillation,
        build_locality_bias,
        build_model,
        build_trainer,
    )
    from training.data import load_image_datasets
    from training.export import published_export_formats
    from training.flops import count_parameters, describe_compute
    from training.hub import check_can_publish, check_static_space, publish_command
    from training.metrics import describe_accuracy
    from training.model_card import write_model_card
    from training.rerun import SaveRunArguments, check_source_hold_out, prepare_output_dir, train_resumably
    from training.run_info import run_arguments, save_example_images, write_run_info

    model_args, data_args, augmentation_args, training_args, distillation_args = arguments
    if training_args.should_log:  # as the transformers examples do: the default log level "passive" means info here
        transformers.utils.logging.set_verbosity_info()
    setup_logging(training_args.get_process_log_level())

    # The token is used for the final upload only: the Trainer would pickle it into training_args.bin.
    hub_token, training_args.hub_token = training_args.hub_token, None
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    publish = {
        "hub_model_id": training_args.hub_model_id,
        "hub_vit_model_id": training_args.hub_vit_model_id,
        "space_id": training_args.space_id,
        "static_space_id": training_args.static_space_id,
        "private": training_args.hub_private_repo,
        "revision": training_args.hub_revision,
    }
    if model_args.model_name_or_path:  # a missing folder or an unreachable Hub said in seconds, before any work
        check_model_source(model_args.model_name_or_path)
    config = build_config(model_args, distillation_args)
    if push_to_hub:  # now, not after hours of training: the repo ids, the token, the route and the right to write
        formats = published_export_formats(config) if publish["hub_vit_model_id"] else ()
        check_static_space(publish["static_space_id"], publish["hub_vit_model_id"], formats)
        check_can_publish(
            publish["hub_model_id"],
            publish["hub_vit_model_id"],
            publish["space_id"],
            publish["revision"],
            hub_token,
            static_space_id=publish["static_space_id"],
        )

    recorded_arguments = run_arguments(arguments)
    previous = prepare_output_dir(training_args, recorded_arguments)
    if previous.finished:
        if not push_to_hub:
            logger.info(
                f"{training_args.output_dir} already holds this run, finished: nothing to do. Publish it with "
                f"`{publish_command(training_args.output_dir, **publish)}`, or pass --overwrite_output_dir to train "
                "it again."
            )
        elif training_args.process_index == 0:
            logger.info(f"{training_args.output_dir} already holds this run, finished: publishing it")
            publish_finished_run(training_args.output_dir, hub_token, publish)
        return
    if previous.checkpoint:
        logger.info(f"resuming from {previous.checkpoint}")

    if distillation_args.teacher_model_name_or_path:  # now, not after the dataset is decoded
        check_model_source(distillation_args.teacher_model_name_or_path)

    with training_args.main_process_first(desc="loading and decoding the dataset"):
        data = load_image_datasets(data_args, image_size=config.image_size, seed=training_args.seed)
    # The data says whether its validation split was held out; a teacher or a saved model (a pre-training included)
    # that trained on those images is refused.
    for flag, source in (
        ("teacher_model_name_or_path", distillation_args.teacher_model_name_or_path),
        ("model_name_or_path", model_args.model_name_or_path),
    ):
        if source:
            check_source_hold_out(flag, source, data_args, training_args.seed, data.validation_held_out)
    # Before the model is built: the Trainer seeds only in its __init__, after the weights are drawn.
    set_seed(training_args.seed)
    model = build_model(model_args, config, data.label_names)
    logger.info(f"{config.model_type} with {model.num_parameters():,} parameters, {config.num_labels} labels")
    # After the model, so its weights are a plain run's; before training, so a teacher with other labels stops it.
    distillation = build_distillation(distillation_args, config, data.label_names)

    trainer = build_trainer(
        model,
        training_args,
        data,
        build_augmentation(augmentation_args, config, training_args),
        build_image_processor(config.image_size),
        callbacks=[SaveRunArguments(recorded_arguments)],
        distillation=distillation,
        locality_bias=build_locality_bias(model_args, model),
    )
    train_result = train_resumably(trainer, previous)
    trainer.save_model()  # the epoch selected on validation, with its code files and preprocessor_config.json
    trainer.save_metrics("train", train_result.metrics)
    # The state is published: name the selected checkpoint without this machine's path to it.
    if trainer.state.best_model_checkpoint:
        trainer.state.best_model_checkpoint = os.path.basename(trainer.state.best_model_checkpoint)
    trainer.save_state()
    trainer.save_metrics("eval", trainer.evaluate())
    # The test split is seen once, by the selected model.
    test_metrics = trainer.evaluate(data.tensors("test"), metric_key_prefix="test")
    trainer.save_metrics("test", test_metrics)
    trainer.log_metrics("test", test_metrics)

    if trainer.is_world_process_zero():
        examples = save_example_images(training_args.output_dir, *data.examples("test"))
        compute = describe_compute(
            trainer.image_flops(),
            count_parameters(model.config),
            trainer.state.total_flos,
            distillation.teacher_forward_flops_per_image() if distillation else None,
        )
        write_run_info(
            training_args.output_dir, arguments, model.config, data, compute, examples, resumed_from=previous.checkpoint
        )
        if not push_to_hub:
            write_model_card(training_args.output_dir)
        else:  # renders the card itself, with links to the repo
            publish_finished_run(training_args.output_dir, hub_token, publish)
    logger.info(f"test {describe_accuracy(test_metrics, 'test')}")  # the last line of the run's log


def publish_finished_run(output_dir, token, publish):
    """`training.hub.publish_run`, whose failure says how to publish the finished run later."""
    from training.hub import publish_command, publish_run

    try:
        publish_run(output_dir, token=token, **publish)
    except USER_ERRORS as error:
        raise ValueError(
            f"{error}. The run itself is finished and saved in {output_dir}: publish it with "
            f"`{publish_command(output_dir, **publish)}`, or rerun this command."
        ) from error


if __name__ == "__main__":
    sys.exit(run_cli(main))
