"""scripts/train.py end to end on datasets written in the Hub's schema: CPU, offline, tiny configs."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import (
    REPO_ROOT,
    TINY_OVERRIDES,
    TINY_RUN,
    TINY_RUN_TOKEN,
    load_script,
    tiny_run_argv,
    write_hub_dataset,
)
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from started import launched
from test_resume import assert_same_weights, signal_after_first_loss, stopped_step

from vtlm.modeling import CIFAR100_LABELS, PRESETS, VTLMConfig
from vtlm.training.arguments import ModelArguments, parse_arguments
from vtlm.training.build import build_config, build_model
from vtlm.training.flops import flops_per_image
from vtlm.training.run_record import is_all_of_cifar100, run_arguments

TRAIN = str(REPO_ROOT / "scripts" / "train.py")
train = load_script("train")


def read_json(path):
    with open(path) as file:
        return json.load(file)


def snapshot(folder):
    return {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in folder.rglob("*") if path.is_file()}


def test_a_finished_run_rerun_with_the_same_arguments_changes_nothing(tiny_run, cifar100_dir, caplog):
    before = snapshot(tiny_run)
    with caplog.at_level("INFO"):
        train.main(tiny_run_argv(cifar100_dir, tiny_run) + ["--logging_steps=3"])  # logging is not the run
    assert "already holds this run, finished: nothing to do" in caplog.text
    # How to publish it, without retraining: the flags push_to_hub.py takes.
    assert f"`python scripts/push_to_hub.py --output_dir {tiny_run} --hub_model_id USER/NAME`" in caplog.text
    assert snapshot(tiny_run) == before


@pytest.mark.parametrize(
    "flags, difference",
    [
        (["--learning_rate=5e-4"], "--learning_rate 0.001 -> 0.0005"),
        ([f"--config_overrides={TINY_OVERRIDES},pooling=mean"], "--config_overrides"),
    ],
)
def test_a_rerun_with_other_arguments_is_refused_before_any_work(tiny_run, cifar100_dir, flags, difference):
    before = snapshot(tiny_run)
    with pytest.raises(ValueError, match="holds a finished run made with other arguments") as error:
        train.main(tiny_run_argv(cifar100_dir, tiny_run) + flags)
    assert difference in str(error.value) and str(tiny_run) in str(error.value)
    assert "--output_dir, or --overwrite_output_dir" in str(error.value)
    assert snapshot(tiny_run) == before


@pytest.mark.slow  # two training runs of its own
def test_overwrite_output_dir_starts_afresh(cifar100_dir, tmp_path):
    argv = [f"--dataset_name={cifar100_dir}", "--validation_split_size=100", "--max_steps=2", "--eval_strategy=steps"]
    argv += ["--eval_steps=1", "--save_strategy=steps", "--save_steps=1", *TINY_RUN, f"--output_dir={tmp_path}"]
    train.main(argv + ["--learning_rate=1e-3"])
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    train.main(argv + ["--learning_rate=2e-3", "--overwrite_output_dir", "--max_steps=1", "--save_steps=1"])
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]
    assert read_json(tmp_path / "run_info.json")["training_arguments"]["learning_rate"] == 2e-3
    assert read_json(tmp_path / "trainer_state.json")["global_step"] == 1
    assert read_json(tmp_path / "run_info.json")["smoke_run"] is True  # cut short by --max_steps


def test_run_leaves_a_loadable_model_folder(tiny_run):
    files = set(os.listdir(tiny_run))
    expected = {"config.json", "configuration_vtlm.py", "modeling_vtlm.py", "model.safetensors"}
    assert expected | {"preprocessor_config.json", "all_results.json", "test_results.json", "run_info.json"} <= files
    config = read_json(tiny_run / "config.json")
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    assert config["hidden_size"] == 32 and config["drop_path_rate"] == 0.1 and config["hidden_dropout_prob"] == 0.0
    # Labels come from the dataset's ClassLabel, with the Hub's "cra" published as "crab".
    assert config["id2label"]["26"] == "crab" and len(config["id2label"]) == 100
    assert len(load_file(tiny_run / "model.safetensors")) > 0


def test_the_record_counts_the_compute_the_run_spent(tiny_run):
    """The FLOPs per image the run's trainer counted, once, for its `total_flos` and for the record."""
    compute = read_json(tiny_run / "run_info.json")["compute"]
    flops = flops_per_image(VTLMConfig.from_pretrained(tiny_run))
    assert (compute["forward_flops_per_image"], compute["training_flops_per_image"]) == (flops.forward, flops.training)
    total_flos = read_json(tiny_run / "trainer_state.json")["total_flos"]
    assert compute["training_flops"] == compute["training_images"] * flops.training == pytest.approx(total_flos)
    assert compute["training_images"] == 2 * (400 - 100)  # two epochs of the images not held out
    assert compute["total_flops"] == compute["training_flops"]  # no teacher


def test_selection_on_validation_and_test_evaluated_once_at_the_end(tiny_run):
    results = read_json(tiny_run / "all_results.json")
    for split, num_images in (("eval", 100), ("test", 200)):
        for metric in ("accuracy", "top5_accuracy", "superclass_accuracy"):
            assert 0 <= results[f"{split}_{metric}"] <= 1
        assert results[f"{split}_top5_accuracy"] >= results[f"{split}_accuracy"]
        assert results[f"{split}_num_images"] == num_images
    test_results = read_json(tiny_run / "test_results.json")
    assert test_results.keys() - {"epoch"} == {key for key in results if key.startswith("test_")}
    # The Trainer's estimate counts text tokens (0 for images); ours is the counted FLOPs of every image trained on.
    config = VTLMConfig.from_pretrained(tiny_run)
    assert results["total_flos"] == flops_per_image(config).training * 300 * 2  # 300 training images, 2 epochs

    state = read_json(tiny_run / "trainer_state.json")
    assert state["best_metric"] == max(e["eval_accuracy"] for e in state["log_history"] if "eval_accuracy" in e)
    assert not any(key.startswith("test_") for entry in state["log_history"] for key in entry)


def test_run_info_records_config_arguments_and_commit(tiny_run):
    info = read_json(tiny_run / "run_info.json")
    assert info["config"]["hidden_size"] == 32
    assert info["training_arguments"]["learning_rate"] == 1e-3
    assert info["augmentation_arguments"]["mixup_alpha"] == 0.8
    assert info["data_arguments"]["validation_split_size"] == 100
    assert info["smoke_run"] is False  # two whole epochs on all of its dataset: a real run, if a small one
    assert info["git_commit"] is None or len(info["git_commit"]) >= 40


def test_card_has_widget_examples_from_the_test_split(tiny_run):
    examples = sorted(os.listdir(tiny_run / "examples"))
    assert examples == ["00.png", "01.png", "02.png", "03.png"]
    recorded = json.loads((tiny_run / "run_info.json").read_text())["examples"]
    assert [example["label"] for example in recorded] == ["apple", "aquarium_fish", "baby", "bear"]
    card = (tiny_run / "README.md").read_text()
    assert "| ![apple](examples/00.png) | apple |" in card


def test_push_without_a_repo_id_fails_before_training(cifar100_dir, tmp_path):
    with pytest.raises(ValueError, match="namespace/name"):
        train.main([f"--dataset_name={cifar100_dir}", "--push_to_hub", f"--output_dir={tmp_path}"] + TINY_RUN)
    assert not os.path.exists(tmp_path / "run_info.json")


def test_token_is_never_written(tiny_run):
    for folder, _, names in os.walk(tiny_run):
        for name in names:
            with open(os.path.join(folder, name), "rb") as file:
                assert TINY_RUN_TOKEN.encode() not in file.read(), os.path.join(folder, name)


@pytest.mark.slow  # six epochs, to see it learn
def test_training_learns_a_learnable_task(tmp_path):
    """CIFAR-10's schema (`img`, `label`): 10 classes of coloured stripes; accuracy must rise far above chance."""
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    splits = {"train": 600, "test": 200}
    data = write_hub_dataset(tmp_path / "cifar10", splits, names, label_column="label", coarse=False)
    train.main(
        [f"--dataset_name={data}", "--label_column_name=label", "--validation_split_size=100"]
        + TINY_RUN
        + ["--num_train_epochs=6", "--learning_rate=3e-3", "--warmup_steps=5"]
        + ["--mixup_prob=0", "--randaugment_num_ops=0"]
        + [f"--output_dir={tmp_path / 'run'}"]
    )
    results = read_json(tmp_path / "run" / "all_results.json")
    assert results["eval_accuracy"] > 0.6 and results["test_accuracy"] > 0.6  # chance is 0.1
    assert "test_superclass_accuracy" not in results
    assert read_json(tmp_path / "run" / "config.json")["id2label"]["9"] == "truck"
    card = (tmp_path / "run" / "README.md").read_text()
    assert "to tell its\n10 classes apart" in card and "The model knows only the 10 classes of cifar10" in card


@pytest.mark.slow  # a run of its own, on a dataset of its own
def test_a_complete_run_on_another_100_class_dataset_claims_results_on_that_dataset(tmp_path):
    names = [f"shape_{index:02d}" for index in range(100)]
    data = write_hub_dataset(tmp_path / "shapes-100", {"train": 400, "test": 200}, names, coarse=False)
    train.main(
        [
            f"--dataset_name={data}",
            "--validation_split_size=100",
            "--num_train_epochs=1",
            *TINY_RUN,
            f"--output_dir={tmp_path / 'run'}",
        ]
    )
    readme = tmp_path / "run" / "README.md"
    card = ModelCard.load(readme)
    assert {(result.dataset_type, result.dataset_name) for result in card.data.eval_results} == {
        ("shapes-100", "shapes-100")
    }
    assert {result.dataset_split for result in card.data.eval_results} == {"train", "test"}
    text = readme.read_text()
    assert "CIFAR" not in text and "Smoke run" not in text and "original model" not in text
    for published in ("README.md", "run_info.json", "trainer_state.json"):
        assert str(tmp_path) not in (tmp_path / "run" / published).read_text(), published
    assert "(3 images per class)" in text  # 400 training images less the hold-out of 100: 3 of each class


def launch_command(launcher, preset, dataset, output_dir):
    """Two processes of train.py from the README's launcher (no ACCELERATE_USE_CPU) or torchrun; bit for bit where a
    stopped and resumed run is compared with an unbroken one (`RESUMED_LAUNCH`)."""
    launch = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"],
        "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2"],
    }[launcher]
    args = [f"--dataset_name={dataset}", "--validation_split_size=101", "--num_train_epochs=1", "--mixup_prob=0"]
    args += [f"--model_preset={preset}", *TINY_RUN, f"--output_dir={output_dir}", "--logging_steps=1"]
    return [*launch, TRAIN, *args, *(["--full_determinism"] if (launcher, preset) == RESUMED_LAUNCH else [])]


LAUNCHER_ENVIRONMENT = {
    **{key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"},
    "OMP_NUM_THREADS": "1",
}
# The README's launcher and torchrun, on the original layout, a conv tokenizer, and DHVT's BatchNorm (per-process
# statistics under gloo).
LAUNCHES = [("torchrun", "vtlm-37m"), ("accelerate", "vtlm-cct-7-3x1"), ("accelerate", "vtlm-dhvt-t2")]
RESUMED_LAUNCH = ("accelerate", "vtlm-cct-7-3x1")  # also stopped by SIGTERM and resumed


@pytest.fixture(scope="module")
def ddp_run(request, cifar100_dir, tmp_path_factory):
    """(launcher, preset, output folder, finished process) of an unbroken 2-process run, once per module."""
    launcher, preset = request.param
    root = tmp_path_factory.mktemp(f"ddp-{launcher}-{preset}")
    command = launch_command(launcher, preset, cifar100_dir, root / "ddp")
    run = subprocess.run(command, env=LAUNCHER_ENVIRONMENT, capture_output=True, text=True, timeout=600)
    return launcher, preset, root, run


@pytest.mark.slow  # two processes from a launcher, each a fresh interpreter
@pytest.mark.skipif(torch.cuda.is_available(), reason="what a launcher does on a machine without CUDA")
@pytest.mark.parametrize("ddp_run", LAUNCHES, indirect=True, ids="-".join)
def test_a_launcher_on_a_cpu_trains_one_ddp_run(ddp_run):
    """Two processes from a launcher are one real DDP run over gloo, not two runs writing one output_dir: each rank
    has half of every epoch, the loss is not scaled by the world size, and every validation image is seen once."""
    _, _, root, run = ddp_run
    output_dir = root / "ddp"
    assert run.returncode == 0, run.stderr[-4000:]
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in run.stderr
    assert sorted(p.name for p in root.iterdir()) == ["ddp"]
    assert read_json(output_dir / "run_info.json")["hardware"]["num_processes"] == 2
    state = read_json(output_dir / "trainer_state.json")
    # 299 training images in batches of 32 on each of 2 ranks: 5 steps; one process alone would take 10.
    assert state["global_step"] == math.ceil(299 / (2 * 32))
    results = read_json(output_dir / "all_results.json")
    # 101 validation images over 2 ranks: padded to 102 by the sampler, deduplicated by gather_for_metrics.
    assert results["eval_num_images"] == 101
    assert results["test_num_images"] == 200
    # An untrained 100-way classifier starts near ln(100) = 4.6; a loss multiplied by the world size would be ~9.2.
    first_loss = next(entry["loss"] for entry in state["log_history"] if "loss" in entry)
    assert abs(first_loss - math.log(100)) < 0.5


@pytest.mark.slow  # two launches of two processes each
@pytest.mark.skipif(torch.cuda.is_available(), reason="what a launcher does on a machine without CUDA")
@pytest.mark.parametrize("ddp_run", [RESUMED_LAUNCH], indirect=True, ids="-".join)
def test_sigterm_to_a_launcher_stops_its_processes_at_one_step_and_the_run_resumes_to_identical_weights(
    ddp_run, cifar100_dir, tmp_path
):
    """Kubernetes sends SIGTERM to a container's first process: here `accelerate launch`, whose torch agent sends it
    on to each process (and kills them 30 s later). The processes agree on one step, save it once, and one line says
    how to resume; the same command then ends as the unbroken run does."""
    launcher, preset, root, clean = ddp_run
    assert clean.returncode == 0, clean.stderr[-4000:]
    stopped = tmp_path / "stopped"
    command = launch_command(launcher, preset, cifar100_dir, stopped)
    step = stopped_step(*signal_after_first_loss(launched(command, LAUNCHER_ENVIRONMENT)), stopped)
    assert step < 5  # of the run's 5
    rerun = subprocess.run(command, env=LAUNCHER_ENVIRONMENT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "resuming from" in rerun.stderr, rerun.stderr[-4000:]
    assert_same_weights(root / "ddp", stopped)


def test_a_saved_model_records_no_preset_it_did_not_use():
    """--model_name_or_path's config is the architecture: a preset given with it (a recipe sets one) is not recorded,
    so the card does not show a preset above another model's fields."""
    arguments = parse_arguments(["--model_name_or_path=runs/saved", "--model_preset=vtlm-dhvt-t2"])
    assert arguments[0].model_preset is None
    assert run_arguments(arguments)["model_arguments"]["model_preset"] is None
    assert parse_arguments(["--model_preset=vtlm-dhvt-t2"])[0].model_preset == "vtlm-dhvt-t2"


def test_config_overrides_are_typed_and_checked():
    def overridden(text):
        return build_config(ModelArguments(model_preset="vtlm-5m", config_overrides=text))

    config = overridden("hidden_size=64, qkv_bias=false,num_attention_heads=4,pooling=mean")
    assert (config.hidden_size, config.qkv_bias, config.num_attention_heads, config.pooling) == (64, False, 4, "mean")
    assert config.num_hidden_layers == 6  # the preset's, where no override says otherwise
    with pytest.raises(ValueError, match=r"hidden_dim is not a field of the config \(did you mean hidden_size\?\)"):
        overridden("hidden_dim=64")
    with pytest.raises(ValueError, match="--config_overrides 'hidden_size=big'"):
        overridden("hidden_size=big")
    with pytest.raises(ValueError, match="qkv_bias=maybe.*can't derive true or false"):
        overridden("qkv_bias=maybe")
    with pytest.raises(ValueError, match="expected key=value,key=value, got 'hidden_size'"):
        overridden("hidden_size")


def test_recipe_fields_have_one_flag_only():
    with pytest.raises(ValueError, match="set drop_path_rate with its own flag"):
        build_config(ModelArguments(config_overrides="drop_path_rate=0.3"))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_recipe_alone_decides_dropout_and_stochastic_depth(preset):
    """No preset carries a value that train.py's flags would silently replace: every run trains with the flags'."""
    assert not {"drop_path_rate", "hidden_dropout_prob"} & set(PRESETS[preset])
    flags = ModelArguments(model_preset=preset)
    config = build_config(flags)
    assert (config.drop_path_rate, config.hidden_dropout_prob) == (flags.drop_path_rate, flags.hidden_dropout_prob)
    config = build_config(ModelArguments(model_preset=preset, drop_path_rate=0.3, hidden_dropout_prob=0.2))
    assert (config.drop_path_rate, config.hidden_dropout_prob) == (0.3, 0.2)


def test_invalid_override_value_fails_before_training(cifar100_dir, tmp_path):
    with pytest.raises(ValueError, match="hidden_size"):
        train.main([f"--dataset_name={cifar100_dir}", "--config_overrides=hidden_size=30", f"--output_dir={tmp_path}"])


def test_arguments_from_a_yaml_file(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_preset: vtlm-5m\nnum_train_epochs: 3\nmixup_alpha: 0.2\noutput_dir: somewhere\n")
    model_args, data_args, augmentation_args, training_args, *_ = parse_arguments([str(recipe)])
    assert model_args.model_preset == "vtlm-5m" and training_args.num_train_epochs == 3
    assert augmentation_args.mixup_alpha == 0.2 and data_args.dataset_name == "uoft-cs/cifar100"


def test_only_all_of_cifar100_is_a_full_run():
    """A local copy of CIFAR-100 counts as CIFAR-100; anything smaller, or with other labels, is a smoke run."""

    def splits(train, validation, test, labels=CIFAR100_LABELS):
        sizes = {"train": train, "validation": validation, "test": test}
        return SimpleNamespace(datasets={k: range(v) for k, v in sizes.items()}, label_names=list(labels))

    assert is_all_of_cifar100(splits(45_000, 5_000, 10_000))
    assert is_all_of_cifar100(splits(40_000, 10_000, 10_000))  # another validation size is still all of it
    assert not is_all_of_cifar100(splits(45_000, 5_000, 1_000))
    assert not is_all_of_cifar100(splits(44_000, 5_000, 10_000))
    assert not is_all_of_cifar100(splits(45_000, 5_000, 10_000, labels=[f"c{i}" for i in range(100)]))


def test_continuing_from_a_saved_model_validates_overrides_and_keeps_its_weights(tiny_run, tmp_path):
    labels = list(CIFAR100_LABELS)
    model_args = ModelArguments(model_name_or_path=str(tiny_run), config_overrides="pooling=max")
    with pytest.raises(ValueError, match="pooling"):
        build_config(model_args)
    # Another hidden size cannot reuse the weights: an error, never a silent re-initialisation.
    model_args = ModelArguments(model_name_or_path=str(tiny_run), config_overrides="hidden_size=64")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        build_model(model_args, build_config(model_args), labels)
    model_args = ModelArguments(model_name_or_path=str(tiny_run))
    model = build_model(model_args, build_config(model_args), labels)
    saved = load_file(tiny_run / "model.safetensors")
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in saved.items())


def test_defaults_are_the_headline_recipe():
    model_args, data_args, augmentation_args, training_args, *_ = parse_arguments([])
    assert model_args.model_preset == "vtlm-37m" and training_args.num_train_epochs == 300
    assert training_args.output_dir == "runs/vtlm-37m-cifar100"
    assert data_args.dataset_name == "uoft-cs/cifar100" and data_args.validation_split_size == 0.1
    assert training_args.load_best_model_at_end and training_args.metric_for_best_model == "accuracy"
    # fp16 as asked for, whatever the host: a CPU trains in fp32 (`test_the_recipe_is_recorded_as_asked_on_any_host`).
    assert training_args.precision_asked == "fp16" and training_args.to_dict()["fp16"] is True


@pytest.fixture
def simulated_host(monkeypatch):
    """`simulated_host(cuda)` makes the arguments see a host with or without CUDA (TrainingArguments then picks
    cuda:0 or the CPU). Accelerate's process state, shared by every TrainingArguments, is rebuilt each time and after
    the test: no other test meets a simulated host."""
    from accelerate.state import PartialState

    def simulate(cuda):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
        PartialState._reset_state()

    yield simulate
    PartialState._reset_state()


def test_the_recipe_is_recorded_as_asked_on_any_host(simulated_host):
    """fp16 trains on CUDA only; the recorded recipe (and so a rerun's comparison) is the same on either host."""
    simulated_host(cuda=True)
    on_cuda = parse_arguments(["--report_to=none"])
    simulated_host(cuda=False)
    on_cpu = parse_arguments(["--report_to=none"])
    assert (on_cuda[3].fp16, on_cuda[3].precision, on_cuda[3].dataloader_pin_memory) == (True, "fp16", True)
    assert (on_cpu[3].fp16, on_cpu[3].precision, on_cpu[3].dataloader_pin_memory) == (False, "fp32", False)
    assert on_cuda[3].precision_asked == on_cpu[3].precision_asked == "fp16"
    assert run_arguments(on_cuda) == run_arguments(on_cpu)
    assert run_arguments(on_cpu)["training_arguments"]["fp16"] is True


def test_bf16_replaces_the_default_fp16_in_the_record_too():
    training_args = parse_arguments(["--report_to=none", "--bf16", "--use_cpu"])[3]
    assert (training_args.precision, training_args.precision_asked) == ("bf16", "bf16")
    assert training_args.to_dict()["fp16"] is False
