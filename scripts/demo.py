#!/usr/bin/env python
"""Try a VTLM model in the browser: a Gradio app with the top-5 classes and what the model attended to.

    python scripts/demo.py runs/vtlm-37m                  # then open http://127.0.0.1:7860
    python scripts/demo.py you/vtlm-37m --host 0.0.0.0 --port 8080

The app is `space/app.py`, the same file that `push_to_hub.py --space_id` publishes as the demo Space. Its
examples are the run's own example images (the model card's), from the folder or the Hub repository. Needs Gradio:
`pip install -e ".[demo]"`.
"""

import argparse
import importlib.util
import logging
import socket
import sys
from pathlib import Path

from vtlm.training.cli import parse_flags, run_cli, setup_logging
from vtlm.training.run_record import EXAMPLES_DIR
from vtlm.training.sources import check_model_source, is_local

logger = logging.getLogger("demo")


def parse_arguments(argv):
    from vtlm.space.app import add_server_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="A Hub repository id (`user/name`) or a folder saved by scripts/train.py.")
    add_server_arguments(parser)
    return parse_flags(parser, argv)


def check_port_free(host, port):
    """Refuse, before the model loads, a `--port` out of range or one that something already listens on: Gradio would
    answer the first with a traceback and the second by naming its environment variable, not the flag."""
    if port is None:
        return
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket() as probe:
        try:
            probe.bind((host or "127.0.0.1", port))
        except OSError as error:
            raise ValueError(f"--port {port}: cannot serve there ({error.strerror}); pass another --port") from None


def example_images(model) -> list[Path]:
    """The example images of a run folder or Hub repository (`examples/*.png`); none where they cannot be had."""
    if is_local(model):
        return sorted(Path(model, EXAMPLES_DIR).glob("*.png"))
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(model, allow_patterns=["examples/*.png"])
    except Exception as error:  # offline, private or gone: the app works without examples
        logger.warning(f"no example images from {model}: {error}")
        return []
    return sorted(Path(folder, "examples").glob("*.png"))


def main(argv=None):
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    if importlib.util.find_spec("gradio") is None:
        raise ValueError("the demo needs Gradio: pip install -e '.[demo]'")
    check_model_source(args.model)
    check_port_free(args.host, args.port)
    setup_logging()
    from vtlm.space.app import Classifier, launch

    launch(Classifier(args.model), example_images(args.model), args.host, args.port)


if __name__ == "__main__":
    sys.exit(run_cli(main))
