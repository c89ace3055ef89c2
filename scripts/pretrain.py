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

from vtlm.training.arguments import PRETRAINING_ARGUMENT_CLASSES, PRETRAINING_DEFAULTS, parse_arguments
from vtlm.training.cli import run_cli
from vtlm.training.run import TrainingRun

logger = logging.getLogger(__name__)


class PretrainingRun(TrainingRun):
    """An encoder pre-trained by masked image modelling on the training split; its folder keeps the encoder alone."""

    logger = logger

    def build_config(self):
        from vtlm.training.build import build_config
        from vtlm.training.pretraining import check_maskable
        from vtlm.training.run_record import same_data_flags

        model_args, data_args, training_args = (
            self.arguments.model_args, self.arguments.data_args, self.arguments.training_args
        )  # fmt: skip
        if training_args.push_to_hub:
            raise ValueError("--push_to_hub: publish the fine-tuned model (scripts/train.py), not its pre-training")
        if model_args.model_name_or_path:
            raise ValueError("--model_name_or_path: pre-training starts from a preset (--model_preset)")
        config = build_config(model_args)
        check_maskable(config)
        if model_args.locality_bias or config.attention_initializer == "impulse":  # hidden patches leave holes in it
            raise ValueError(
                "--locality_bias and --attention_initializer impulse shape attention on the full grid of patch "
                "tokens, which masked image modelling hides most of: use them when fine-tuning (scripts/train.py)"
            )
        # On the data it was pre-trained on, with the same images held out for validation.
        folder = shlex.quote(training_args.output_dir)
        flags = same_data_flags(data_args, training_args)
        self.fine_tune = " ".join(["python scripts/train.py --model_name_or_path", folder, *flags])
        return config

    def finished(self):
        logger.info(
            f"{self.arguments.training_args.output_dir} already holds this pre-training, finished: fine-tune it with "
            f"`{self.fine_tune}`, or pass --overwrite_output_dir to pre-train again."
        )

    def build_trainer(self, config, data, callbacks):
        from vtlm.modeling import build_image_processor
        from vtlm.training.build import build_augmentation
        from vtlm.training.pretraining import VTLMForMaskedImageModeling, build_pretraining_trainer

        arguments, self.config = self.arguments, config
        config.id2label = data.id2label
        config.label2id = data.label2id
        self.model = model = VTLMForMaskedImageModeling(config, arguments.pretraining_args)
        logger.info(
            f"masked image modelling of {model.vtlm.num_parameters():,} encoder parameters "
            f"(decoder {model.num_parameters() - model.vtlm.num_parameters():,}, pre-training only)"
        )
        self.image_processor = build_image_processor(config.image_size)
        return build_pretraining_trainer(
            model,
            arguments.training_args,
            data,
            build_augmentation(arguments.augmentation_args, config, arguments.training_args),
            self.image_processor,
            callbacks=callbacks,
        )

    def save(self, trainer, train_result, data):
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()

    def record(self, trainer, data):
        from vtlm.training.flops import describe_compute

        output_dir = self.arguments.training_args.output_dir
        self.model.vtlm.save_pretrained(output_dir)  # the encoder alone: the decoder stays in checkpoints
        self.image_processor.save_pretrained(output_dir)
        compute = describe_compute(trainer.image_flops(), self.model.vtlm.num_parameters(), trainer.state.total_flos)
        return {"config": self.config, "compute": compute}

    def write_card(self):
        from vtlm.training.model_card import write_pretraining_card

        write_pretraining_card(self.arguments.training_args.output_dir)

    def last_line(self):
        return f"pre-trained {self.arguments.training_args.output_dir}: fine-tune it with `{self.fine_tune}`"


def main(argv=None):
    arguments = parse_arguments(
        sys.argv[1:] if argv is None else argv, PRETRAINING_ARGUMENT_CLASSES, PRETRAINING_DEFAULTS
    )
    PretrainingRun(arguments).run()


if __name__ == "__main__":
    sys.exit(run_cli(main))
