"""What a new user sees: a mistake ends with a short message and a non-zero exit, before any work, with no traceback;
`--help` answers at once; a run's log is readable and ends with its results. Mistakes are answered by `run_cli`
in-process, as each script's `__main__` calls it; what needs a fresh interpreter (imports, logging, the environment at
start-up) is in the slow tier, and so is Ctrl-C, in a training process started preloaded (tests/started.py)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import REPO_ROOT, TINY_RUN, load_script, make_run_folder, save_tiny_model
from started import preloaded
from test_resume import stopped_step

from vtlm.training.cli import run_cli
from vtlm.training.metrics import accuracy_sentence


def run_script(name, *args, env=None, cwd=None):
    """The script in a fresh interpreter, as a user starts it."""
    command = [sys.executable, str(REPO_ROOT / "scripts" / f"{name}.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def run_in_process(capsys, name, *args):
    """The script's `main` through `run_cli`, as its `__main__` runs it, in this interpreter: (exit status, stderr)."""
    status = run_cli(load_script(name).main, list(map(str, args)))
    return status, capsys.readouterr().err


def assert_short_error(status, stderr, message):
    assert status == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert message in stderr, stderr[-2000:]


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("train", ["--lr", "1e-3"], "--lr (did you mean --learning_rate?)"),  # not an ambiguous abbreviation
        ("train", ["--epochs=3"], "--epochs=3 (did you mean --num_train_epochs?)"),
        ("benchmark", ["--batchsize", "4"], "--batchsize (did you mean --batch_size?)"),
        ("evaluate_model", ["runs/x", "--splt", "test"], "--splt (did you mean --split?)"),
        ("predict", ["runs/x", "x.png", "--topk", "3"], "--topk (did you mean --top_k?)"),
        ("export", ["runs/x", "--output_dir", "out", "--formats", "onnx"], "--formats (did you mean --format?)"),
        ("push_to_hub", ["--output_dir", "x", "--hub_model_id", "a/b", "--privat"], "(did you mean --hub_private_repo"),
        ("compare", ["--arm", "a=", "--seed", "1"], "--seed (did you mean --seeds?)"),
        ("push_to_hub", ["--output_dir", "x"], "the following arguments are required: --hub_model_id"),
        ("benchmark_inference", ["--repets", "3"], "--repets (did you mean --repeats?)"),
        ("benchmark_inference", ["--model_presets", "vtlm-99"], "unknown preset 'vtlm-99'"),
        ("benchmark_inference", ["--config_overrides", "hiden_size=32"], "hiden_size is not a field of the config"),
        ("benchmark_inference", ["--batch_sizes", "1", "0"], "--batch_sizes must each be at least 1, got 1 0"),
        ("benchmark_inference", ["--repeats", "0"], "--repeats must be at least 1, got 0"),
        # A recipe after the flags, and flags that publish nothing without --push_to_hub.
        ("train", ["--num_train_epochs=1", REPO_ROOT / "recipes" / "vtlm-37m.yaml"], "a recipe file comes first"),
        ("train", ["--space_id=you/demo"], "--space_id is published with --push_to_hub only"),
        ("train", ["--hub_vit_model_id=you/vit"], "--hub_vit_model_id is published with --push_to_hub only"),
        # The flag that named the bad repo id; a missing folder named as one, not as a malformed Hub id.
        ("train", ["--push_to_hub", "--hub_token=hf_x"], "error: --hub_model_id is missing: the Hub repo id must be"),
        ("train", ["--model_name_or_path=./missing"], "error: ./missing is neither a folder nor a Hub id"),
        ("train", ["--model_name_or_path=someone/vtlm"], "error: there is no folder someone/vtlm here, and the Hub id"),
        # Dashed flags, as train.py takes them; the folder checked before the (offline) Hub.
        ("push_to_hub", ["--output_dir=x", "--hub-model-id=a/b", "--hub_token=hf_x"], "x is not a saved model folder"),
        ("predict", ["runs/x", "x.png", "--top-k", "0"], "--top_k must be at least 1, got 0"),
    ],
)
def test_every_script_answers_a_mistake_like_train_py(script, args, message, tmp_path, monkeypatch, capsys):
    """One `error:` line, the closest flag suggested, exit status 2: the README's promise, for every script."""
    monkeypatch.chdir(tmp_path)
    status, stderr = run_in_process(capsys, script, *args)
    assert_short_error(status, stderr, message)
    assert len(stderr.strip().splitlines()) == 1, stderr[-2000:]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--per_device_train_batch_size=0"], "error: --per_device_train_batch_size must be at least 1, got 0"),
        (["--learning_rate=abc"], "error: argument --learning_rate/--learning-rate: invalid float value: 'abc'"),
        (["--config_overrides=hidden_size=30"], "hidden_size (30) must be divisible by num_attention_heads"),
        (["--dataset_name=./no-such-folder"], "error: ./no-such-folder is neither a folder nor a Hub id (user/name)"),
        (["--validation_split_size=1.5"], "validation_split_size must be a fraction in (0, 1) or a positive integer"),
    ],
)
def test_bad_values_fail_before_any_work(cifar100_dir, tmp_path, flags, message, capsys):
    output_dir = tmp_path / "run"
    flags = [f"--dataset_name={cifar100_dir}", *TINY_RUN, f"--output_dir={output_dir}", *flags]
    assert_short_error(*run_in_process(capsys, "train", *flags), message)
    assert not output_dir.exists()  # nothing was started, nothing is left behind


@pytest.mark.slow  # the Hub's endpoint and offline mode are read when huggingface_hub is imported
def test_an_unreachable_hub_is_said_in_one_message(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: nothing listens there
    process = run_script("train", *TINY_RUN, f"--output_dir={tmp_path / 'run'}", env=env)
    message = "could not load dataset 'uoft-cs/cifar100': the Hub at http://127.0.0.1:9 cannot"
    assert_short_error(process.returncode, process.stderr, message)


def test_publishing_without_a_token_fails_before_touching_the_folder(tmp_path, monkeypatch, capsys):
    run_dir = make_run_folder(tmp_path / "run")
    before = sorted(path.name for path in run_dir.iterdir())
    monkeypatch.delenv("HF_TOKEN", raising=False)
    status, stderr = run_in_process(capsys, "push_to_hub", "--output_dir", run_dir, "--hub_model_id", "someone/vtlm")
    assert_short_error(status, stderr, "error: no Hub token: set HF_TOKEN")
    assert sorted(path.name for path in run_dir.iterdir()) == before  # no handler.py copied, no card rewritten


@pytest.fixture(scope="module")
def first_run(cifar100_dir, tmp_path_factory):
    """What a user runs first, in fresh interpreters as a user starts them, with the stderr the user sees: a tiny
    one-epoch run, a prediction, an export to both formats, and a user's own script that builds the image processor
    (the README's `build_image_processor()`) and loads the run through the pipeline: (run folder, processes by name)."""
    root = tmp_path_factory.mktemp("first-run")
    run = root / "run"
    flags = [f"--dataset_name={cifar100_dir}", "--validation_split_size=100", "--num_train_epochs=1", *TINY_RUN]
    processes = {"train": run_script("train", *flags, f"--output_dir={run}")}
    assert processes["train"].returncode == 0, processes["train"].stderr[-4000:]
    processes["predict"] = run_script("predict", run, run / "examples" / "00.png")
    processes["export"] = run_script("export", run, "--format=vit,onnx", f"--output_dir={root / 'export'}")
    script = (
        "import sys\n"
        "from transformers import pipeline\n"
        "from vtlm.modeling import build_image_processor\n"
        "build_image_processor().save_pretrained(sys.argv[1])\n"
        "pipeline('image-classification', model=sys.argv[2], trust_remote_code=True)\n"
    )
    processes["user script"] = subprocess.run(
        [sys.executable, "-c", script, str(root / "processor"), str(run)], capture_output=True, text=True
    )
    return run, processes


@pytest.mark.slow  # fresh interpreters: their logs, their warnings
def test_a_run_log_is_readable_and_ends_with_the_results(first_run):
    run, processes = first_run
    log = processes["train"].stderr
    results = json.loads((run / "test_results.json").read_text())
    last_line = [line for line in log.splitlines() if line.strip()][-1]
    assert last_line.endswith(f"test {accuracy_sentence(results, 'test')}"), log[-4000:]
    # The card loads the run back (after the test evaluation, before the last line) without a progress bar.
    assert not any("Loading weights" in line for line in log.splitlines()[-5:]), log[-2000:]
    assert '"id2label"' not in log  # the 100-label config
    assert '"image_mean"' not in log  # the image processor's, printed when the card loads the run back
    # Each `datasets` message once: not also through the root logger, which prefixes its time, level and logger name.
    messages = Counter(re.sub(r"^\S+ \S+ \w+ [\w.]+: ", "", line) for line in log.splitlines() if "dataset" in line)
    assert [message for message, count in messages.items() if count > 1] == []


@pytest.mark.slow  # fresh interpreters: their logs, their warnings
def test_a_first_run_prediction_and_export_print_no_warning(first_run):
    """Without torchvision, transformers warns at any import of `ViTImageProcessor`; the ONNX exporter warns in its
    own words. The export prints its results instead."""
    _, processes = first_run
    for name, process in processes.items():
        assert process.returncode == 0, f"{name}: {process.stderr[-2000:]}"
        warnings = [line for line in process.stderr.splitlines() if re.search("warn|torchvision", line, re.I)]
        assert warnings == [], f"{name}: {warnings}"
    assert "onnx: max logit difference from the source" in processes["export"].stdout


@pytest.mark.slow  # a fresh interpreter: its log, its warnings, its signals
def test_the_log_names_an_image_processor_without_printing_it(tmp_path):
    """transformers logs a loaded image processor's whole JSON at info level: a teacher's in a taught run's log, the
    model's in the demo's. The scripts' logging drops that line and keeps every other."""
    script = (
        "import logging, sys\n"
        "from transformers import AutoImageProcessor\n"
        "from vtlm.modeling import build_image_processor\n"
        "from vtlm.training.cli import setup_logging\n"
        "setup_logging()\n"
        "build_image_processor().save_pretrained(sys.argv[1])\n"
        "AutoImageProcessor.from_pretrained(sys.argv[1])\n"
        "logging.getLogger('training').info('our own line')\n"
    )
    process = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "Image processor saved in" in process.stderr and "loading configuration file" in process.stderr
    assert "our own line" in process.stderr
    assert '"image_mean"' not in process.stderr, process.stderr


def train_help(capsys):
    """What `train.py --help` prints, and its exit status 0."""
    with pytest.raises(SystemExit) as exit:
        run_cli(load_script("train").main, ["--help"])
    assert exit.value.code == 0
    return capsys.readouterr().out


def test_help_lists_the_recipe_flags(capsys):
    help_text = train_help(capsys)
    for flag in ("--model_preset", "--randaugment_prob", "--validation_split_size", "--overwrite_output_dir"):
        assert flag in help_text
    assert "vtlm-37m" in help_text and "vtlm-cct-7-3x1" in help_text  # the presets, from the config


# What takes seconds to import (measured in docs/reliability.md); `--help` and a mistyped flag must not wait for it.
HEAVY_MODULES = ["vtlm.modeling.modeling_vtlm", "transformers.modeling_utils", "transformers.trainer", "datasets"]


@pytest.mark.slow  # what a fresh interpreter imports
def test_help_and_a_bad_flag_answer_before_the_model_code_or_datasets_load():
    """`--help`, a misspelled flag and a bad value, one after the other in one fresh interpreter, as `__main__` runs
    the script: each answers (a misspelling with the closest flag) before anything heavy is imported."""
    attempts = [["--help"], ["--mixup_alhpa", "0.2"], ["--learning_rate", "abc"]]
    probe = (
        "import runpy, sys\n"
        f"for flags in {attempts!r}:\n"
        "    sys.argv = ['train.py', *flags]\n"
        "    try:\n"
        f"        runpy.run_path({str(REPO_ROOT / 'scripts' / 'train.py')!r}, run_name='__main__')\n"
        "    except SystemExit as exit:\n"
        f"        print('loaded:', [name for name in {HEAVY_MODULES!r} if name in sys.modules], 'exit:', exit.code)\n"
    )
    process = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    answers = process.stdout.splitlines()[-3:]
    assert answers == ["loaded: [] exit: 0", "loaded: [] exit: 2", "loaded: [] exit: 2"], process.stderr
    misspelled, bad_value = process.stderr.splitlines()  # one line each, no traceback
    assert misspelled.startswith("error: unknown argument(s): --mixup_alhpa (did you mean --mixup_alpha?) 0.2")
    assert bad_value.startswith("error: argument --learning_rate/--learning-rate: invalid float value: 'abc'")


@pytest.mark.slow  # a training process
def test_ctrl_c_ends_in_one_line_that_says_how_to_resume(cifar100_dir, tmp_path):
    output_dir = tmp_path / "run"
    flags = [f"--dataset_name={cifar100_dir}", "--validation_split_size=100", "--num_train_epochs=50", *TINY_RUN]
    # SIGINT as a terminal delivers it, whatever the runner's disposition (tests/started.py).
    command = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *flags, f"--output_dir={output_dir}"]
    with preloaded(command) as process:
        deadline = time.monotonic() + 240
        while not list(output_dir.glob("checkpoint-*/trainer_state.json")) and time.monotonic() < deadline:
            assert process.poll() is None, "the run ended before its first checkpoint was seen"
            time.sleep(0.5)
        assert list(output_dir.glob("checkpoint-*/trainer_state.json")), "no checkpoint within 240 s"
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    step = stopped_step(process.returncode, process.stderr, output_dir, signal.SIGINT)
    # The step under way, saved as a complete checkpoint: not the epoch's (10 steps) on disk when Ctrl-C came.
    assert step > 10 and process.stderr.strip().splitlines()[-1].startswith("interrupted: ")
    assert not (output_dir / "all_results.json").exists()


def test_help_of_a_no_flag_says_what_it_turns_off(capsys):
    help_text = " ".join(train_help(capsys).split())
    assert "--no_horizontal_flip Turn --horizontal_flip off." in help_text


def test_a_mistyped_config_override_lists_the_fields(tmp_path, capsys):
    status, stderr = run_in_process(capsys, "train", "--config_overrides=hiden_size=30", f"--output_dir={tmp_path}/run")
    assert_short_error(status, stderr, "hiden_size is not a field of the config (did you mean hidden_size?); the")
    assert "num_attention_heads" in stderr and "use_head_tokens" in stderr


def test_a_recipe_that_is_not_valid_yaml_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("learning_rate: 1e-3\nnum_train_epochs: [1\n")
    status, stderr = run_in_process(capsys, "train", recipe, f"--output_dir={tmp_path / 'run'}")
    assert_short_error(status, stderr, f"error: {recipe} is not valid YAML: line 3, column 1: expected ',' or ']'")


@pytest.mark.parametrize(
    "script, args",
    [
        ("train", ["--model_name_or_path={folder}", "--output_dir=run"]),
        ("train", ["--teacher_model_name_or_path={folder}", "--output_dir=run"]),
        ("evaluate_model", ["{folder}"]),
        ("export", ["{folder}", "--output_dir=out"]),
        ("demo", ["{folder}"]),
    ],
)
def test_a_folder_without_config_json_is_named_as_such(tmp_path, script, args, monkeypatch, capsys):
    folder = tmp_path / "no-model-here"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    status, stderr = run_in_process(capsys, script, *(arg.format(folder=folder) for arg in args))
    assert_short_error(status, stderr, f"error: {folder} has no config.json: it is not a saved model folder")


def test_a_bad_evaluation_batch_size_leaves_nothing_behind(tmp_path, capsys):
    save_tiny_model(tmp_path / "model")
    flags = [tmp_path / "model", "--batch_size=0", f"--output_dir={tmp_path / 'out'}"]
    status, stderr = run_in_process(capsys, "evaluate_model", *flags)
    assert_short_error(status, stderr, "error: --batch_size must be at least 1, got 0")
    assert not (tmp_path / "out").exists()


def test_a_record_cut_short_is_named_in_one_line(tmp_path, capsys):
    """A run folder whose `run_arguments.json` a kill cut short: the rerun says which file, not a bare JSON error."""
    record = tmp_path / "run" / "run_arguments.json"
    record.parent.mkdir()
    record.write_text('{"model_arguments": {')
    status, stderr = run_in_process(capsys, "train", f"--output_dir={record.parent}", *TINY_RUN)
    assert_short_error(status, stderr, f"error: {record} is not a complete JSON file (Expecting")
