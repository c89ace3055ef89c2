"""What every script shares: one log format and level for every library's loggers, and short errors for a user's
mistakes."""

import difflib
import logging
import os
import sys

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
    # Without torchvision, ViTImageProcessor warns that it uses its PIL backend: the one this project wants there.
    logging.getLogger("transformers.utils.import_utils").addFilter(
        lambda record: "requires torchvision" not in record.getMessage()
    )


# What a user's mistake raises: a bad flag or value (ValueError), a missing or unreadable file or folder, an
# unreachable Hub (OSError and its FileNotFoundError, ConnectionError). Anything else is a bug, and keeps its traceback.
USER_ERRORS = (ValueError, OSError)


def run_cli(main, argv=None):
    """Run a script's `main(argv)`: a user's mistake ends with `error: <message>` and exit status 2, no traceback.

    Set `VTLM_TRACEBACK=1` to see the traceback anyway."""
    try:
        main(argv)
    except USER_ERRORS as error:
        if os.environ.get("VTLM_TRACEBACK") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def suggest_flags(unknown, parser):
    """The error for the arguments `parser` does not know (`unknown`, from `parse_known_args`), with the closest known
    flag for each."""
    known = [option for action in parser._actions for option in action.option_strings]
    hints = []
    for argument in unknown:
        close = difflib.get_close_matches(argument, known, n=1, cutoff=0.6) if argument.startswith("-") else []
        hints.append(f"{argument} (did you mean {close[0]}?)" if close else argument)
    return ValueError(f"unknown argument(s): {' '.join(hints)}; see --help")
