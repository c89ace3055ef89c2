"""Publish a finished run folder to the Hugging Face Hub: model, code, card, metrics, logs and endpoint handler.

What is uploaded is chosen by allow-list (`training.run_record.UPLOAD_PATTERNS`), and pickles and checkpoints are
refused by `NEVER_UPLOAD` whatever the allow-list says: `training_args.bin` holds the Hub token in clear text, and
`checkpoint-*/` holds optimizer and RNG state that no user of the model needs. No path, user or host name of the
training machine is published: the Trainer's own TensorBoard files are replaced by ones written from the run's record
(`write_tensorboard_log`), and the ONNX graph of the export carries none of the exporter's stack traces.
"""

import io
import json
import logging
import os
import shlex
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects
from transformers import AutoConfig
from transformers.utils import CONFIG_NAME

from vtlm.space.folder import write_space, write_static_space
from vtlm.training import LICENSE
from vtlm.training.export import export_model, published_export_formats
from vtlm.training.hub_access import hub_unreachable_reason
from vtlm.training.metrics import accuracy_sentence
from vtlm.training.model_card import is_generated_card, write_model_card
from vtlm.training.onnx_graphs import GRAPH_FILES, recorded_data
from vtlm.training.run_record import (
    ALL_RESULTS_FILE,
    CARD_FILE,
    ENDPOINT_FILES,
    MODEL_FILES,
    TRAINER_STATE_FILE,
    UPLOAD_PATTERNS,
    read_record,
)
from vtlm.training.trainer import TRAINING_SECONDS

logger = logging.getLogger(__name__)

ENDPOINT_DIR = Path(__file__).resolve().parents[1] / "endpoint"
# The Trainer's own TensorBoard files are never uploaded: their folder and file names carry the host name
# (`runs/Dec07_06-12-28_<host>/events.out.tfevents.<time>.<host>.<pid>.0`) and their `args` text the run folder's
# absolute path. Rewriting them would mean editing what TensorBoard recorded; instead, publishing writes the scalars of
# the run's own record, `trainer_state.json`'s log history, under the same tags (`write_tensorboard_log`), into this
# host-free file: a Hub visitor gets the run's training metrics, from the record the card renders, and for every run,
# one resumed across processes or trained with `--report_to none` alike.
TENSORBOARD_FILE = "runs/trainer_state/events.out.tfevents.vtlm"
NEVER_UPLOAD = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "checkpoint-*", "*/checkpoint-*"]
# Folders that publishing owns on the Hub: files there that this upload does not hold are deleted (the Trainer's
# TensorBoard files that an earlier publish uploaded, say).
MIRRORED_PATTERNS = ["examples/*", "runs/*", "logs/*"]


def publish_run(
    output_dir,
    hub_model_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    hub_vit_model_id: str | None = None,
    space_id: str | None = None,
    static_space_id: str | None = None,
    measure_onnx_accuracy: bool = False,
) -> CommitInfo:
    """Upload the run folder `output_dir` to the model repository `hub_model_id` (`namespace/name`).

    Renders the model card first unless `README.md` was written by hand, and copies the endpoint handler into
    the folder. Creates the repository (private if `private`) and the branch `revision` when missing; an existing
    repository keeps its visibility. `token` defaults to huggingface_hub's usual lookup (`HF_TOKEN`, then
    `hf auth login`). Publishing the same folder again uploads the same bytes, so the Hub skips it as unchanged.
    Refuses to upload (and raises `RuntimeError`) when any selected file contains the token.

    With `hub_vit_model_id`, the run is also exported exactly to transformers' built-in ViT (and to ONNX, with the
    `export` extra installed) and published there, for users and services that run no custom code; each card links
    to the other. The custom-code repository stays the primary one.

    With `space_id`, a Gradio Space that demonstrates the model is published too (`publish_space`), and the model
    card links it. With `static_space_id`, a static Space that runs the `hub_vit_model_id` repository's ONNX graph in
    the visitor's browser with transformers.js (`publish_static_space`): it needs that repository, with its graph.
    With `measure_onnx_accuracy`, the export's ONNX graphs are scored on the test split of the data the run trained
    on (`training.onnx_graphs.measure_graphs`): its card records each one's accuracy, and transformers.js (and the
    static Space) load the smallest whose top-1 is at most 0.3 points below the fp32 graph's; without it, fp32.
    """
    # Before the folder is touched, so a failed publish changes nothing; what this machine holds first.
    output_dir = Path(output_dir)
    missing = [name for name in MODEL_FILES if not (output_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{output_dir} is not a saved model folder: {', '.join(missing)} missing")
    formats = ()
    if hub_vit_model_id is not None:  # what cannot be exported is refused before anything changes
        formats = published_export_formats(AutoConfig.from_pretrained(output_dir, trust_remote_code=True))
    check_static_space(static_space_id, hub_vit_model_id, formats)
    if measure_onnx_accuracy and "onnx" not in formats:
        raise ValueError("--measure_onnx_accuracy scores the ONNX graphs that --hub_vit_model_id publishes: add it")
    api = check_can_publish(hub_model_id, hub_vit_model_id, space_id, revision, token=token,
                            static_space_id=static_space_id)  # fmt: skip

    readme = output_dir / CARD_FILE
    if readme.is_file() and not is_generated_card(readme):
        logger.info("Keeping the hand-written %s", readme)
    else:
        write_model_card(
            output_dir,
            hub_model_id=hub_model_id,
            revision=revision,
            hub_vit_model_id=hub_vit_model_id,
            space_id=space_id,
        )
    add_endpoint_files(output_dir)

    with tempfile.TemporaryDirectory() as workdir:
        upload_dir = stage_upload(output_dir, Path(workdir) / "upload")
        _refuse_files_with_token(upload_dir, token or get_token())
        logger.info(
            "Uploading %d files from %s to %s (revision %s)",
            sum(path.is_file() for path in upload_dir.rglob("*")),
            output_dir,
            hub_model_id,
            revision or "main",
        )
        commit = _upload_folder(
            api,
            hub_model_id,
            upload_dir,
            private,
            revision,
            commit_message=commit_message or f"Upload VTLM run {output_dir.resolve().name}",
            delete_patterns=MIRRORED_PATTERNS,
        )
    logger.info("Published %s", commit.commit_url)
    if hub_vit_model_id is not None:
        measure_on = recorded_data(output_dir) if measure_onnx_accuracy else None
        export_config = publish_vit_export(
            api, output_dir, formats, hub_model_id, hub_vit_model_id, token, private, revision, measure_on
        )
    if space_id is not None:
        # The Space's Gradio app loads a model with transformers: an ONNX graph alone is not one.
        vit_model_id = hub_vit_model_id if "vit" in formats else None
        publish_space(api, output_dir, space_id, [vit_model_id, hub_model_id], token, private)
    if static_space_id is not None:
        dtype = export_config["transformers.js_config"]["dtype"]
        publish_static_space(api, output_dir, static_space_id, hub_model_id, hub_vit_model_id, dtype, token, private)
    return commit


def publish_vit_export(
    api, output_dir, formats, hub_model_id, hub_vit_model_id, token, private, revision, measure_on=None
) -> dict:
    """Export `output_dir` in `formats` (`published_export_formats`: the built-in ViT, and ONNX when its packages are
    installed), its ONNX graphs measured on `measure_on`'s test split when given, and upload it, with the endpoint
    handler, to `hub_vit_model_id`; its card names `hub_model_id`. Returns the export's `config.json`."""
    if "onnx" not in formats:
        logger.warning(
            "onnxruntime is not installed: %s gets no onnx/model.onnx (pip install -e '.[export]')", hub_vit_model_id
        )
    with tempfile.TemporaryDirectory() as workdir:
        export_dir = Path(workdir) / "vit"
        export_model(
            output_dir, export_dir, formats, source=hub_model_id, model_id=hub_vit_model_id, measure_on=measure_on
        )
        if "vit" in formats:  # an ONNX graph alone has no weights for the endpoint's handler to load
            add_endpoint_files(export_dir)
        _refuse_files_with_token(export_dir, token or get_token())
        commit = _upload_folder(
            api,
            hub_vit_model_id,
            export_dir,
            private,
            revision,
            commit_message=f"Exact export of {hub_model_id} to {' and '.join(formats)}",
        )
        export_config = json.loads((export_dir / CONFIG_NAME).read_text())
    logger.info("Published the ViT export %s", commit.commit_url)
    return export_config


def publish_space(api, output_dir, space_id, model_ids, token, private) -> CommitInfo:
    """Create or update the Gradio Space `space_id` that demonstrates the run folder `output_dir`
    (`space.folder.write_space`): its app loads the first of `model_ids` that is not None."""
    model_ids = [model_id for model_id in model_ids if model_id is not None]
    with tempfile.TemporaryDirectory() as workdir:
        space_dir = write_space(Path(workdir) / "space", output_dir, model_ids, space_id, LICENSE)
        commit = _upload_space(api, space_id, space_dir, "gradio", token, private, f"Demo of {model_ids[0]}")
    logger.info("Published the demo Space %s", commit.commit_url)
    return commit


def check_static_space(static_space_id, hub_vit_model_id, formats):
    """Refuse `static_space_id` without the ONNX graph it runs: the one `hub_vit_model_id` publishes in `formats`."""
    if static_space_id is not None and "onnx" not in formats:
        raise ValueError(
            "--static_space_id runs the model's ONNX graph in the browser, which --hub_vit_model_id publishes"
            + (": add it" if hub_vit_model_id is None else " with the export extra: pip install -e '.[export]'")
        )


def publish_static_space(api, output_dir, static_space_id, hub_model_id, model_id, dtype, token, private):
    """Create or update the static Space `static_space_id` (`space.folder.write_static_space`): its page runs the
    `dtype` ONNX graph of the repository `model_id` in the visitor's browser, with the run folder `output_dir`'s
    example images and its card's test accuracy."""
    run_info, results = read_record(output_dir), read_record(output_dir, ALL_RESULTS_FILE)
    dataset = (run_info.get("dataset") or {}).get("name", "its dataset")
    if run_info.get("smoke_run"):
        accuracy = f"A smoke run on {dataset}: its card claims no accuracy."
    elif "test_accuracy" in results:
        accuracy = f"On {dataset}'s test split, {accuracy_sentence(results, 'test')}, as its model card reports."
    else:
        accuracy = f"Its accuracy on {dataset} is not recorded."
    model = {
        "id": model_id,
        "name": hub_model_id.split("/")[1],
        "accuracy": accuracy,
        "dtype": dtype,
        "onnx_file": GRAPH_FILES[dtype],
    }
    examples = [
        {"file": Path(output_dir) / example["file"], "label": example["label"]}
        for example in run_info.get("examples", [])
    ]
    with tempfile.TemporaryDirectory() as workdir:
        space_dir = write_static_space(Path(workdir) / "space", model, examples, static_space_id, LICENSE)
        commit = _upload_space(
            api, static_space_id, space_dir, "static", token, private, f"Run {model_id} in the browser"
        )
    logger.info("Published the static Space %s", commit.commit_url)
    return commit


def check_can_publish(
    hub_model_id, hub_vit_model_id=None, space_id=None, revision=None, token=None, static_space_id=None
) -> HfApi:
    """Raise within seconds, before any work, unless the repo ids are well formed, the Hub is reachable, and the
    token may write to every repository (`check_hub_access`); return the `HfApi` that was checked. `publish_run`
    starts with it, and `scripts/train.py --push_to_hub` calls it before the first step."""
    check_repo_id(hub_model_id, "--hub_model_id")
    spaces = (("--space_id", space_id), ("--static_space_id", static_space_id))
    for flag, repo_id in (("--hub_vit_model_id", hub_vit_model_id), *spaces):
        if repo_id is not None:
            check_repo_id(repo_id, flag)
    for flag, repo_id in spaces:
        if repo_id is not None and revision not in (None, "main"):
            raise ValueError(
                f"a Space shows the main branch of its model, not {revision!r}: publish to main to publish {flag}"
            )
    api = HfApi(token=token)
    check_hub_access(api, [hub_model_id, hub_vit_model_id, space_id, static_space_id])
    return api


def check_hub_access(api, repo_ids=()):
    """Raise within seconds, naming the cause, unless `api` has a token that the Hub accepts and that may write to
    each of `repo_ids` (None entries are skipped): a token with the "read" role, or a namespace that is neither the
    token's user nor one of its organizations, is refused. A repository that does not exist yet is created there."""
    if not (api.token or get_token()):
        raise ValueError("no Hub token: set HF_TOKEN, run `hf auth login`, or pass --hub_token")
    if constants.HF_HUB_OFFLINE:
        raise ConnectionError("HF_HUB_OFFLINE is set: unset it to publish")
    if reason := hub_unreachable_reason():
        raise ConnectionError(f"cannot publish: {reason}")
    try:
        user = api.whoami()
    except HfHubHTTPError as error:
        raise ValueError(f"the Hub refused the token ({error}): check it has write access") from None
    role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise ValueError(
            f"the Hub token of {user.get('name')} is read-only: publishing needs a token with write access"
        )
    namespaces = {user.get("name"), *(org.get("name") for org in user.get("orgs") or [])}
    for repo_id in filter(None, repo_ids):
        if repo_id.split("/")[0] not in namespaces:
            raise ValueError(
                f"the Hub token of {user.get('name')} cannot write to {repo_id}: its namespaces are "
                f"{', '.join(sorted(filter(None, namespaces)))}"
            )


def publish_command(
    output_dir, hub_model_id, hub_vit_model_id=None, space_id=None, private=False, revision=None, static_space_id=None
):
    """The `scripts/push_to_hub.py` command that publishes the run folder `output_dir` as `publish_run` would."""
    command = [
        "python",
        "scripts/push_to_hub.py",
        "--output_dir",
        output_dir,
        "--hub_model_id",
        hub_model_id or "USER/NAME",
    ]
    if hub_vit_model_id:
        command += ["--hub_vit_model_id", hub_vit_model_id]
    if space_id:
        command += ["--space_id", space_id]
    if static_space_id:
        command += ["--static_space_id", static_space_id]
    if private:
        command.append("--hub_private_repo")
    if revision:
        command += ["--hub_revision", revision]
    return shlex.join(command)


def check_repo_id(repo_id, flag):
    """Raise a `ValueError`, naming the `flag` that gave it, unless `repo_id` is `namespace/name`.

    The namespace is needed before the repository exists: the card links its example images by full URL.
    """
    if repo_id is None:
        raise ValueError(f"{flag} is missing: the Hub repo id must be 'namespace/name' (a user or organization)")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"{flag}: the Hub repo id must be 'namespace/name' (a user or organization), got {repo_id!r}")


def add_endpoint_files(folder):
    """Put the Inference Endpoint's `handler.py` and `requirements.txt` (`endpoint/`) into the model folder `folder`,
    as every published repository has them; a file already the same is left untouched."""
    for name in ENDPOINT_FILES:
        target = Path(folder) / name
        if not target.is_file() or target.read_bytes() != (ENDPOINT_DIR / name).read_bytes():
            shutil.copyfile(ENDPOINT_DIR / name, target)


def select_upload_files(output_dir) -> list[str]:
    """The paths, relative to `output_dir`, of the run folder's files that `publish_run` uploads as they are
    (`upload_folder`'s own filter); `stage_upload` adds `TENSORBOARD_FILE`."""
    output_dir = Path(output_dir)
    paths = sorted(path.relative_to(output_dir).as_posix() for path in output_dir.rglob("*") if path.is_file())
    return list(filter_repo_objects(paths, allow_patterns=UPLOAD_PATTERNS, ignore_patterns=NEVER_UPLOAD))


def stage_upload(output_dir, folder) -> Path:
    """Gather into `folder` what `publish_run` uploads from the run folder `output_dir`: its `select_upload_files`
    (hard links where the file system allows, copies elsewhere) and the TensorBoard file of its log history
    (`TENSORBOARD_FILE`, from `trainer_state.json`). The run folder itself keeps the Trainer's own TensorBoard files."""
    output_dir, folder = Path(output_dir), Path(folder)
    for name in select_upload_files(output_dir):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(output_dir / name, folder / name)
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(output_dir / name, folder / name)
    write_tensorboard_log(read_record(output_dir, TRAINER_STATE_FILE).get("log_history", []), folder / TENSORBOARD_FILE)
    return folder


def write_tensorboard_log(log_history, path) -> bool:
    """Write the scalars of `log_history` (`trainer_state.json`'s) to the TensorBoard event file `path`, each at its
    global step and under the tag the Trainer's `TensorBoardCallback` gives it (`train/loss`, `eval/accuracy`, ...,
    transformers' own `rewrite_logs`). Return whether there was any to write; with none, nothing is written.

    The same log history gives the same bytes. An event's time is the run's training seconds at that entry
    (`training_seconds`, which a resumed run continues): TensorBoard's relative time axis shows how long the run had
    trained, and its wall-clock axis starts at 1970, since when the run ran is no part of its record."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.record_writer import RecordWriter
    from transformers.integrations.integration_utils import rewrite_logs

    events, seconds = [], 0.0
    for entry in log_history:
        seconds = float(entry.get(TRAINING_SECONDS, seconds))
        scalars = {key: value for key, value in entry.items() if key != "step" and isinstance(value, (int, float))}
        if "step" not in entry or not scalars:
            continue
        values = [Summary.Value(tag=tag, simple_value=value) for tag, value in rewrite_logs(scalars).items()]
        events.append(Event(wall_time=seconds, step=int(entry["step"]), summary=Summary(value=values)))
    if not events:
        return False
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    for event in [Event(wall_time=events[0].wall_time, file_version="brain.Event:2"), *events]:
        writer.write(event.SerializeToString())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(buffer.getvalue())
    return True


def _upload_folder(
    api, repo_id, folder, private, revision, repo_type="model", space_sdk=None, **upload_options
) -> CommitInfo:
    """Create the repository `repo_id` (a model, or a Space of `space_sdk`; private if `private`, when new) and the
    branch `revision` when missing, then upload `folder` there in one commit."""
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, space_sdk=space_sdk)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
    return api.upload_folder(
        repo_id=repo_id, folder_path=folder, repo_type=repo_type, revision=revision, **upload_options
    )


def _upload_space(api, space_id, space_dir, sdk, token, private, commit_message) -> CommitInfo:
    """Upload the folder `space_dir` to the Space `space_id` (of `sdk`, when new) in one commit, after refusing any
    file that holds the token; the Space's examples are the folder's, earlier ones deleted."""
    _refuse_files_with_token(space_dir, token or get_token())
    return _upload_folder(
        api,
        space_id,
        space_dir,
        private,
        None,
        repo_type="space",
        space_sdk=sdk,
        commit_message=commit_message,
        ignore_patterns=NEVER_UPLOAD,
        delete_patterns=["examples/*"],
    )


def _refuse_files_with_token(folder: Path, token: str | None, files: list[str] | None = None):
    """Raise unless none of `files` (paths relative to `folder`; default: every file in it) contains `token`."""
    if not token:
        return
    if files is None:
        files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    leaking = [name for name in files if token.encode() in (folder / name).read_bytes()]
    if leaking:
        raise RuntimeError(f"not uploading: the Hub token appears in {', '.join(leaking)}")
