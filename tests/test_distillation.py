"""Teaching a plain model from a teacher (training/distillation.py): end to end through scripts/train.py on a
CIFAR-100-schema dataset, and the teacher's view of the batch, the losses and the projections on their own."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, TINY_CONFIG, TINY_OVERRIDES, TINY_RUN, load_script
from safetensors.torch import load_file
from transformers import ResNetConfig, ResNetForImageClassification

from vtlm.modeling import CIFAR100_LABELS, VTLMConfig, VTLMForImageClassification, build_image_processor
from vtlm.training.arguments import (
    AugmentationArguments,
    DataArguments,
    DistillationArguments,
    ModelArguments,
    VTLMTrainingArguments,
    parse_arguments,
)
from vtlm.training.augmentation import augmentation_seed
from vtlm.training.build import build_augmentation, build_config, build_distillation, build_trainer
from vtlm.training.cli import run_cli
from vtlm.training.data import load_image_datasets
from vtlm.training.distillation import (
    GUIDANCE_FILE,
    GUIDANCE_MODULE,
    FeatureGuidance,
    output_distillation_loss,
    patch_token_map,
)
from vtlm.training.export import to_vit
from vtlm.training.rerun import RunMismatchError
from vtlm.training.run_record import NOT_DEFINING, differing_arguments, run_arguments, source_validation_split

train = load_script("train")
STEPS = ["--max_steps=4", "--eval_strategy=steps", "--save_strategy=steps", "--eval_steps=2", "--save_steps=2"]


def teacher_argv(dataset, output_dir):
    """CCT-7/3x1 cut to TINY_CONFIG's size: a conv tokenizer with 256 tokens and sequence pooling (no CLS token)."""
    overrides = f"--config_overrides={TINY_OVERRIDES}"
    return [f"--dataset_name={dataset}", "--validation_split_size=100", "--num_train_epochs=1"] + TINY_RUN + [
        "--model_preset=vtlm-cct-7-3x1", overrides, f"--output_dir={output_dir}"
    ]  # fmt: skip


def student_argv(dataset, output_dir, teacher, *flags):
    """The plain tiny patch-4 model (64 tokens and a CLS token), taught by `teacher`, in a 4-step smoke run with
    gradient accumulation and output distillation on top of the default feature guidance."""
    return (
        [f"--dataset_name={dataset}", "--validation_split_size=100", *TINY_RUN, *STEPS]
        + ["--gradient_accumulation_steps=2", "--distillation_type=soft", "--save_total_limit=10", "--logging_steps=1"]
        + [f"--teacher_model_name_or_path={teacher}", f"--output_dir={output_dir}", *flags]
    )


# The teacher's and the student's runs, and the tests that read them or train again: the slow tier. The fast tier
# checks distillation's parts in-process (losses, token grids, the teacher's batch, refusals).
@pytest.fixture(scope="module")
def teacher_run(cifar100_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("teacher") / "tiny-cct-teacher"
    train.main(teacher_argv(cifar100_dir, output_dir))
    return output_dir


@pytest.fixture(scope="module")
def student_run(cifar100_dir, teacher_run, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("student") / "student"
    train.main(student_argv(cifar100_dir, output_dir, teacher_run, "--load_best_model_at_end=false"))
    return output_dir


def read_json(path):
    return json.loads(path.read_text())


@pytest.mark.slow  # the teacher's and student's runs
def test_a_taught_student_is_exactly_its_preset_and_exports_to_the_built_in_vit(student_run):
    model = VTLMForImageClassification.from_pretrained(student_run).eval()
    assert model.config.attention_initializer == "mimetic"  # the default with a teacher
    plain_keys = set(VTLMForImageClassification(model.config).state_dict())
    for folder in (student_run, student_run / "checkpoint-2", student_run / "checkpoint-4"):
        assert set(load_file(folder / "model.safetensors")) == plain_keys, folder
    pixel_values = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(to_vit(model)(pixel_values).logits, model(pixel_values).logits, atol=1e-5, rtol=0)


@pytest.mark.slow  # the teacher's and student's runs
def test_the_log_has_each_part_of_the_loss(student_run):
    logs = [entry for entry in read_json(student_run / "trainer_state.json")["log_history"] if "loss" in entry]
    assert logs and all(
        entry["label_loss"] > 0 and entry["distillation_loss"] >= 0 and entry["feature_guidance_loss"] > 0
        for entry in logs
    )


def test_a_run_without_a_teacher_is_recorded_as_before_and_a_teacher_makes_another_run():
    plain = run_arguments(parse_arguments([]))
    taught = run_arguments(parse_arguments(["--teacher_model_name_or_path=teacher"]))
    assert "distillation_arguments" not in plain and taught["distillation_arguments"]["feature_guidance_weight"] == 1
    assert "--teacher_model_name_or_path None -> teacher" in differing_arguments(plain, taught)
    assert "--teacher_model_name_or_path teacher -> None" in differing_arguments(taught, plain)


@pytest.mark.slow  # the teacher's and student's runs
def test_the_projections_are_trained_and_kept_in_every_checkpoint_only(student_run):
    early, late = (load_file(student_run / f"checkpoint-{step}" / GUIDANCE_FILE) for step in (2, 4))
    assert early.keys() == late.keys() and len(early) == 2 * TINY_CONFIG["num_hidden_layers"]  # weight, bias a block
    assert all(not torch.equal(early[name], late[name]) for name in early)  # in the optimizer: they learn
    assert not (student_run / GUIDANCE_FILE).exists()


@pytest.mark.slow  # the teacher's and student's runs
def test_a_resumed_run_ends_with_the_weights_of_an_unbroken_one(cifar100_dir, teacher_run, student_run, tmp_path):
    """The run is cut after its first checkpoint and rerun: it resumes the model, the optimizer and the projections
    (without them its last steps would compute other losses), and ends where the unbroken run ended."""
    resumed = tmp_path / "student"
    shutil.copytree(student_run / "checkpoint-2", resumed / "checkpoint-2")
    train.main(student_argv(cifar100_dir, resumed, teacher_run, "--load_best_model_at_end=false"))
    assert read_json(resumed / "run_info.json")["resumed_from_checkpoint"] == "checkpoint-2"
    unbroken, weights = load_file(student_run / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name, tensor in unbroken.items():
        torch.testing.assert_close(weights[name], tensor, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize(
    "flag, difference",
    [
        ("--feature_guidance_weight=0.5", "--feature_guidance_weight 1.0 -> 0.5"),
        ("--distillation_type=hard", "--distillation_type soft -> hard"),
        ("--teacher_model_name_or_path=another-teacher", "--teacher_model_name_or_path"),
    ],
)
@pytest.mark.slow  # the teacher's and student's runs
def test_another_teacher_or_weight_is_another_run(cifar100_dir, teacher_run, student_run, flag, difference):
    with pytest.raises(RunMismatchError, match="made with other arguments") as error:
        train.main(student_argv(cifar100_dir, student_run, teacher_run, "--load_best_model_at_end=false", flag))
    assert difference in str(error.value)
    assert not any(name.startswith(NOT_DEFINING) for name in DistillationArguments.__dataclass_fields__)


@pytest.mark.slow  # the teacher's and student's runs
def test_run_info_and_card_name_the_teacher_and_never_a_local_path(student_run, teacher_run):
    run_info = read_json(student_run / "run_info.json")
    teacher = run_info["teacher"]
    assert teacher["name"] == teacher_run.name and teacher["hub_id"] is None
    assert run_info["distillation_arguments"]["teacher_model_name_or_path"] == teacher_run.name
    assert teacher["test_accuracy"] == read_json(teacher_run / "all_results.json")["test_accuracy"]
    assert teacher["trained_on"] == read_json(teacher_run / "run_info.json")["dataset"]["name"]
    assert teacher["saw_only_this_dataset"] is True  # trained from scratch on the very same dataset
    assert teacher["method"] == {
        "feature_guidance_weight": 1.0,
        "feature_guidance_layers": "all",
        "distillation_type": "soft",
        "distillation_alpha": 0.5,
        "distillation_temperature": 1.0,
        "attention_initializer": "mimetic",
    }
    card = (student_run / "README.md").read_text()
    for text in ((student_run / "run_info.json").read_text(), card):
        assert str(teacher_run.parent) not in text
    assert f"from scratch on `{run_info['dataset']['name']}`, taught by\n`{teacher_run.name}`" in card
    assert "| teacher's test top-1 | " in card and "| `teacher_model_name_or_path` | " in card


def test_a_teacher_with_other_labels_is_refused_before_training(cifar100_dir, tmp_path, capsys):
    labels = list(CIFAR100_LABELS)
    labels[3], labels[4] = labels[4], labels[3]
    teacher = tmp_path / "swapped-labels"
    VTLMForImageClassification(VTLMConfig(**TINY_CONFIG, id2label=dict(enumerate(labels)))).save_pretrained(teacher)
    build_image_processor().save_pretrained(teacher)
    output_dir = tmp_path / "student"
    assert run_cli(train.main, student_argv(cifar100_dir, output_dir, teacher)) == 2
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]  # after the data's progress bars
    assert error.startswith(f"error: --teacher_model_name_or_path {teacher}: its label 3 is")
    assert "same names in the same order" in error and stderr.count("error:") == 1 and "Traceback" not in stderr
    assert not any(output_dir.glob("checkpoint-*"))


def test_a_missing_teacher_is_refused_before_the_dataset_is_loaded(cifar100_dir, tmp_path, capsys, monkeypatch):
    def load_image_datasets(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the teacher was checked")

    monkeypatch.setattr("vtlm.training.data.load_image_datasets", load_image_datasets)
    missing = tmp_path / "no-such-teacher"
    assert run_cli(train.main, student_argv(cifar100_dir, tmp_path / "student", missing)) == 2
    stderr = capsys.readouterr().err
    assert stderr.strip().splitlines()[-1] == f"error: {missing} is neither a folder nor a Hub id (user/name)"
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "flag, difference",
    [("--seed=1", "--seed 42 -> 1"), ("--validation_split_size=101", "--validation_split_size 100.0 -> 101.0")],
)
@pytest.mark.slow  # the teacher's run
def test_a_teacher_that_trained_on_the_validation_images_is_refused(
    cifar100_dir, teacher_run, tmp_path, capsys, monkeypatch, flag, difference
):
    """Another hold-out of the same dataset: some of this run's validation images are in the teacher's training
    split, and the best epoch would be chosen on them."""

    def build_model(*args, **kwargs):
        raise AssertionError("the model was built before the teacher's hold-out was checked")

    monkeypatch.setattr("vtlm.training.build.build_model", build_model)
    assert run_cli(train.main, student_argv(cifar100_dir, tmp_path / "student", teacher_run, flag)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: --teacher_model_name_or_path {teacher_run} held out another validation split")
    assert difference in error
    assert not (tmp_path / "student").exists()


@pytest.mark.slow  # the teacher's run
def test_a_datasets_own_validation_split_is_the_same_for_any_seed(cifar100_dir, teacher_run):
    data_args = DataArguments(dataset_name=cifar100_dir, validation_split_size=100)
    assert source_validation_split(teacher_run, data_args, seed=42) == ("same", [])
    assert source_validation_split(teacher_run, data_args, seed=1)[0] == "other"
    assert source_validation_split(teacher_run, data_args, seed=1, held_out=False) == ("same", [])  # no hold-out
    other = DataArguments(dataset_name="someone/other-data", validation_split_size=100)
    assert source_validation_split(teacher_run, other, seed=42) == ("another dataset", [])
    assert source_validation_split("someone/no-record", data_args, seed=42) == ("not recorded", [])


@pytest.mark.slow  # a training run of its own
def test_a_built_in_cnn_teaches_through_its_feature_maps(cifar100_dir, tmp_path):
    """transformers' own ResNet, loaded by the Auto classes: its stages' 4-D feature maps guide the model's blocks
    (the last, coarser map resized up to the model's grid), and with no VTLM run record the card does not call the
    model trained from scratch."""
    resnet = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    resnet.id2label = dict(enumerate(CIFAR100_LABELS))
    teacher = tmp_path / "tiny-resnet"
    ResNetForImageClassification(resnet).save_pretrained(teacher)
    build_image_processor(image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)).save_pretrained(teacher)
    output_dir = tmp_path / "student"
    train.main(student_argv(cifar100_dir, output_dir, teacher, "--distillation_type=none"))

    projections = load_file(output_dir / "checkpoint-4" / GUIDANCE_FILE)
    hidden_size = TINY_CONFIG["hidden_size"]
    # block 0 is matched to the first stage (8 channels, 8x8), block 1 to the second (16 channels, 4x4)
    assert projections["projections.0.weight"].shape == (8, hidden_size)
    assert projections["projections.1.weight"].shape == (16, hidden_size)
    logs = [entry for entry in read_json(output_dir / "trainer_state.json")["log_history"] if "loss" in entry]
    assert logs and all(0 < entry["feature_guidance_loss"] < float("inf") for entry in logs)
    plain_keys = set(VTLMForImageClassification(VTLMConfig.from_pretrained(output_dir)).state_dict())
    assert set(load_file(output_dir / "model.safetensors")) == plain_keys
    card = (output_dir / "README.md").read_text()
    assert "| teacher trained on | not recorded" in card and "this model is not one trained from scratch" in card


def test_a_teacher_defaults_to_mimetic_init_which_flags_can_turn_off():
    taught = DistillationArguments(teacher_model_name_or_path="teacher")
    assert build_config(ModelArguments(), taught).attention_initializer == "mimetic"
    assert build_config(ModelArguments()).attention_initializer == "normal"
    assert build_config(ModelArguments(attention_initializer="normal"), taught).attention_initializer == "normal"
    assert build_config(ModelArguments(attention_initializer="mimetic")).attention_initializer == "mimetic"
    with pytest.raises(ValueError, match="attention_initializer with its own flag"):
        build_config(ModelArguments(config_overrides="attention_initializer=mimetic"))
    with pytest.raises(ValueError, match="the teacher would teach nothing"):
        DistillationArguments(teacher_model_name_or_path="teacher", feature_guidance_weight=0)


class Recorder:
    """Records the `pixel_values` each forward of a model receives."""

    def __init__(self, model):
        self.inputs = []
        model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.inputs.append((kwargs.get("pixel_values", args[0] if args else None)).detach().clone())


@pytest.mark.parametrize("teacher_image_size", [32, 16])
def test_the_teacher_sees_the_students_augmented_batch(cifar100_dir, tmp_path, teacher_image_size):
    """The model's batch (augmented, erased, mixed, normalised with its own processor's mean and std) reaches the
    teacher as the same pixels, normalised with the teacher's mean and std, resized where its image size differs."""
    teacher_mean, teacher_std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    teacher_folder = tmp_path / "teacher"
    teacher_config = VTLMConfig(**TINY_CONFIG, image_size=teacher_image_size, pooling="mean")
    VTLMForImageClassification(teacher_config).save_pretrained(teacher_folder)
    processor = build_image_processor(teacher_image_size)
    processor.image_mean, processor.image_std = list(teacher_mean), list(teacher_std)
    processor.save_pretrained(teacher_folder)

    data = load_image_datasets(
        DataArguments(dataset_name=cifar100_dir, validation_split_size=100), image_size=32, seed=0
    )
    config = VTLMConfig(**TINY_CONFIG)
    model = VTLMForImageClassification(config)
    distillation_args = DistillationArguments(teacher_model_name_or_path=str(teacher_folder), distillation_type="hard")
    distillation = build_distillation(distillation_args, config, data.label_names)
    training_args = VTLMTrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=16, report_to="none", use_cpu=True
    )
    augmentation = build_augmentation(AugmentationArguments(), config, training_args)
    trainer = build_trainer(
        model, training_args, data, augmentation, build_image_processor(), distillation=distillation
    )
    student, teacher = Recorder(model), Recorder(distillation.teacher.model)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # what train() sets before its first step
    trainer.training_step(trainer.model, batch)

    (student_pixels,), (teacher_pixels,) = student.inputs, teacher.inputs
    seed = augmentation_seed(training_args.seed, 0, 0, 0)
    expected_student, _ = augmentation(batch["images"], batch["labels"], seed, trainer.normalize)
    torch.testing.assert_close(student_pixels, expected_student, atol=0, rtol=0)  # the augmented batch itself

    # Back to 0-1 pixel values with the model's mean and std, forward with the teacher's.
    def column(values):
        return torch.tensor(values).view(1, 3, 1, 1)

    pixels = student_pixels * column(trainer.normalize.std) + column(trainer.normalize.mean)
    expected = (pixels - column(teacher_mean)) / column(teacher_std)
    if teacher_image_size != 32:
        expected = F.interpolate(expected, size=teacher_image_size, mode="bilinear", antialias=True)
    torch.testing.assert_close(teacher_pixels, expected, atol=1e-5, rtol=1e-5)
    assert not any(parameter.requires_grad for parameter in distillation.teacher.model.parameters())
    assert not distillation.teacher.model.training  # frozen, in eval mode
    optimized = {id(parameter) for group in trainer.optimizer.param_groups for parameter in group["params"]}
    guidance = getattr(model, GUIDANCE_MODULE)
    assert all(id(parameter) in optimized for parameter in guidance.parameters())
    assert all(parameter.grad is not None for parameter in guidance.parameters())


def test_patch_tokens_leave_out_the_cls_token_and_feature_maps_stay_maps():
    tokens = torch.randn(2, 65, 8)
    torch.testing.assert_close(patch_token_map(tokens).flatten(2).transpose(1, 2), tokens[:, 1:])
    sequence = torch.randn(2, 256, 8)  # a sequence-pooled model: only patch tokens
    assert torch.equal(patch_token_map(sequence).flatten(2).transpose(1, 2), sequence)
    feature_map = torch.randn(2, 8, 4, 4)
    assert patch_token_map(feature_map) is feature_map


def test_a_finer_teacher_grid_is_pooled_to_the_students():
    """A 256-token teacher and a 64-token student: each student token is pulled to the mean of the teacher's 2x2."""
    guidance = FeatureGuidance([0], [1], hidden_size=6, teacher_widths=[6])
    with torch.no_grad():
        guidance.projections[0].weight.copy_(torch.eye(6))
        guidance.projections[0].bias.zero_()
    teacher_map = torch.randn(2, 6, 16, 16)
    pooled = F.avg_pool2d(teacher_map, 2).flatten(2).transpose(1, 2)  # (2, 64, 6)
    student = torch.cat([torch.randn(2, 1, 6), pooled], dim=1)  # a CLS token, then the pooled map as patch tokens
    teacher_tokens = teacher_map.flatten(2).transpose(1, 2)
    loss = guidance((None, student), (None, teacher_tokens))
    assert loss.item() < 1e-10  # matched exactly: the projection is the identity and both sides are normalised
    assert guidance((None, student), (None, teacher_tokens.flip(1))).item() > 0.1


def test_output_distillation_losses():
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    assert output_distillation_loss(teacher, teacher, "soft", 2.0).item() == pytest.approx(0, abs=1e-6)
    hard = output_distillation_loss(student, teacher, "hard", 1.0)
    torch.testing.assert_close(hard, F.cross_entropy(student, teacher.argmax(-1)))
    temperature = 3.0
    expected = (
        (F.softmax(teacher / temperature, -1) * (F.log_softmax(teacher / temperature, -1)
         - F.log_softmax(student / temperature, -1))).sum(-1).mean() * temperature**2
    )  # fmt: skip
    torch.testing.assert_close(output_distillation_loss(student, teacher, "soft", temperature), expected)


@pytest.mark.slow  # the teacher's run
def test_the_benchmark_reports_the_teachers_cost_per_step(teacher_run, tmp_path, capsys):
    output = tmp_path / "benchmark.json"
    flags = [f"--config_overrides={TINY_OVERRIDES}", "--batch_size=8", "--eval_batch_size=16", "--eval_batches=1"]
    flags += ["--steps=2", "--untimed_steps=1", "--repeats=1", f"--output_json={output}"]
    load_script("benchmark").main(flags + [f"--teacher_model_name_or_path={teacher_run}"])
    results = read_json(output)
    teacher = results["teacher_forward"]
    assert len(teacher["times_s"]) == 2 and 0 < teacher["median_s"] < results["training"]["median_s"]
    assert results["settings"]["distillation"]["teacher_model_name_or_path"] == str(teacher_run)
    assert "teacher ms/step" in capsys.readouterr().out


@pytest.mark.slow  # a script in two fresh interpreters
def test_ddp_on_two_cpu_processes_trains_the_projections_with_the_model(cifar100_dir, teacher_run, tmp_path):
    """Real 2-process DDP (gloo): the projections are parameters of the wrapped model, so every step's gradients of
    theirs go through DDP's reducer (which, with find_unused_parameters off, fails a step where one gets none), and
    the teacher stays outside DDP."""
    output_dir = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2"]
    launch += [
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        str(REPO_ROOT / "scripts" / "train.py"),
    ]
    run = subprocess.run(
        launch + student_argv(cifar100_dir, output_dir, teacher_run), env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert read_json(output_dir / "run_info.json")["hardware"]["num_processes"] == 2
    early, late = (load_file(output_dir / f"checkpoint-{step}" / GUIDANCE_FILE) for step in (2, 4))
    assert all(not torch.equal(early[name], late[name]) for name in early)
    assert not any(name.startswith(GUIDANCE_MODULE) for name in load_file(output_dir / "model.safetensors"))
