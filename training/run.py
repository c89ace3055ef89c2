"""A run of a training script, from its parsed flags to its record and card: the skeleton that `scripts/train.py` (an
image classifier) and `scripts/pretrain.py` (masked image modelling) share, as `TrainingRun.run`; each script's
subclass says what is its own.

This module imports only the logging setup: what a run needs loads in `run`, after the flags parsed, so that `--help`
and a bad flag answer at once.
"""

import logging

from .cli import setup_logging

logger = logging.getLogger(__name__)


class TrainingRun:
    """One run of the `RunArguments` `arguments`. `run` checks the output folder against a rerun, loads the data,
    refuses a saved model (a teacher, the model it starts from) that trained on its validation images, trains
    (resumably), and writes the run's record and card; a subclass builds the config and the trainer, saves what the
    run made, writes its card, and says what the run left."""

    logger = logger  # a script's own, so that the run's lines name it

    def __init__(self, arguments):
        self.arguments = arguments

    def build_config(self):
        """The model's config, after the flags that only this script refuses; before any work."""
        raise NotImplementedError

    def finished(self):
        """What to do when the output folder holds this run, finished."""
        raise NotImplementedError

    def build_trainer(self, config, data, callbacks):
        """The trainer of a model of `config` on `data`, with `callbacks`; the model's weights are drawn here."""
        raise NotImplementedError

    def save(self, trainer, train_result, data):
        """What every process does once `trainer` trained: save its results into the output folder."""
        raise NotImplementedError

    def record(self, trainer, data) -> dict:
        """What the main process saves once, and what the run's record adds: `training.run_record.write_run_info`'s
        `config`, `compute` and `examples`."""
        raise NotImplementedError

    def write_card(self):
        """Write the model card of the finished run (the main process)."""
        raise NotImplementedError

    def last_line(self) -> str:
        """The last line of the run's log."""
        raise NotImplementedError

    def run(self):
        import transformers
        from transformers import set_seed

        from .data import load_image_datasets
        from .rerun import SaveRunArguments, prepare_output_dir, train_resumably
        from .run_record import check_sources_hold_out, run_arguments, write_run_info
        from .sources import check_model_source

        arguments = self.arguments
        training_args = arguments.training_args
        if training_args.should_log:  # as the transformers examples do: the default level "passive" means info here
            transformers.utils.logging.set_verbosity_info()
        setup_logging(training_args.get_process_log_level())
        config = self.build_config()

        recorded = run_arguments(arguments)
        previous = prepare_output_dir(training_args, recorded)
        if previous.finished:
            self.finished()
            return
        if previous.checkpoint:
            self.logger.info(f"resuming from {previous.checkpoint}")
        teacher = arguments.distillation_args and arguments.distillation_args.teacher_model_name_or_path
        if teacher:  # now, not after the dataset is decoded
            check_model_source(teacher)

        with training_args.main_process_first(desc="loading and decoding the dataset"):
            data = load_image_datasets(arguments.data_args, image_size=config.image_size, seed=training_args.seed)
        # The data says whether its validation split was held out; a teacher or a saved model (a pre-training
        # included) that trained on those images is refused.
        validation_splits = check_sources_hold_out(arguments, data.validation_held_out)
        # Before the model is built: the Trainer seeds only in its __init__, after the weights are drawn.
        set_seed(training_args.seed)
        trainer = self.build_trainer(config, data, callbacks=[SaveRunArguments(recorded)])
        train_result = train_resumably(trainer, previous)
        self.save(trainer, train_result, data)
        if trainer.is_world_process_zero():
            record = self.record(trainer, data)
            write_run_info(
                training_args.output_dir,
                arguments,
                data=data,
                resumed_from=previous.checkpoint,
                validation_splits=validation_splits,
                **record,
            )
            self.write_card()
        self.logger.info(self.last_line())
