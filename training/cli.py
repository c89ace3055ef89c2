"""What every script shares: one log format and level for every library's loggers, and short errors for a user's
mistakes."""

import argparse
import difflib
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

import transformers

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level=logging.INFO):
    """Log at `level` (a `logging` level) from every library a run uses, in one format, each line once."""
    import datasets  # here, not above: `run_cli` and `suggest_flags` answer `--help` before datasets loads (a second)

    logging.basicConfig(format=LOG_FORMAT, level=level)
    logging.getLogger().setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    datasets.utils.logging.disable_propagation()  # datasets has its own handler: the root one would print it again
    transformers.utils.logging.set_verbosity(level)
    # At info level transformers prints the whole config (100 labels) at every load; the rest of its lines stay.
    logging.getLogger("transformers.configuration_utils").setLevel(max(level, logging.WARNING))
    # ... and the whole image processor at every load; its "loading" and "saved in" lines stay.
    logging.getLogger("transformers.image_processing_base").addFilter(_not_an_image_processor_dump)


def _not_an_image_processor_dump(record):
    """False for transformers' info line `Image processor <class> {<its JSON>}`."""
    message = record.getMessage()
    return not (message.startswith("Image processor ") and message.rstrip().endswith("}"))


# What a user's mistake raises: a bad flag or value (ValueError), a missing or unreadable file or folder, an
# unreachable Hub (OSError and its FileNotFoundError, ConnectionError). Anything else is a bug, and keeps its traceback.
USER_ERRORS = (ValueError, OSError)


class Stopped(KeyboardInterrupt):
    """A script stopped by a signal: Ctrl-C's SIGINT, or the SIGTERM that a cluster scheduler (Slurm, Kubernetes) or a
    launcher sends before it kills a job. Its message says what was kept and how to go on; `run_cli` ends the script
    with exit status 128 + `signum` (130, 143), as a shell reports a process killed by that signal."""

    def __init__(self, message="", signum=signal.SIGINT):
        super().__init__(message)
        self.signum = signum


# How long a launcher's other processes wait before they say a mistake of theirs: the first process meets the same
# mistake within it, says it, and the launcher then ends the others.
OTHER_PROCESS_WAIT_S = 5.0


def run_cli(main, argv=None):
    """Run a script's `main(argv)`: a user's mistake ends with `error: <message>` and exit status 2, Ctrl-C with
    `interrupted` and SIGTERM with `terminated` (and what the script says of it: `training.rerun.train_resumably`
    names the checkpoint to resume from) and exit status 130 or 143, no traceback.

    Under a launcher (torchrun, `accelerate launch`: one process per device, numbered in LOCAL_RANK), each process
    meets the same mistake or signal, and only the first on each machine prints it. Another process says a mistake
    only if it is still running `OTHER_PROCESS_WAIT_S` later: then the mistake was its own, and the first process
    did not end the run by meeting it too.

    Set `VTLM_TRACEBACK=1` to see the traceback anyway."""
    first = os.environ.get("LOCAL_RANK", "0") == "0"
    with terminated_as_interrupted():
        try:
            main(argv)
        except USER_ERRORS as error:
            if os.environ.get("VTLM_TRACEBACK") == "1":
                raise
            if not first:
                try:
                    time.sleep(OTHER_PROCESS_WAIT_S)
                except KeyboardInterrupt:  # the launcher ends it: the first process failed, and said why
                    return 2
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as interrupt:  # what it stopped, and how to go on, not the stack it stopped in
            if os.environ.get("VTLM_TRACEBACK") == "1":
                raise
            signum = getattr(interrupt, "signum", signal.SIGINT)
            word = "terminated" if signum == signal.SIGTERM else "interrupted"
            if first:
                print(f"{word}: {interrupt}" if str(interrupt) else word, file=sys.stderr)
            return 128 + signum
    return 0


@contextmanager
def terminated_as_interrupted():
    """SIGTERM raises `Stopped` as Ctrl-C raises KeyboardInterrupt, so that it ends a script with a line and 143, not
    silently, where SIGTERM has its default action (not where the parent ignores it) and in the main thread."""

    def stop(signum, frame):
        raise Stopped(signum=signum)

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def parse_flags(parser, argv):
    """`parser.parse_known_args(argv)` as every script parses its flags: a mistyped flag is named with the closest
    known one, a bad value or a missing argument is one `ValueError` line, never argparse's usage and exit."""

    def error(message):
        raise ValueError(f"{message}; see --help")

    parser.error = error  # argparse calls it for a missing argument even with exit_on_error=False (Python < 3.12)
    flags = {option for action in parser._actions for option in action.option_strings}
    argv = [underscored_flag(argument, flags) for argument in argv]
    parser.allow_abbrev = False  # `--lr` is a mistyped flag, not an ambiguous abbreviation of five
    for action in parser._actions:  # HfArgumentParser gives a bool's `--no_` flag the help of the flag itself
        if action.option_strings and action.option_strings[0].startswith("--no_") and action.const is False:
            action.help = f"Turn --{action.dest} off."
    try:
        namespace, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as error:
        raise ValueError(f"{error}; see --help") from None
    if unknown:
        raise suggest_flags(unknown, parser)
    return namespace


def given_flags(parser, argv):
    """The names (dests) of `parser`'s arguments that `argv` sets, whatever the value: `--fp16` counts, though fp16
    is on by default. `argv` is one that `parse_flags` accepted."""
    unset = object()
    flags = {option for action in parser._actions for option in action.option_strings}
    argv = [underscored_flag(argument, flags) for argument in argv]
    # argparse fills in a default only where the namespace lacks the name: what it leaves unset was not given.
    names = {action.dest for action in parser._actions if action.dest != argparse.SUPPRESS}
    namespace, _ = parser.parse_known_args(argv, argparse.Namespace(**dict.fromkeys(names, unset)))
    return {name for name, value in vars(namespace).items() if value is not unset}


def underscored_flag(argument, flags):
    """`--hub-model-id` (or `--hub-model-id=x`) as `--hub_model_id` where only that is one of `flags`: transformers'
    parser takes both spellings of every flag, so every script does."""
    name, equals, value = argument.partition("=")
    underscored = "--" + name[2:].replace("-", "_")
    if name.startswith("--") and name not in flags and underscored in flags:
        return underscored + equals + value
    return argument


# The names other training scripts use for the flags this project names as transformers does.
OTHER_TOOLS_NAMES = {
    "--lr": "--learning_rate",
    "--epochs": "--num_train_epochs",
    "--batch_size": "--per_device_train_batch_size",
    "--bs": "--per_device_train_batch_size",
    "--wd": "--weight_decay",
    "--model": "--model_preset",
    "--data": "--dataset_name",
    "--dataset": "--dataset_name",
    "--output": "--output_dir",
}


def suggest_flags(unknown, parser, where=None):
    """The error for the arguments `parser` does not know (`unknown`, from `parse_known_args`), with the closest known
    flag for each; `where` names the file they came from."""
    known = [option for action in parser._actions for option in action.option_strings if option not in ("-h", "--help")]
    hints = []
    for argument in unknown:
        name = argument.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6) if argument.startswith("-") else []
        if OTHER_TOOLS_NAMES.get(name) in known:  # a name from timm's or PyTorch's example scripts
            close = [OTHER_TOOLS_NAMES[name]]
        hints.append(f"{argument} (did you mean {close[0]}?)" if close else argument)
    return ValueError(f"{where + ': ' if where else ''}unknown argument(s): {' '.join(hints)}; see --help")
