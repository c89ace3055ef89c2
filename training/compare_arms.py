"""The arms of a comparison (`scripts/compare.py`): `--arm "NAME=FLAGS"`, with `--pretrain "NAME=FLAGS"` and
`--match_compute "NAME=OTHER"` attached, parsed and checked before anything runs."""

import dataclasses
import os
import re
import shlex

from .arguments import RECIPE_SUFFIXES

# Flags of the scripts that the comparison sets for every run.
MANAGED_FLAGS = ("dataset_name", "label_column_name", "output_dir", "seed", "disable_tqdm", "model_name_or_path")
# Arms whose names share the text before " @ " are one way at several lengths: one line of the plot.
WAY_SEPARATOR = " @ "


@dataclasses.dataclass
class Arm:
    name: str
    text: str  # the arm's flags as given, for the report
    flags: list[str]  # a recipe file first, if any: train.py reads it, and the flags after it replace its values
    pretrain_flags: list[str] | None = None  # scripts/pretrain.py's flags of a pre-training stage; None: none
    match_compute: str | None = None  # train as many epochs as this arm's run of the same seed cost in all

    @property
    def way(self):
        return self.name.split(WAY_SEPARATOR)[0]


def parse_named_flags(flags):
    """`{name: value}` of `--name value` and `--name=value` tokens."""
    named, tokens = {}, list(flags)
    for index, token in enumerate(tokens):
        if token.startswith("--"):
            name, separator, value = token[2:].partition("=")
            if not separator and index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
                value = tokens[index + 1]
            named[name] = value
    return named


def check_unmanaged(flags, where):
    if managed := sorted(set(parse_named_flags(flags)) & set(MANAGED_FLAGS)):
        raise ValueError(f"{where}: --{', --'.join(managed)} is set by compare.py, not here")


def split_flags(text, where):
    flags = shlex.split(text)
    if flags and flags[0].endswith(RECIPE_SUFFIXES) and not os.path.isfile(flags[0]):
        raise FileNotFoundError(f"{where}: no recipe file {flags[0]}")
    check_unmanaged(flags, where)
    return flags


def parse_arm(text):
    """`"NAME=FLAGS"`, where FLAGS may start with a recipe file, as an `Arm`."""
    name, separator, flags_text = text.partition("=")
    if not separator or not name.strip():
        raise ValueError(f"--arm: expected NAME=FLAGS, got {text!r}")
    flags = split_flags(flags_text, f"--arm {name.strip()!r}")
    return Arm(name=name.strip(), text=flags_text.strip(), flags=flags)


def parse_arms(arm_texts, pretrain_texts=(), match_texts=()):
    """The `Arm`s of `--arm "NAME=FLAGS"`, with `--pretrain "NAME=FLAGS"` (a pre-training stage of arm NAME) and
    `--match_compute "NAME=OTHER"` (arm NAME trains as many epochs as OTHER cost) attached; names must differ as
    folder names, and an arm matches the cost of an arm before it."""
    arms = {}
    for text in arm_texts:
        arm = parse_arm(text)
        if slug(arm.name) in {slug(name) for name in arms}:
            raise ValueError(f"arm names must differ (as folder names): {arm.name!r}")
        arms[arm.name] = arm
    for option, texts in (("--pretrain", pretrain_texts), ("--match_compute", match_texts)):
        for text in texts:
            name, separator, value = (part.strip() for part in text.partition("="))
            if not separator or name not in arms:
                raise ValueError(f"{option}: expected NAME=..., NAME one of the arms {list(arms)}, got {text!r}")
            if option == "--pretrain":
                arms[name].pretrain_flags = split_flags(value, f"--pretrain {name!r}")
            elif value not in arms or list(arms).index(value) >= list(arms).index(name):
                raise ValueError(f"--match_compute {text!r}: {value!r} must be an arm given before {name!r}")
            else:
                arms[name].match_compute = value
    return list(arms.values())


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "arm"
