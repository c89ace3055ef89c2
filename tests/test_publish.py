"""Publishing a run folder, against a fake Hub that records every uploaded byte (no network)."""

import getpass
import json
import logging
import os
import pickle
import re
import secrets
import shutil
import site
import socket
import sys
import sysconfig
from pathlib import Path

import huggingface_hub
import pytest
from conftest import RESULTS, load_script, make_run_folder
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from transformers import TrainerControl, TrainerState
from transformers.integrations import TensorBoardCallback

import vtlm.training.export
import vtlm.training.hub
from vtlm.modeling import VTLMForImageClassification
from vtlm.training.arguments import parse_arguments
from vtlm.training.hub import TENSORBOARD_FILE, publish_run
from vtlm.training.run_record import save_example_images

REPO_ROOT = Path(__file__).resolve().parents[1]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# The host name this machine has, and the one the tests' runs write wherever a run writes its host's name: long and
# unique, so that finding it in a binary file means it was written there.
HOST_NAME = socket.gethostname()
PLANTED_HOST_NAME = f"vtlm-host-{secrets.token_hex(6)}"
EXPECTED_UPLOAD = {
    "config.json",
    "configuration_vtlm.py",
    "modeling_vtlm.py",
    "model.safetensors",
    "preprocessor_config.json",
    "README.md",
    "training_curves.png",
    "examples/00.png",
    "examples/01.png",
    "examples/02.png",
    "all_results.json",
    "test_results.json",
    "run_info.json",
    "trainer_state.json",
    TENSORBOARD_FILE,
    "handler.py",
    "requirements.txt",
}


@pytest.fixture(scope="session")
def publish_template(tmp_path_factory):
    run_dir = make_run_folder(tmp_path_factory.mktemp("publish-template"))
    # Each entry of a real run's log history has the global step the Trainer logged it at.
    state = TrainerState.load_from_json(str(run_dir / "trainer_state.json"))
    for entry in state.log_history:
        entry["step"] = round(entry["epoch"] * state.global_step / state.num_train_epochs)
    state.save_to_json(str(run_dir / "trainer_state.json"))
    return run_dir


def write_tensorboard_logs(run_dir):
    """The Trainer's TensorBoard files in `run_dir`, written as a real run writes them: by `TensorBoardCallback`,
    into `runs/<date>_<host name>/` (its default logging dir), with the arguments as text (the run folder's absolute
    path among them) and the scalars of each entry of the run's log history at its step."""
    training_args = parse_arguments([f"--output_dir={run_dir}", "--report_to=tensorboard"])[3]
    state = TrainerState.load_from_json(str(run_dir / "trainer_state.json"))
    callback, control = TensorBoardCallback(), TrainerControl()
    callback.on_train_begin(training_args, state, control, model=VTLMForImageClassification.from_pretrained(run_dir))
    for entry in state.log_history:
        state.global_step = entry["step"]
        callback.on_log(training_args, state, control, logs={k: v for k, v in entry.items() if k != "step"})
    callback.on_train_end(training_args, state, control)


@pytest.fixture
def token():
    return f"hf_fake{secrets.token_hex(16)}"  # unique, so finding it anywhere proves a leak


@pytest.fixture
def run_dir(publish_template, tmp_path, token, monkeypatch):
    """A run folder with everything a real one may hold, the token planted in the pickles like the Trainer does,
    and TensorBoard logs written on a machine called `PLANTED_HOST_NAME`."""
    monkeypatch.setattr(socket, "gethostname", lambda: PLANTED_HOST_NAME)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    run_dir = shutil.copytree(publish_template, tmp_path / "vtlm-run")
    planted = pickle.dumps({"hub_token": token, "learning_rate": 1e-3})
    (run_dir / "training_args.bin").write_bytes(planted)
    checkpoint = run_dir / "checkpoint-30"
    checkpoint.mkdir()
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        (checkpoint / name).write_bytes(planted)
    # A checkpoint also holds files the allow-list matches (the code files): the deny-list must win.
    for name in ("model.safetensors", "config.json", "configuration_vtlm.py", "modeling_vtlm.py", "trainer_state.json"):
        shutil.copy(run_dir / name, checkpoint / name)
    (run_dir / "notes.pkl").write_bytes(planted)
    write_tensorboard_logs(run_dir)
    return run_dir


def files_holding(root, needle):
    return sorted(
        str(path.relative_to(root)) for path in root.rglob("*") if path.is_file() and needle in path.read_bytes()
    )


def test_publish_uploads_the_model_card_metrics_and_handler_and_no_pickle(hub, run_dir, token, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    commit = publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token, private=True)

    assert len(hub.commits) == 1 and commit.commit_url.startswith("https://huggingface.co/someone/vtlm-tiny/commit/")
    uploaded = hub.commits[0]["added"]
    assert set(uploaded) == EXPECTED_UPLOAD
    assert not [path for path in uploaded if path.endswith(PICKLE_SUFFIXES) or "checkpoint-" in path]
    for path in EXPECTED_UPLOAD - {"handler.py", "requirements.txt", TENSORBOARD_FILE}:
        assert uploaded[path] == (run_dir / path).read_bytes(), path
    for name in ("handler.py", "requirements.txt"):
        assert uploaded[name] == (REPO_ROOT / "endpoint" / name).read_bytes()
    assert hub.repos == {"someone/vtlm-tiny": {"private": True}} and hub.branches == []
    assert hub.commits[0]["revision"] is None and hub.commits[0]["auth"] == f"Bearer {token}"

    # The token is in no uploaded byte, no file publishing wrote, no log record and no console output.
    assert not [path for path, data in uploaded.items() if token.encode() in data]
    planted = ["checkpoint-30/optimizer.pt", "checkpoint-30/rng_state.pth", "checkpoint-30/scheduler.pt"]
    planted += ["checkpoint-30/training_args.bin", "notes.pkl", "training_args.bin"]
    assert files_holding(run_dir, token.encode()) == sorted(planted)
    output = capfd.readouterr()
    assert token not in caplog.text and token not in output.out + output.err
    assert "someone/vtlm-tiny" in caplog.text  # the log was captured

    readme = uploaded["README.md"].decode()
    assert hub.validated_readmes == [readme]
    card = ModelCard(readme)
    assert {r.dataset_split: r.metric_value for r in card.data.eval_results} == {
        "train": RESULTS["eval_accuracy"],
        "test": RESULTS["test_accuracy"],
    }
    assert card.data.model_name == "vtlm-tiny"
    assert card.data.widget[0]["src"] == "https://huggingface.co/someone/vtlm-tiny/resolve/main/examples/00.png"


def scalars_of(folder):
    """{tag: [(step, value), ...]} of the TensorBoard event files in `folder`, as TensorBoard itself reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_the_runs_tensorboard_metrics_are_published_under_a_name_free_of_the_host(hub, run_dir, token):
    (trainer_logs,) = (run_dir / "runs").iterdir()  # the Trainer's own, named after the host
    assert PLANTED_HOST_NAME in trainer_logs.name
    publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token)

    uploaded = hub.commits[0]["added"]
    assert [path for path in uploaded if "tfevents" in path] == [TENSORBOARD_FILE]
    published = run_dir.parent / "published" / TENSORBOARD_FILE
    published.parent.mkdir(parents=True)
    published.write_bytes(uploaded[TENSORBOARD_FILE])
    # A Hub visitor sees every metric the Trainer wrote, under its tag and at its step.
    scalars = scalars_of(published.parent)
    assert scalars == scalars_of(trainer_logs)
    assert scalars["eval/accuracy"] == [(10, pytest.approx(0.1)), (20, pytest.approx(0.2)), (30, pytest.approx(0.3))]
    assert {"train/loss", "train/learning_rate", "eval/loss"} <= set(scalars)
    assert trainer_logs.is_dir()  # the run folder keeps its own logs


# A short name turns up in random bytes by chance (2 letters about once in 100 kB): it is looked for in binary files
# only from this length on, and otherwise in file names and text files.
MIN_BINARY_NAME = 5
# What publishing copies from this checkout (the endpoint's handler, the Space's app, the model's code): its words are
# the project's ("the root of the model repository"), not a user or host name of this machine.
COPIED_FILES = {
    path.read_bytes() for folder in ("endpoint", "space", "modeling") for path in (REPO_ROOT / folder).glob("*")
    if path.is_file()
}  # fmt: skip


def machine_names(run_dir) -> list[tuple[str, str, bool]]:
    """(what it is, the string, whether it is a path) for each thing that names this machine: the paths of the run
    folder, the checkout, the Python environment and its packages and the home folder, the user's name and the host's,
    and the host name the tests' runs were written under (`PLANTED_HOST_NAME`)."""
    paths = [
        ("the run folder", str(run_dir)),
        ("the run folder", str(run_dir.resolve())),
        ("the checkout", str(REPO_ROOT)),
        ("the Python environment", sys.prefix),
        ("the Python standard library", sysconfig.get_paths()["stdlib"]),
        *(("site-packages", path) for path in site.getsitepackages()),
        ("the home folder", os.path.expanduser("~")),
    ]
    names = [
        ("the user name", getpass.getuser()),
        ("the host name", HOST_NAME),
        ("the planted host name", PLANTED_HOST_NAME),
    ]
    return [(what, path, True) for what, path in paths if path.strip("/")] + [
        (what, name, False) for what, name in names
    ]


def machine_name_findings(files, names) -> list[tuple[str, str]]:
    """(file, what) for each of `files` ({path: bytes}) whose path or content holds one of `names` (`machine_names`):
    a path anywhere, a user or host name as a whole word (but in no copy of the checkout's `COPIED_FILES`); binary
    content only for names of `MIN_BINARY_NAME` characters or more."""
    found = []
    for path, data in files.items():
        try:
            data.decode("utf-8")
            binary = False
        except UnicodeDecodeError:
            binary = True
        for what, name, is_path in names:
            pattern = re.escape(name.encode())
            if not is_path:
                pattern = rb"(?<![A-Za-z0-9])" + pattern + rb"(?![A-Za-z0-9])"
            look_inside = (is_path or data not in COPIED_FILES) and (not binary or len(name) >= MIN_BINARY_NAME)
            if re.search(pattern, path.encode()) or (look_inside and re.search(pattern, data)):
                found.append((path, what))
    return sorted(set(found))


def publish_everywhere(run_dir, token):
    """Publish `run_dir` to every repository a publish can upload to: the model, its ViT and ONNX export, the Space."""
    publish_run(
        run_dir,
        hub_model_id="someone/vtlm-tiny",
        token=token,
        hub_vit_model_id="someone/vtlm-tiny-vit",
        space_id="someone/vtlm-demo",
    )


@pytest.mark.slow  # an ONNX export inside a publish (test_export's fast tier exports each tokenizer family)
def test_nothing_published_names_this_machine(hub, run_dir, token, caplog):
    """Every file that publishing uploads (the model, its ViT and ONNX export, the Space), binary ones included, and
    every file name and commit message: no path of this machine, no user name, no host name."""
    pytest.importorskip("onnxruntime", reason="the ONNX graph needs the export extra: pip install -e '.[export]'")
    names = machine_names(run_dir)
    # The scan finds what it looks for: a path in a binary file, a host name in a file name, a user in a text...
    planted = {
        "onnx/model.onnx": b"\x08\x07" + f'File "{site.getsitepackages()[0]}/torch/nn/modules/module.py"'.encode(),
        f"runs/Dec07_06-12-28_{HOST_NAME}/events.out.tfevents.1765087948.{HOST_NAME}.7.0": b"\x00",
        "run_info.json": json.dumps({"output_dir": str(run_dir), "user": getpass.getuser()}).encode(),
    }
    found = {what for _, what in machine_name_findings(planted, names)}
    assert found >= {"site-packages", "the Python environment", "the host name", "the run folder", "the user name"}
    # ... and the Trainer's own TensorBoard files, which a run writes, hold the run folder's path and the host's name.
    trainer_logs = {
        path.relative_to(run_dir).as_posix(): path.read_bytes() for path in run_dir.glob("runs/*/*") if path.is_file()
    }
    assert {what for _, what in machine_name_findings(trainer_logs, names)} >= {
        "the planted host name",
        "the run folder",
    }

    caplog.set_level(logging.INFO)
    publish_everywhere(run_dir, token)
    published = {f"{repo_id}/{path}": data for (repo_id, _), files in hub.files.items() for path, data in files.items()}
    assert {"someone/vtlm-tiny-vit/onnx/model.onnx", "someone/vtlm-demo/app.py"} <= set(published)
    published |= {f"commit {index}": commit["message"].encode() for index, commit in enumerate(hub.commits)}
    assert machine_name_findings(published, names) == []
    assert f"someone/vtlm-tiny/{TENSORBOARD_FILE}" in published  # the run's metrics, under a name free of the host
    graph = published["someone/vtlm-tiny-vit/onnx/model.onnx"]
    assert b"pkg.torch.onnx.stack_trace" not in graph and b"pkg.torch.onnx.fx_node" not in graph  # the exporter's
    # The exporter's passes log nothing at INFO that a user could act on.
    assert not [record for record in caplog.records if record.name.startswith(("onnx_ir", "onnxscript"))]


def test_publishing_again_is_idempotent_and_removes_stale_examples(hub, run_dir, token):
    # What an earlier publish left: the Trainer's own TensorBoard file, named after its host.
    stale_events = "runs/Nov26_05-09-50_host/events.out.tfevents.1764133790.host.1234.0"
    hub.files[("someone/vtlm-tiny", "main")] = {
        ".gitattributes": b"*.png filter=lfs",
        "notes/eval.md": b"mine",
        stale_events: b"brain.Event:2",
    }
    publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token)
    assert hub.commits[0]["deleted"] == [stale_events]
    first_state = dict(hub.files[("someone/vtlm-tiny", "main")])
    readme_mtime = (run_dir / "README.md").stat().st_mtime_ns

    publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token)
    assert hub.commits[1]["added"] == hub.commits[0]["added"]  # same paths, same bytes: the Hub skips them
    assert hub.commits[1]["deleted"] == []
    assert hub.files[("someone/vtlm-tiny", "main")] == first_state
    assert (run_dir / "README.md").stat().st_mtime_ns == readme_mtime

    # Fewer examples in the folder: the Hub loses the one that is gone instead of keeping it as garbage.
    save_example_images(run_dir, [Image.new("RGB", (32, 32), "red")], ["apple"])
    publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token)
    examples = sorted(path for path in hub.files[("someone/vtlm-tiny", "main")] if path.startswith("examples/"))
    assert examples == ["examples/00.png"]
    assert sorted(hub.commits[2]["deleted"]) == ["examples/01.png", "examples/02.png"]
    # Files publishing does not own stay.
    assert hub.files[("someone/vtlm-tiny", "main")]["notes/eval.md"] == b"mine"


def test_publish_to_a_new_branch_of_a_private_repo(hub, run_dir, token):
    publish_run(
        run_dir, hub_model_id="someone/vtlm-tiny", token=token, private=True, revision="smoke", commit_message="Try it"
    )
    assert hub.branches == [("someone/vtlm-tiny", "smoke")]
    assert hub.repos["someone/vtlm-tiny"] == {"private": True}
    assert hub.commits[0]["revision"] == "smoke" and hub.commits[0]["message"] == "Try it"
    card = ModelCard(hub.files[("someone/vtlm-tiny", "smoke")]["README.md"].decode())
    assert card.data.widget[0]["src"].startswith("https://huggingface.co/someone/vtlm-tiny/resolve/smoke/examples/")


def test_publish_refuses_a_folder_whose_uploaded_files_hold_the_token(hub, run_dir, token):
    run_info = run_dir / "run_info.json"
    run_info.write_text(run_info.read_text().replace('"<HUB_TOKEN>"', f'"{token}"'))
    with pytest.raises(RuntimeError, match="run_info.json") as error:
        publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token)
    assert token not in str(error.value)
    assert hub.commits == [] and hub.repos == {}


def test_publish_keeps_a_hand_written_readme(hub, run_dir, token):
    (run_dir / "README.md").write_text("---\nlicense: apache-2.0\n---\n# My own card\n")
    publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token)
    assert hub.commits[0]["added"]["README.md"] == b"---\nlicense: apache-2.0\n---\n# My own card\n"


def test_publish_needs_a_saved_model_and_a_full_repo_id(hub, run_dir, token):
    for repo_id in (None, "vtlm-tiny", "a/b/c"):
        with pytest.raises(ValueError, match="repo id must be 'namespace/name'"):
            publish_run(run_dir, hub_model_id=repo_id, token=token)
    (run_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token)
    assert hub.commits == [] and hub.repos == {}


@pytest.mark.parametrize("token_from", ["flag", "environment"])
def test_push_to_hub_cli(hub, run_dir, token, token_from, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    argv = [
        "--output_dir",
        str(run_dir),
        "--hub_model_id",
        "someone/vtlm-cli",
        "--hub_private_repo",
        "--hub_revision",
        "dev",
    ]
    if token_from == "flag":
        argv += ["--hub_token", token]
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)
    load_script("push_to_hub").main(argv)

    assert hub.repos == {"someone/vtlm-cli": {"private": True}} and hub.branches == [("someone/vtlm-cli", "dev")]
    assert hub.commits[0]["auth"] == f"Bearer {token}"
    assert set(hub.commits[0]["added"]) == EXPECTED_UPLOAD
    output = capfd.readouterr()
    assert "https://huggingface.co/someone/vtlm-cli/commit/" in output.out
    assert token not in caplog.text and token not in output.out + output.err


@pytest.mark.parametrize("problem", ["no token", "offline", "unreachable"])
def test_publish_fails_fast_and_changes_nothing_without_token_or_network(hub, run_dir, token, problem, monkeypatch):
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    if problem == "no token":
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(vtlm.training.hub, "get_token", lambda: None)
        expected, message, token = ValueError, "no Hub token: set HF_TOKEN", None
    elif problem == "offline":
        monkeypatch.setattr(vtlm.training.hub.constants, "HF_HUB_OFFLINE", True)
        expected, message = ConnectionError, "HF_HUB_OFFLINE is set"
    else:
        reason = "the Hub at https://huggingface.co cannot be reached (huggingface.co:443: timed out)"
        monkeypatch.setattr(vtlm.training.hub, "hub_unreachable_reason", lambda: reason)
        expected, message = ConnectionError, "cannot publish: the Hub at .* cannot be reached"
    with pytest.raises(expected, match=message):
        publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token)
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before
    assert hub.commits == [] and hub.repos == {}


@pytest.mark.slow  # an ONNX export inside a publish (test_export's fast tier exports each tokenizer family)
def test_the_vit_export_is_published_beside_the_custom_code_and_the_cards_link_each_other(hub, run_dir, token):
    pytest.importorskip("onnxruntime", reason="the ONNX graph needs the export extra: pip install -e '.[export]'")
    publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token, hub_vit_model_id="someone/vtlm-tiny-vit")

    assert set(hub.repos) == {"someone/vtlm-tiny", "someone/vtlm-tiny-vit"}
    main, vit = hub.files[("someone/vtlm-tiny", "main")], hub.files[("someone/vtlm-tiny-vit", "main")]
    assert set(vit) == {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} | {
        "onnx/model.onnx",
        "onnx/model_fp16.onnx",
        "onnx/model_quantized.onnx",
        "handler.py",
        "requirements.txt",
    }
    assert json.loads(vit["config.json"])["model_type"] == "vit"  # the built-in class: no code file to run
    vit_card = vit["README.md"].decode()
    assert "[`someone/vtlm-tiny`](https://huggingface.co/someone/vtlm-tiny)" in vit_card
    # The card's snippets load the repository it is published to: nothing for the reader to fill in.
    assert 'pipeline("image-classification", model="someone/vtlm-tiny-vit")' in vit_card
    assert 'model = "someone/vtlm-tiny-vit"' in vit_card and "MODEL" not in vit_card
    readme = main["README.md"].decode()
    assert 'pipeline("image-classification", model="someone/vtlm-tiny-vit")  # no trust_remote_code' in readme
    assert 'hf_hub_download("someone/vtlm-tiny-vit", "onnx/model.onnx")' in readme
    assert not [path for files in (main, vit) for path, data in files.items() if token.encode() in data]


def mean_pooled_run(folder):
    """A run folder of a layout the built-in ViT cannot express: mean pooling (no parameters of its own)."""
    run_dir = make_run_folder(folder)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "pooling": "mean"}))
    return run_dir


def test_a_model_the_vit_cannot_express_without_onnx_is_refused_before_anything_is_published(
    hub, tmp_path, token, monkeypatch
):
    run_dir = mean_pooled_run(tmp_path / "mean-run")
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    find_spec = vtlm.training.export.importlib.util.find_spec
    monkeypatch.setattr(vtlm.training.export.importlib.util, "find_spec",
                        lambda name: None if name == "onnxruntime" else find_spec(name))  # fmt: skip
    with pytest.raises(ValueError, match="pooling='mean'.*export extra"):
        publish_run(run_dir, hub_model_id="someone/vtlm-mean", token=token, hub_vit_model_id="someone/vtlm-mean-vit")
    assert hub.repos == {} and {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before


@pytest.mark.slow  # an ONNX export inside a publish (test_export's fast tier exports each tokenizer family)
def test_a_model_the_vit_cannot_express_publishes_its_onnx_graph_alone(hub, tmp_path, token):
    pytest.importorskip("onnxruntime", reason="the ONNX graph needs the export extra: pip install -e '.[export]'")
    run_dir = mean_pooled_run(tmp_path / "mean-run")
    publish_run(run_dir, hub_model_id="someone/vtlm-mean", token=token, hub_vit_model_id="someone/vtlm-mean-onnx")
    graph = hub.files[("someone/vtlm-mean-onnx", "main")]
    # The graph, what its clients read, and no weights nor endpoint handler that would have nothing to load.
    assert set(graph) == {"config.json", "preprocessor_config.json", "README.md"} | {
        f"onnx/{name}" for name in ("model.onnx", "model_fp16.onnx", "model_quantized.onnx")
    }
    config = json.loads(graph["config.json"])
    assert config["vtlm_config"]["pooling"] == "mean" and config["transformers.js_config"] == {"dtype": "fp32"}
    readme = hub.files[("someone/vtlm-mean", "main")]["README.md"].decode()
    assert (
        "but its ONNX graph runs" in readme and 'pipeline("image-classification", "someone/vtlm-mean-onnx")' in readme
    )
    assert "no trust_remote_code" not in readme  # no built-in ViT is promised


@pytest.mark.parametrize(
    "user, repo_ids, match",
    [
        ({"name": "someone", "auth": {"accessToken": {"role": "read"}}}, ["someone/vtlm"], "read-only"),
        ({"name": "someone", "orgs": [{"name": "lab"}]}, ["someone/vtlm", "other/vtlm-vit"], "cannot write to other"),
    ],
)
def test_a_token_that_cannot_write_there_is_refused_before_any_work(hub, token, user, repo_ids, match, monkeypatch):
    """`train.py --push_to_hub` checks this before the first step (`check_can_publish`), not after hours of training."""
    from vtlm.training.hub import check_can_publish

    monkeypatch.setattr(HfApi, "whoami", lambda api, **kwargs: user)
    with pytest.raises(ValueError, match=match):
        check_can_publish(*repo_ids, token=token)
    assert hub.repos == {} and hub.commits == []
    if user.get("orgs"):
        check_can_publish("lab/vtlm", token=token)  # an organization of the token's user: allowed


def test_train_push_to_hub_without_a_token_fails_before_loading_any_data(tmp_path, monkeypatch, capsys):
    train = load_script("train")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(vtlm.training.hub, "get_token", lambda: None)
    argv = ["--dataset_name=/no/such/data", "--push_to_hub", "--hub_model_id=someone/vtlm", f"--output_dir={tmp_path}"]
    assert train.run_cli(train.main, argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no Hub token") and "/no/such/data" not in error  # before the data was looked at


def test_train_push_to_hub_with_a_bad_space_fails_before_loading_any_data(hub, tmp_path, token, capsys):
    train = load_script("train")
    argv = ["--dataset_name=/no/such/data", "--push_to_hub", "--hub_model_id=someone/vtlm", f"--output_dir={tmp_path}"]
    assert train.run_cli(train.main, [*argv, f"--hub_token={token}", "--space_id=vtlm-demo"]) == 2
    error = capsys.readouterr().err
    assert (
        error
        == "error: --space_id: the Hub repo id must be 'namespace/name' (a user or organization), got 'vtlm-demo'\n"
    )
    assert hub.repos == {}


def test_train_push_to_hub_with_a_static_space_but_no_graph_fails_before_loading_any_data(hub, tmp_path, token, capsys):
    train = load_script("train")
    argv = ["--dataset_name=/no/such/data", "--push_to_hub", "--hub_model_id=someone/vtlm", f"--output_dir={tmp_path}"]
    assert train.run_cli(train.main, [*argv, f"--hub_token={token}", "--static_space_id=someone/vtlm-static"]) == 2
    error = capsys.readouterr().err
    assert error == (
        "error: --static_space_id runs the model's ONNX graph in the browser, which --hub_vit_model_id publishes: "
        "add it\n"
    )
    assert hub.repos == {}


def test_the_demo_space_is_published_with_the_model_and_linked_from_its_card(hub, run_dir, token):
    from huggingface_hub import metadata_load

    from vtlm.space.folder import pinned_requirements

    publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token, space_id="someone/vtlm-demo")

    assert hub.repo_types["someone/vtlm-demo"] == ("space", "gradio")
    space = hub.files[("someone/vtlm-demo", "main")]
    assert set(space) == {"app.py", "handler.py", "requirements.txt", "README.md"} | {
        f"examples/{name}" for name in ("00.png", "01.png", "02.png")
    }
    assert space["app.py"] == (REPO_ROOT / "space" / "app.py").read_bytes()
    assert space["handler.py"] == (REPO_ROOT / "endpoint" / "handler.py").read_bytes()
    assert space["examples/01.png"] == (run_dir / "examples" / "01.png").read_bytes()
    readme = run_dir.parent / "space-README.md"
    readme.write_bytes(space["README.md"])
    metadata = metadata_load(readme)
    pins = pinned_requirements()
    assert metadata["sdk"] == "gradio" and metadata["sdk_version"] == pins.pop("gradio")
    assert metadata["app_file"] == "app.py" and metadata["models"] == ["someone/vtlm-tiny"]
    requirements = [line for line in space["requirements.txt"].decode().splitlines() if not line.startswith("#")]
    assert requirements == [f"{package}=={version}" for package, version in pins.items()]
    card = hub.files[("someone/vtlm-tiny", "main")]["README.md"].decode()
    assert "[someone/vtlm-demo](https://huggingface.co/spaces/someone/vtlm-demo)" in card
    assert not [path for files in hub.files.values() for path, data in files.items() if token.encode() in data]


@pytest.mark.slow  # an ONNX export inside a publish (test_export's fast tier exports each tokenizer family)
def test_the_space_loads_the_vit_export_when_one_is_published(hub, run_dir, token):
    from huggingface_hub import metadata_load

    publish_everywhere(run_dir, token)
    readme = run_dir.parent / "space-README.md"
    readme.write_bytes(hub.files[("someone/vtlm-demo", "main")]["README.md"])
    assert metadata_load(readme)["models"] == ["someone/vtlm-tiny-vit", "someone/vtlm-tiny"]  # app.py loads the first


@pytest.mark.parametrize(
    "options, match",
    [
        ({"space_id": "vtlm-demo"}, "repo id must be 'namespace/name'"),
        ({"space_id": "other/vtlm-demo"}, "cannot write to other/vtlm-demo"),
        ({"space_id": "someone/vtlm-demo", "revision": "smoke"}, "a Space shows the main branch"),
        ({"static_space_id": "someone/vtlm-static"}, "which --hub_vit_model_id publishes: add it"),
        ({"static_space_id": "vtlm-static", "hub_vit_model_id": "someone/vtlm-vit"}, "--static_space_id: the Hub repo"),
        ({"static_space_id": "other/vtlm-static", "hub_vit_model_id": "someone/vtlm-vit"}, "cannot write to other/"),
        (
            {"static_space_id": "someone/vtlm-static", "hub_vit_model_id": "someone/vtlm-vit", "revision": "smoke"},
            "a Space shows the main branch of its model, not 'smoke': publish to main to publish --static_space_id",
        ),
    ],
)
def test_a_space_that_cannot_be_published_fails_before_anything_changes(hub, run_dir, token, options, match):
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    with pytest.raises(ValueError, match=match):
        publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token, **options)
    assert hub.repos == {} and hub.commits == []
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before


@pytest.mark.slow  # an ONNX export inside a publish (test_export's fast tier exports each tokenizer family)
def test_a_measured_export_sets_the_graph_that_transformers_js_and_the_static_space_load(hub, tmp_path, token):
    """--measure_onnx_accuracy scores the export's graphs on the run's own test split: the export's config and card
    carry the chosen graph and each one's accuracy, and the static Space loads that graph."""
    pytest.importorskip("onnxruntime", reason="the ONNX graph needs the export extra: pip install -e '.[export]'")
    from conftest import write_hub_dataset

    from vtlm.training.onnx_graphs import choose_default_dtype

    data = write_hub_dataset(tmp_path / "data", {"train": 10, "validation": 10, "test": 200})
    run_dir = make_run_folder(tmp_path / "run", dataset_name=data)
    publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token=token, hub_vit_model_id="someone/vtlm-tiny-vit",
                static_space_id="someone/vtlm-static", measure_onnx_accuracy=True)  # fmt: skip
    export = hub.files[("someone/vtlm-tiny-vit", "main")]
    measurement = json.loads(export["onnx_accuracy.json"])
    dtype = json.loads(export["config.json"])["transformers.js_config"]["dtype"]
    assert dtype == choose_default_dtype(measurement["graphs"]) and measurement["num_images"] == 200
    assert "not measured" not in export["README.md"].decode()
    assert json.loads(hub.files[("someone/vtlm-static", "main")]["space.json"])["dtype"] == dtype
