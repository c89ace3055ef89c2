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

from vtlm.training.arguments import parse_arguments
from vtlm.training.cli import USER_ERRORS, run_cli
from vtlm.training.run import TrainingRun

logger = logging.getLogger(__name__)


class ClassifierRun(TrainingRun):
    """An image classifier trained from scratch, from a saved model or taught, tested once and published if asked."""

    logger = logger

    def build_config(self):
        from vtlm.training.build import build_config
        from vtlm.training.export import published_export_formats
        from vtlm.training.hub import check_can_publish, check_static_space
        from vtlm.training.sources import check_model_source

        model_args, training_args = self.arguments.model_args, self.arguments.training_args
        # The token is used for the final upload only: the Trainer would pickle it into training_args.bin.
        self.hub_token, training_args.hub_token = training_args.hub_token, None
        self.push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
        self.publish = {
            "hub_model_id": training_args.hub_model_id,
            "hub_vit_model_id": training_args.hub_vit_model_id,
            "space_id": training_args.space_id,
            "static_space_id": training_args.static_space_id,
            "private": training_args.hub_private_repo,
            "revision": training_args.hub_revision,
        }
        if model_args.model_name_or_path:  # a missing folder or an unreachable Hub said in seconds, before any work
            check_model_source(model_args.model_name_or_path)
        config = build_config(model_args, self.arguments.distillation_args)
        publish = self.publish
        if self.push_to_hub:  # now, not after hours of training: the repo ids, the token, the route, the right to write
            formats = published_export_formats(config) if publish["hub_vit_model_id"] else ()
            check_static_space(publish["static_space_id"], publish["hub_vit_model_id"], formats)
            check_can_publish(
                publish["hub_model_id"],
                publish["hub_vit_model_id"],
                publish["space_id"],
                publish["revision"],
                self.hub_token,
                static_space_id=publish["static_space_id"],
            )
        return config

    def finished(self):
        from vtlm.training.hub import publish_command

        output_dir = self.arguments.training_args.output_dir
        if not self.push_to_hub:
            logger.info(
                f"{output_dir} already holds this run, finished: nothing to do. Publish it with "
                f"`{publish_command(output_dir, **self.publish)}`, or pass --overwrite_output_dir to train it again."
            )
        elif self.arguments.training_args.process_index == 0:
            logger.info(f"{output_dir} already holds this run, finished: publishing it")
            publish_finished_run(output_dir, self.hub_token, self.publish)

    def build_trainer(self, config, data, callbacks):
        from vtlm.modeling import build_image_processor
        from vtlm.training.build import (
            build_augmentation,
            build_distillation,
            build_locality_bias,
            build_model,
            build_trainer,
        )

        arguments = self.arguments
        self.model = build_model(arguments.model_args, config, data.label_names)
        logger.info(f"{config.model_type} with {self.model.num_parameters():,} parameters, {config.num_labels} labels")
        # After the model, so its weights are a plain run's; before training, so a teacher with other labels stops it.
        self.distillation = build_distillation(arguments.distillation_args, config, data.label_names)
        return build_trainer(
            self.model,
            arguments.training_args,
            data,
            build_augmentation(arguments.augmentation_args, config, arguments.training_args),
            build_image_processor(config.image_size),
            callbacks=callbacks,
            distillation=self.distillation,
            locality_bias=build_locality_bias(arguments.model_args, self.model),
        )

    def save(self, trainer, train_result, data):
        trainer.save_model()  # the epoch selected on validation, with its code files and preprocessor_config.json
        trainer.save_metrics("train", train_result.metrics)
        # The state is published: name the selected checkpoint without this machine's path to it.
        if trainer.state.best_model_checkpoint:
            trainer.state.best_model_checkpoint = os.path.basename(trainer.state.best_model_checkpoint)
        trainer.save_state()
        trainer.save_metrics("eval", trainer.evaluate())
        # The test split is seen once, by the selected model.
        self.test_metrics = trainer.evaluate(data.tensors("test"), metric_key_prefix="test")
        trainer.save_metrics("test", self.test_metrics)
        trainer.log_metrics("test", self.test_metrics)

    def record(self, trainer, data):
        from vtlm.training.flops import count_parameters, describe_compute
        from vtlm.training.run_record import save_example_images

        examples = save_example_images(self.arguments.training_args.output_dir, *data.examples("test"))
        compute = describe_compute(
            trainer.image_flops(),
            count_parameters(self.model.config),
            trainer.state.total_flos,
            self.distillation.teacher_forward_flops_per_image() if self.distillation else None,
        )
        return {"config": self.model.config, "compute": compute, "examples": examples}

    def write_card(self):
        from vtlm.training.model_card import write_model_card

        output_dir = self.arguments.training_args.output_dir
        if not self.push_to_hub:
            write_model_card(output_dir)
        else:  # renders the card itself, with links to the repo
            publish_finished_run(output_dir, self.hub_token, self.publish)

    def last_line(self):
        from vtlm.training.metrics import accuracy_sentence

        return f"test {accuracy_sentence(self.test_metrics, 'test')}"


def main(argv=None):
    ClassifierRun(parse_arguments(sys.argv[1:] if argv is None else argv)).run()


def publish_finished_run(output_dir, token, publish):
    """`training.hub.publish_run`, whose failure says how to publish the finished run later."""
    from vtlm.training.hub import publish_command, publish_run

    try:
        publish_run(output_dir, token=token, **publish)
    except USER_ERRORS as error:
        raise ValueError(
            f"{error}. The run itself is finished and saved in {output_dir}: publish it with "
            f"`{publish_command(output_dir, **publish)}`, or rerun this command."
        ) from error


if __name__ == "__main__":
    sys.exit(run_cli(main))
