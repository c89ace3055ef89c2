"""recipes/: every file loads as train.py's single argument; the headline file is the defaults; the others say what
their sources say."""

import dataclasses
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from vtlm.modeling import PRESETS
from vtlm.training.arguments import parse_arguments

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))


def as_dicts(arguments):
    model_args, data_args, augmentation_args, training_args, distillation_args, _ = arguments
    return [dataclasses.asdict(model_args), dataclasses.asdict(data_args), dataclasses.asdict(augmentation_args)] + [
        {key: value for key, value in training_args.to_dict().items() if key != "logging_dir"},  # it holds a time
        dataclasses.asdict(distillation_args),
    ]


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.name for path in RECIPES])
def test_every_recipe_loads_and_names_a_preset(recipe):
    model_args, _, _, training_args, *_ = parse_arguments([str(recipe)])
    assert model_args.model_preset in PRESETS
    assert Path(training_args.output_dir).name.startswith(model_args.model_preset)


def test_the_headline_recipe_is_the_defaults():
    assert as_dicts(parse_arguments([str(REPO_ROOT / "recipes" / "vtlm-37m.yaml")])) == as_dicts(parse_arguments([]))


def test_the_conv_recipe_is_the_headline_recipe_on_the_conv_preset():
    headline, conv = (
        as_dicts(parse_arguments([str(REPO_ROOT / "recipes" / name)]))
        for name in ("vtlm-37m.yaml", "vtlm-37m-conv.yaml")
    )
    assert conv[0] == {**headline[0], "model_preset": "vtlm-37m-conv"}
    assert conv[1:3] == headline[1:3]
    assert conv[3] == {**headline[3], "output_dir": "runs/vtlm-37m-conv-cifar100"}


def test_the_original_recipe_is_the_original_models():
    """train_vit.py of MadrasLe/vision-transformer-37M-: AutoAugment (CIFAR-10 policy), RandomResizedCrop(0.8, 1),
    flip, dropout 0.1, AdamW 3e-4 with weight decay 0.05, batch 256, 5 of 100 warm-up epochs, cosine to 1e-6,
    clipping 1.0, fp16; no Mixup/CutMix, label smoothing, erasing or stochastic depth."""
    model_args, data_args, augmentation, training, *_ = parse_arguments(
        [str(REPO_ROOT / "recipes" / "madras1-vtlm37m.yaml")]
    )
    assert (model_args.model_preset, model_args.hidden_dropout_prob, model_args.drop_path_rate) == ("vtlm-37m", 0.1, 0)
    assert augmentation.auto_augment_policy == "cifar10" and augmentation.randaugment_num_ops == 0
    assert (augmentation.random_resized_crop_scale, augmentation.crop_padding) == (0.8, 0)
    assert augmentation.horizontal_flip and augmentation.mixup_prob == 0 and augmentation.random_erasing_prob == 0
    assert (training.learning_rate, training.weight_decay, training.per_device_train_batch_size) == (3e-4, 0.05, 256)
    assert (training.num_train_epochs, training.warmup_steps, training.max_grad_norm) == (100, 0.05, 1.0)
    assert training.lr_scheduler_type == "cosine_with_min_lr" and training.lr_scheduler_kwargs == {"min_lr": 1e-6}
    assert training.label_smoothing_factor == 0 and training.optim == "adamw_torch_fused"
    assert training.load_best_model_at_end and training.metric_for_best_model == "accuracy"  # on validation


def test_the_cct_recipe_is_the_references_cifar100_recipe():
    """SHI-Labs/Compact-Transformers configs/pretrained/cct_7-3x1_cifar100_300epochs.yml."""
    model_args, _, augmentation, training, *_ = parse_arguments([str(REPO_ROOT / "recipes" / "cct-7-3x1.yaml")])
    assert model_args.model_preset == "vtlm-cct-7-3x1" and model_args.drop_path_rate == 0.1
    assert (training.num_train_epochs, training.per_device_train_batch_size) == (300, 128)
    assert (training.learning_rate, training.weight_decay, training.label_smoothing_factor) == (6e-4, 0.06, 0.1)
    assert training.warmup_steps * 300 == pytest.approx(10, abs=1e-3)
    assert training.lr_scheduler_kwargs == {"min_lr": 1e-5}
    assert (augmentation.randaugment_magnitude, augmentation.randaugment_magnitude_std) == (9, 0.5)
    assert (augmentation.mixup_alpha, augmentation.cutmix_alpha, augmentation.random_erasing_prob) == (0.8, 1.0, 0.25)
    assert augmentation.random_resized_crop_scale == 0.8


def test_the_dhvt_recipe_is_the_references_cifar100_recipe():
    """ArieSeirack/DHVT run_code_cifar.sh on DeiT's main.py defaults: batch 256 a process, lr 1e-3, 5 of 300 warm-up
    epochs, cosine to 1e-5, weight decay 0.05, no clipping, smoothing 0.1, rand-m9-mstd0.5-inc1, Mixup 0.8 / CutMix
    1.0, erasing 0.25, stochastic depth 0.1."""
    model_args, _, augmentation, training, *_ = parse_arguments([str(REPO_ROOT / "recipes" / "dhvt-t2.yaml")])
    assert (model_args.model_preset, model_args.drop_path_rate, model_args.hidden_dropout_prob) == (
        "vtlm-dhvt-t2", 0.1, 0.0
    )  # fmt: skip
    assert (training.num_train_epochs, training.per_device_train_batch_size) == (300, 256)
    assert (training.learning_rate, training.weight_decay, training.label_smoothing_factor) == (1e-3, 0.05, 0.1)
    assert training.warmup_steps * 300 == pytest.approx(5, abs=1e-3)
    assert training.lr_scheduler_kwargs == {"min_lr": 1e-5} and training.max_grad_norm == 0
    assert (augmentation.randaugment_magnitude, augmentation.randaugment_magnitude_std) == (9, 0.5)
    assert (augmentation.mixup_alpha, augmentation.cutmix_alpha, augmentation.random_erasing_prob) == (0.8, 1.0, 0.25)
    assert augmentation.crop_padding == 4 and augmentation.random_resized_crop_scale is None


def test_the_student_recipe_is_the_headline_recipe_taught_by_the_conv_recipes_model():
    headline, conv, student = (
        as_dicts(parse_arguments([str(REPO_ROOT / "recipes" / name)]))
        for name in ("vtlm-37m.yaml", "vtlm-37m-conv.yaml", "vtlm-37m-student.yaml")
    )
    assert student[:3] == headline[:3]
    assert student[3] == {**headline[3], "output_dir": "runs/vtlm-37m-student-cifar100"}
    assert student[4] == {**headline[4], "teacher_model_name_or_path": conv[3]["output_dir"]}
    # The teacher's validation split is the student's: the teacher never saw the images the student is selected on.
    assert student[1] == conv[1] and student[3]["seed"] == conv[3]["seed"]


def test_flags_after_a_recipe_replace_its_values_and_an_unknown_key_is_named(tmp_path):
    recipe = REPO_ROOT / "recipes" / "madras1-vtlm37m.yaml"
    model_args, data_args, _, training, *_ = parse_arguments(
        [str(recipe), "--dataset_name", "DIR", "--learning_rate=1e-4"]
    )
    assert (data_args.dataset_name, training.learning_rate) == ("DIR", 1e-4)
    assert training.per_device_train_batch_size == 256  # the recipe's, where no flag replaces it
    mistyped = tmp_path / "mine.yaml"
    mistyped.write_text("learning_rat: 0.001\n")
    with pytest.raises(
        ValueError, match=r"mine.yaml: unknown argument\(s\): --learning_rat \(did you mean --learning_rate"
    ):
        parse_arguments([str(mistyped)])
