"""Shared test set-up: offline Hub, a private HF cache, a tiny config, and datasets written in the Hub's schema."""

import contextlib
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# Before transformers or datasets are imported: no network, and a private cache for remote code and datasets.
_HF_HOME = tempfile.mkdtemp(prefix="vtlm-test-hf-home-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_MODULES_CACHE"] = os.path.join(_HF_HOME, "modules")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread, unless the caller says otherwise: tiny models gain nothing from more, and OpenMP's waiting threads spin,
# which would count as CPU time against the fast tier's guard (and slow a shared machine down).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import huggingface_hub.hf_api  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import ClassLabel, Dataset, Features, Image  # noqa: E402
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, RepoUrl  # noqa: E402
from transformers import TrainerState  # noqa: E402

import vtlm.training.hub  # noqa: E402
from vtlm.modeling import CIFAR100_LABELS, VTLMConfig, VTLMForImageClassification, build_image_processor  # noqa: E402
from vtlm.training.data import LABEL_NAME_FIXES  # noqa: E402
from vtlm.training.metrics import wilson_interval  # noqa: E402
from vtlm.training.run_record import save_example_images  # noqa: E402
from vtlm.training.trainer import TRAINING_SECONDS  # noqa: E402

pytest_plugins = ["pytester"]  # test_suite_tiers.py runs the fast tier's guard on tests of its own

REPO_ROOT = Path(__file__).resolve().parents[1]
# The Hub's spelling of CIFAR-100's names, typo included, and its 20 superclasses.
HUB_SPELLINGS = {published: hub for hub, published in LABEL_NAME_FIXES.items()}
HUB_FINE_LABELS = [HUB_SPELLINGS.get(label, label) for label in CIFAR100_LABELS]
HUB_COARSE_LABELS = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
]  # fmt: skip
TINY_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}
# Every DHVT part (SOPE, no learned positions, DAFF, head tokens) on the tiny config: 8 x 8 patches, 64 tokens + CLS.
TINY_DHVT = {
    **TINY_CONFIG,
    "patch_embedding_type": "sope",
    "use_position_embeddings": False,
    "feed_forward_type": "daff",
    "use_head_tokens": True,
}
TINY_OVERRIDES = ",".join(f"{key}={value}" for key, value in TINY_CONFIG.items())
# The CPU-sized flags of every training run in the tests: tiny model, small batches, no TensorBoard, no progress bar.
TINY_RUN = [
    f"--config_overrides={TINY_OVERRIDES}",
    "--per_device_train_batch_size=32",
    "--per_device_eval_batch_size=64",
    "--dataloader_num_workers=0",
    "--report_to=none",
    "--logging_steps=5",
    "--disable_tqdm=true",
]


def load_script(name):
    """`scripts/<name>.py` as a module, to call its `main` in-process: scripts are not a package."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def class_images(labels, image_size=32, seed=0):
    """Learnable RGB images: each class has its own colour and stripe frequency, plus noise. (N, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    palette = np.random.default_rng(1234).uniform(40, 215, size=(labels.max() + 1, 3))
    rows = np.arange(image_size)[None, :, None]
    stripes = 30 * np.sin(rows * (1 + labels[:, None, None] % 7) * np.pi / image_size)  # (N, H, 1)
    images = palette[labels][:, None, None, :] + stripes[..., None] + rng.normal(0, 12, (len(labels), image_size, 1, 3))
    images = np.broadcast_to(images, (len(labels), image_size, image_size, 3))
    return np.clip(images, 0, 255).astype(np.uint8)


def write_hub_dataset(root, splits, label_names=HUB_FINE_LABELS, label_column="fine_label", coarse=True, seed=0):
    """Write `{split: num_rows}` as `root/data/{split}-00000-of-00001.parquet` in the Hub's CIFAR schema.

    The default is `uoft-cs/cifar100`'s schema (`img`, `fine_label`, `coarse_label`); `label_column="label"` with
    `coarse=False` gives `uoft-cs/cifar10`'s. Labels cycle through the classes, so every split has all of them.
    """
    features = {"img": Image(), label_column: ClassLabel(names=list(label_names))}
    if coarse:
        features["coarse_label"] = ClassLabel(names=HUB_COARSE_LABELS)
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    for index, (split, num_rows) in enumerate(splits.items()):
        labels = np.arange(num_rows) % len(label_names)
        columns = {"img": list(class_images(labels, seed=seed + index)), label_column: labels.tolist()}
        if coarse:
            columns["coarse_label"] = (labels * len(HUB_COARSE_LABELS) // len(label_names)).tolist()
        dataset = Dataset.from_dict(columns, features=Features(features))
        dataset.to_parquet(os.path.join(root, "data", f"{split}-00000-of-00001.parquet"))
    return str(root)


# Prepended to scripts that must run as a user without this repository: with the package installed (editable, as in
# CI), `import vtlm.modeling` would otherwise succeed, and transformers could use our classes, not the shipped files.
_BLOCK_MODELING = "import sys\nsys.modules['vtlm'] = None  # not importable\n"


def run_without_modeling(script, *args, cwd, python_path=None):
    """Run Python `script` in a fresh interpreter, in `cwd`, where `modeling` and `training` cannot be imported.

    `python_path` goes in front of the installed packages (to run under another transformers, say).
    """
    path = os.path.join(cwd, "user_script.py")
    with open(path, "w") as file:
        file.write(_BLOCK_MODELING + script)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if python_path:
        env["PYTHONPATH"] = str(python_path)
    return subprocess.run(
        [sys.executable, path, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def save_tiny_model(folder, seed=0):
    """Save a tiny classifier with its image processor, as training leaves a run folder; return it in eval mode."""
    torch.manual_seed(seed)
    model = VTLMForImageClassification(VTLMConfig(**TINY_CONFIG)).eval()
    model.save_pretrained(folder)
    build_image_processor().save_pretrained(folder)
    return model


# Inputs of the fixture run, not expected outputs: the tests check the card renders whatever the run measured.
RESULTS = {
    "train_loss": 3.91,
    "train_runtime": 5025.3,
    "train_samples_per_second": 812.5,
    "eval_loss": 2.104,
    "eval_accuracy": 0.4237,
    "eval_top5_accuracy": 0.7412,
    "eval_superclass_accuracy": 0.5531,
    "eval_samples_per_second": 2950.2,
    "test_loss": 2.151,
    "test_accuracy": 0.4119,
    "test_top5_accuracy": 0.7301,
    "test_superclass_accuracy": 0.5402,
    "test_samples_per_second": 3012.7,
    "eval_num_images": 5000,
    "test_num_images": 10000,
}
# Each split's interval as the metric computes it (`training.metrics`), from its accuracy and number of images.
for _split in ("eval", "test"):
    _correct = round(RESULTS[f"{_split}_accuracy"] * RESULTS[f"{_split}_num_images"])
    _interval = wilson_interval(_correct, RESULTS[f"{_split}_num_images"])
    RESULTS[f"{_split}_accuracy_ci_low"], RESULTS[f"{_split}_accuracy_ci_high"] = _interval
EXAMPLE_CLASSES = (0, 1, 30)


CIFAR100_SIZES = {"train": 45_000, "validation": 5_000, "test": 10_000}


def make_run_folder(
    path,
    results=RESULTS,
    smoke_run=False,
    dataset_name="uoft-cs/cifar100",
    examples=True,
    flags=(),
    sizes=None,
    superclasses=True,
    teacher_forward_flops_per_image=None,
):
    """A run folder as scripts/train.py leaves it, written by the project's own writers (`write_run_info`,
    `save_example_images`, the Trainer's `TrainerState`) from a tiny model, made-up results, the run's `flags`
    (`smoke_run` adds `--max_train_samples 64`) and a label-only stand-in for the dataset's splits: `sizes` images of
    100 classes, by default as many as CIFAR-100 has (64 training images for a smoke run)."""
    from datasets import DatasetDict

    from vtlm.training.arguments import parse_arguments
    from vtlm.training.data import ImageDatasets
    from vtlm.training.flops import count_parameters, describe_compute, flops_per_image
    from vtlm.training.run_record import check_sources_hold_out, write_run_info

    model = save_tiny_model(path)
    (path / "all_results.json").write_text(json.dumps(results))
    (path / "test_results.json").write_text(json.dumps({k: v for k, v in results.items() if k.startswith("test_")}))
    flops = flops_per_image(model.config)
    images_per_epoch = 64 if smoke_run else (sizes or CIFAR100_SIZES)["train"]
    state = TrainerState(
        global_step=30, epoch=3.0, num_train_epochs=3, total_flos=3 * images_per_epoch * flops.training
    )
    for epoch in (1, 2, 3):
        state.log_history.append({"loss": 4.6 - epoch / 2, "learning_rate": 1e-3 / epoch, "epoch": epoch - 0.5})
        state.log_history.append(
            {
                "eval_loss": 4 - epoch / 3,
                "eval_accuracy": 0.1 * epoch,
                "eval_top5_accuracy": 0.25 * epoch,
                "epoch": epoch,
                TRAINING_SECONDS: 1675.1 * epoch,
            }
        )
    state.save_to_json(str(path / "trainer_state.json"))

    flags = [
        f"--output_dir={path}",
        f"--dataset_name={dataset_name}",
        "--num_train_epochs=3",
        "--report_to=none",
        *flags,
    ]
    arguments = parse_arguments(flags + (["--max_train_samples=64"] if smoke_run else []))
    sizes = sizes or ({**CIFAR100_SIZES, "train": 64} if smoke_run else CIFAR100_SIZES)
    splits = DatasetDict({split: Dataset.from_dict({"labels": np.arange(size) % 100}) for split, size in sizes.items()})
    fine_to_coarse = [label // 5 for label in range(100)] if superclasses else None
    data = ImageDatasets(splits, label_names=list(CIFAR100_LABELS), fine_to_coarse=fine_to_coarse)
    records = []
    if examples:
        records = save_example_images(
            path, class_images(list(EXAMPLE_CLASSES)), [CIFAR100_LABELS[i] for i in EXAMPLE_CLASSES]
        )
    compute = describe_compute(flops, count_parameters(model.config), state.total_flos, teacher_forward_flops_per_image)
    validation_splits = check_sources_hold_out(arguments, data.validation_held_out)
    write_run_info(path, arguments, model.config, data, compute, records, validation_splits=validation_splits)
    return path


class FakeHub:
    """Stands in for the Hub behind `HfApi`: repositories, branches, commits, and the files at each branch head."""

    def __init__(self, monkeypatch):
        self.repos, self.branches, self.commits, self.files, self.repo_types = {}, [], [], {}, {}
        self.validated_readmes = []
        hub = self
        # With hf_xet, upload_folder streams through /preupload; without it, it calls create_commit.
        monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)
        # The tests run offline (conftest); this Hub answers.
        monkeypatch.setattr(vtlm.training.hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(vtlm.training.hub, "hub_unreachable_reason", lambda: None)

        def create_repo(api, repo_id, *, private=False, exist_ok=False, repo_type=None, **kwargs):
            hub.repos.setdefault(repo_id, {"private": private})
            hub.repo_types[repo_id] = (repo_type or "model", kwargs.get("space_sdk"))
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_branch(api, repo_id, *, branch, exist_ok=False, repo_type=None, **kwargs):
            hub.branches.append((repo_id, branch))

        def list_repo_files(api, repo_id, *, revision=None, repo_type=None, **kwargs):
            return sorted(hub.files.get((repo_id, revision or "main"), {}))

        def validate_yaml(api, content, *, repo_type=None, token=None):  # the real one posts to /api/validate-yaml
            hub.validated_readmes.append(content)

        def create_commit(api, repo_id, operations, *, commit_message, revision=None, **kwargs):
            files = hub.files.setdefault((repo_id, revision or "main"), {})
            added, deleted = {}, []
            for operation in operations:
                if isinstance(operation, CommitOperationAdd):
                    with operation.as_file() as file:  # read now: upload_folder may stage files in a temp dir
                        added[operation.path_in_repo] = file.read()
                elif isinstance(operation, CommitOperationDelete):
                    deleted.append(operation.path_in_repo)
            files.update(added)
            for path in deleted:
                files.pop(path, None)
            authorization = api._build_hf_headers().get("authorization")
            hub.commits.append(
                {
                    "message": commit_message,
                    "revision": revision,
                    "added": added,
                    "deleted": deleted,
                    "auth": authorization,
                }
            )
            oid = f"{len(hub.commits):040x}"
            return CommitInfo(f"https://huggingface.co/{repo_id}/commit/{oid}", commit_message, "", oid)

        def whoami(api, token=None, **kwargs):
            assert token or api.token or huggingface_hub.get_token(), "publish_run checks for a token first"
            return {"name": "someone"}

        for name, function in (
            ("whoami", whoami),
            ("create_repo", create_repo),
            ("create_branch", create_branch),
            ("list_repo_files", list_repo_files),
            ("_validate_yaml", validate_yaml),
            ("create_commit", create_commit),
        ):
            monkeypatch.setattr(HfApi, name, function)


@pytest.fixture
def hub(monkeypatch):
    return FakeHub(monkeypatch)


# transformers 4.57 (the last 4.x), for the tests of what users on 4.x load: installed by the test command's set-up
# (README, .ci/run), never by the tests themselves, which run offline.
LEGACY_TRANSFORMERS = Path(sys.prefix) / "transformers-4.57"
LEGACY_INSTALL = 'pip install --no-deps --target "$VIRTUAL_ENV/transformers-4.57" -r tests/legacy-requirements.txt'


@pytest.fixture(scope="session")
def legacy_transformers():
    """The folder holding transformers 4.57 and the hub client it needs; the test skips, saying how to install it,
    where it is missing."""
    if not (LEGACY_TRANSFORMERS / "transformers").is_dir():
        pytest.skip(f"transformers 4.57 is not installed in {LEGACY_TRANSFORMERS}: {LEGACY_INSTALL}")
    return LEGACY_TRANSFORMERS


@pytest.fixture
def tiny_config():
    return VTLMConfig(**TINY_CONFIG)


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory):
    """A small dataset in `uoft-cs/cifar100`'s exact schema: 400 train and 200 test images."""
    return write_hub_dataset(tmp_path_factory.mktemp("cifar100"), {"train": 400, "test": 200})


# A token given on the shared run's command line: no file of the run may hold it.
TINY_RUN_TOKEN = "hf_DoNotLeakThisTokenAnywhere123"


def tiny_run_argv(dataset, output_dir):
    """The shared run's command line: two epochs of the default recipe, a hold-out of 100 images, a token."""
    return (
        [f"--dataset_name={dataset}", "--validation_split_size=100", "--num_train_epochs=2"]
        + TINY_RUN
        + [f"--output_dir={output_dir}", f"--hub_token={TINY_RUN_TOKEN}"]
    )


@pytest.fixture(scope="session")
def tiny_run(cifar100_dir, tmp_path_factory):
    """One finished scripts/train.py run on `cifar100_dir` (`tiny_run_argv`), shared by the tests of training,
    evaluation, export, publishing and the card: read it, or copy it before changing it."""
    output_dir = tmp_path_factory.mktemp("tiny-run")
    load_script("train").main(tiny_run_argv(cifar100_dir, output_dir))
    return output_dir


# The fast tier (every test not marked slow, what `python -m pytest` runs) must stay fast: a test whose own call
# spends more CPU time than this fails, named. CPU time (this process and the subprocesses it waited for), not wall
# time, so that a loaded machine does not fail a test. The test's call only: a fixture shared by a module or the
# session is paid once, and `--durations` shows it.
FAST_TEST_CPU_SECONDS = 10


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    start = cpu_seconds()
    result = yield
    spent = cpu_seconds() - start
    if spent > FAST_TEST_CPU_SECONDS and item.get_closest_marker("slow") is None:
        pytest.fail(
            f"{item.nodeid} is in the fast tier but spent {spent:.1f} s of CPU (limit {FAST_TEST_CPU_SECONDS} s): "
            "mark it @pytest.mark.slow, or make it faster",
            pytrace=False,
        )
    return result


# A real browser: Debian's chromium and chromium-driver, driven by Selenium (the demo extra). Nothing is downloaded.
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("selenium") is None:
        return "the demo extra (Selenium) is not installed: pip install -e '.[demo]'"
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return "no Chromium here: apt-get install -y chromium chromium-driver"
    return None


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium; the test skips without one, unless VTLM_REQUIRE_BROWSER is set (as .ci/run sets it)."""
    if reason := missing_browser():
        if os.environ.get("VTLM_REQUIRE_BROWSER"):
            pytest.fail(f"VTLM_REQUIRE_BROWSER is set, but {reason}")
        pytest.skip(reason)
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    flags = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400",
             "--disable-background-networking", "--disable-component-update")  # fmt: skip
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


# transformers.js from its npm package, which .ci/run installs into VTLM_TRANSFORMERS_JS_DIR (the pages import it from
# there, no CDN).
TRANSFORMERS_JS = "@huggingface/transformers"
NODE_MODULES = Path(os.environ.get("VTLM_TRANSFORMERS_JS_DIR", REPO_ROOT / ".node")) / "node_modules"


def require_transformers_js() -> list:
    """The marks of a test module that runs transformers.js: none where its npm package is installed; else a skip
    that says how to install it, or a failure where VTLM_REQUIRE_BROWSER is set (.ci/run)."""
    if (NODE_MODULES / TRANSFORMERS_JS / "dist" / "transformers.js").is_file():
        return []
    reason = f"transformers.js is not installed in {NODE_MODULES.parent} (.ci/run: npm install {TRANSFORMERS_JS})"
    if os.environ.get("VTLM_REQUIRE_BROWSER"):
        pytest.fail(reason, pytrace=False)
    return [pytest.mark.skip(reason=reason)]


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def parse_table(text):
    """`scripts/predict.py`'s printed table as (image, rank, label, score) rows, the image name carried down to its
    later ranks. Labels may hold spaces (Fashion-MNIST's "Ankle boot"): the image is what stands before the rank
    column, the score the last cell."""
    lines = text.strip("\n").splitlines()
    assert lines[0].split() == ["image", "rank", "label", "score"]
    rank_column = lines[0].index("rank")
    rows, image = [], None
    for line in lines[1:]:
        image = line[:rank_column].strip() or image
        rank, label, score = re.fullmatch(r"\s*(\d+)  (.+?)\s+(\d+\.\d+)", line[rank_column:]).groups()
        rows.append((image, int(rank), label, float(score)))
    return rows


def predict_top(folder, paths, top_k=3):
    """`scripts/predict.py`'s answer for the image files `paths`, as it prints it: per image, its top `top_k` as
    (label, score), the scores printed to 4 decimals. Its `main`, in this interpreter: test_predict.py and test_cli.py
    run the script as a user starts it."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        load_script("predict").main([str(folder), *map(str, paths), f"--top_k={top_k}"])
    answers = {}
    for image, _, label, score in parse_table(printed.getvalue()):
        answers.setdefault(image, []).append((label, score))
    return [answers[str(path)] for path in paths]
