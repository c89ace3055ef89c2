"""Where a model or a dataset comes from: a folder on this machine, or a Hub id. Every script decides it here, by one
rule, and names it here in anything it publishes."""

import os

from .hub_access import hub_unreachable_reason


def is_local(source) -> bool:
    """Whether `source` is a path on this machine (what is read then), rather than a Hub id."""
    return os.path.exists(source)


def is_hub_id(source) -> bool:
    """Whether `source` is written as a Hub id (`namespace/name`, or a legacy `name`), not as a path; whether it
    exists is not asked."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return not source.startswith((".", "~")) and source.count("/") <= 1


def publishable_name(source) -> str:
    """How anything published names `source`: a Hub id as it is, a local folder by its own name (never its path on
    this machine)."""
    return os.path.basename(os.path.normpath(source)) if is_local(source) else source


def check_source(source):
    """Raise one line unless `source` is a path on this machine or a Hub id: a mistyped folder is named as missing,
    not as a Hub id that failed to download."""
    if not is_local(source) and not is_hub_id(source):
        raise FileNotFoundError(f"{source} is neither a folder nor a Hub id (user/name)")


def check_model_source(model_name_or_path):
    """Raise one line unless `model_name_or_path` is a saved model's folder (with its config.json), a Hub id already
    cached, or a Hub id and the Hub can be reached."""
    from huggingface_hub import constants, try_to_load_from_cache

    path = str(model_name_or_path)
    check_source(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, constants.CONFIG_NAME)):
            raise FileNotFoundError(f"{path} has no {constants.CONFIG_NAME}: it is not a saved model folder")
        return
    if is_local(path):
        raise ValueError(f"{path} is a file: expected a model folder or a Hub id (user/name)")
    if isinstance(try_to_load_from_cache(path, constants.CONFIG_NAME), str):
        return
    if reason := "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else hub_unreachable_reason():
        raise FileNotFoundError(f"there is no folder {path} here, and the Hub id {path} cannot be looked up: {reason}")
