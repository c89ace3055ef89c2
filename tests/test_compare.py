"""scripts/compare.py and its modules (training/compare.py, compare_arms.py, compare_results.py, compare_report.py):
the commands it builds, the compute it adds up, the report it renders, and one real comparison with a pre-training
stage and an arm at another's compute."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, TINY_OVERRIDES, make_run_folder
from transformers import TrainerState

from vtlm.training import compare, compare_arms, compare_report, compare_results, fashion_mnist
from vtlm.training.arguments import parse_arguments
from vtlm.training.metrics import wilson_interval
from vtlm.training.provenance import machine_info
from vtlm.training.trainer import TRAINING_SECONDS

needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(fashion_mnist.FASHION_MNIST_DIR),
    reason=f"Fashion-MNIST is not installed: apt-get install {fashion_mnist.FASHION_MNIST_PACKAGE}",
)


def test_arm_flags_reach_train_py_in_order(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "learning_rate: 0.0005\nnum_train_epochs: 300\nhorizontal_flip: false\nreport_to: [none]\nmixup_alpha: 0.0\n"
        "output_dir: elsewhere\n"
    )
    arm = compare_arms.parse_arm(f"my recipe={recipe} --num_train_epochs 3 --mixup_alpha 0.5")
    assert arm.name == "my recipe" and arm.flags == [str(recipe), "--num_train_epochs", "3", "--mixup_alpha", "0.5"]
    common = ["--num_train_epochs", "2", "--learning_rate", "0.002"]
    comparison = compare.Comparison([arm], str(tmp_path), (str(tmp_path / "data"), "label"), {}, common)
    arguments = comparison.train_arguments(arm, seed=7)
    model_args, data_args, augmentation_args, training_args, *_ = parse_arguments(arguments)
    assert training_args.learning_rate == 0.002  # --common replaces the recipe's value
    assert training_args.num_train_epochs == 3 and augmentation_args.mixup_alpha == 0.5  # the arm's replace both
    assert not augmentation_args.horizontal_flip and training_args.report_to == []  # the recipe's "none", kept
    assert training_args.output_dir == comparison.run_dir(arm, 7) and training_args.seed == 7  # the script's own
    assert data_args.dataset_name == str(tmp_path / "data") and data_args.label_column_name == "label"
    assert training_args.disable_tqdm


@pytest.mark.parametrize(
    "text, match",
    [
        ("no flags but no equals sign", "expected NAME=FLAGS"),
        ("=--mixup_alpha 0", "expected NAME=FLAGS"),
        ("mine=--seed 3", "--seed is set by compare.py"),
        ("mine=--output_dir=x --dataset_name y", "--dataset_name, --output_dir is set by compare.py"),
    ],
)
def test_bad_arms_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        compare_arms.parse_arm(text)


def test_a_missing_recipe_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no recipe file"):
        compare_arms.parse_arm(f"a={tmp_path / 'missing.yaml'} --seed_x 1")


def test_schedule_reverses_the_arms_every_round():
    arms = [compare_arms.parse_arm(f"{name}=") for name in "abc"]
    order = [(arm.name, seed) for arm, seed in compare.schedule(arms, [1, 2, 3])]
    assert order == [("a", 1), ("b", 1), ("c", 1), ("c", 2), ("b", 2), ("a", 2), ("a", 3), ("b", 3), ("c", 3)]


def test_a_folder_of_another_command_is_not_reused(tmp_path):
    arm = compare_arms.parse_arm("a=--mixup_alpha 0")
    comparison = compare.Comparison([arm], str(tmp_path), ("data", "label"), {}, [])
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a-seed42.json").write_text(json.dumps({"arguments": ["--mixup_alpha", "1"], "dataset": {}}))
    with pytest.raises(ValueError, match="holds a run of another command"):
        comparison.run_script("train", comparison.train_arguments(arm, 42), arm, 42, "a")


@pytest.mark.parametrize(
    "pretrain, match, message",
    [
        (["nope=--num_train_epochs 1"], [], "NAME one of the arms"),
        ([], ["b=a"], "must be an arm given before 'b'"),  # a is after b
        ([], ["a=missing"], "must be an arm given before 'a'"),
    ],
)
def test_stages_and_matches_name_arms_that_exist(pretrain, match, message):
    with pytest.raises(ValueError, match=message):
        compare_arms.parse_arms(["b=", "a="], pretrain, match)


def test_an_arm_matching_another_runs_after_it_in_every_round():
    arms = compare_arms.parse_arms(
        ["cheap=", "costly=", "cheap at costly=--num_train_epochs 1"], [], ["cheap at costly=costly"]
    )
    order = [(arm.name, seed) for arm, seed in compare.schedule(arms, [1, 2])]
    assert order == [("cheap", 1), ("costly", 1), ("cheap at costly", 1),
                     ("costly", 2), ("cheap", 2), ("cheap at costly", 2)]  # fmt: skip


def log_history(epoch_ends, final_epoch=None):
    """`trainer_state.json`'s log: a training loss mid-epoch and a validation entry at each `(epoch, training
    seconds)`, as `training.trainer.VTLMTrainer` logs them; the final evaluation repeats the last epoch."""
    history = []
    for epoch, seconds in epoch_ends:
        history.append({"loss": 1.0, "epoch": epoch - 0.5, TRAINING_SECONDS: seconds - 1})
        history.append({"eval_loss": 0.5, "epoch": epoch, TRAINING_SECONDS: seconds})
    if final_epoch is not None:
        history.append({"train_runtime": 1.0, "epoch": final_epoch, TRAINING_SECONDS: epoch_ends[-1][1] + 5})
        history.append({"eval_loss": 0.5, "epoch": final_epoch, TRAINING_SECONDS: epoch_ends[-1][1] + 9})
    return history


def test_seconds_per_epoch():
    # The median of the gaps between epoch ends; the first epoch (data loading, start-up) has no gap of its own.
    ends = [(1.0, 50.0), (2.0, 150.0), (3.0, 260.0), (4.0, 330.0)]
    assert compare_results.seconds_per_epoch(log_history(ends, final_epoch=4.0)) == (100.0, 3)
    # An epoch end not seen:
    assert compare_results.seconds_per_epoch(log_history([(1.0, 10.0), (3.0, 30.0)])) == (10.0, 1)
    assert compare_results.seconds_per_epoch(log_history([(1.0, 120.0)])) == (120.0, 0)
    assert compare_results.seconds_per_epoch(log_history([(2.0, 300.0)])) == (150.0, 0)


def run_folder(path, accuracy, epoch_ends, flags=(), teacher_forward_flops_per_image=None):
    """A run folder as train.py leaves it (`conftest.make_run_folder`, the project's writers), with `accuracy` on
    10,000 test images and its epochs ending at `epoch_ends`, and the comparison's record of its ViT export."""
    low, high = wilson_interval(round(accuracy * 10_000), 10_000)
    results = {"test_accuracy": accuracy, "test_num_images": 10_000, "test_accuracy_ci_low": low,
               "test_accuracy_ci_high": high}  # fmt: skip
    make_run_folder(path, results=results, flags=flags, teacher_forward_flops_per_image=teacher_forward_flops_per_image)
    state = TrainerState.load_from_json(str(path / "trainer_state.json"))
    state.log_history = log_history(epoch_ends)
    state.save_to_json(str(path / "trainer_state.json"))
    record = path.parent / f"{path.name}.json"
    record.write_text(json.dumps({"vit_export_difference": 0.0}))
    return path, str(record)


def test_a_taught_run_costs_its_teacher_forward_and_training(tmp_path):
    teacher, _ = run_folder(tmp_path / "teacher", 0.9, [(1.0, 50.0)])
    student, _ = run_folder(tmp_path / "student", 0.8, [(1.0, 50.0)], flags=[f"--teacher_model_name_or_path={teacher}"],
                            teacher_forward_flops_per_image=1_000)  # fmt: skip
    teacher_compute = json.loads((teacher / "run_info.json").read_text())["compute"]
    student_compute = json.loads((student / "run_info.json").read_text())["compute"]
    assert student_compute["teacher_forward_flops"] == 1_000 * student_compute["training_images"] > 0
    total = compare_results.read_total_compute(str(student))
    assert total == {
        "own": student_compute["training_flops"] + student_compute["teacher_forward_flops"],
        "teacher_training": teacher_compute["total_flops"],
        "pretraining": 0,
        "total": student_compute["total_flops"] + teacher_compute["total_flops"],
    }
    assert compare_results.read_total_compute(str(teacher))["total"] == teacher_compute["total_flops"]


def test_report_renders_what_the_runs_recorded(tmp_path):
    folder_a, record_a = run_folder(tmp_path / "a", 0.8123, [(1.0, 50.0), (2.0, 150.0), (3.0, 260.0)])
    folder_b, record_b = run_folder(tmp_path / "b", 0.5, [(1.0, 120.0)])
    arm_a = compare_arms.parse_arm("old | new @ 3=--randaugment_magnitude 5")
    arm_b = compare_arms.parse_arm("plain=")
    runs = [compare_results.read_run(str(folder_a), record_a, arm_a, 42)]
    runs += [compare_results.read_run(str(folder_b), record_b, arm_b, seed) for seed in (43, 44)]
    recorded = json.loads((folder_a / "run_info.json").read_text())["compute"]
    assert (runs[0].seconds_per_epoch, runs[0].epochs_timed) == (105.0, 2)
    assert (runs[1].seconds_per_epoch, runs[1].epochs_timed) == (120.0, 0)
    assert runs[0].compute == recorded and runs[0].total_compute["total"] == recorded["total_flops"]
    assert runs[0].way == "old | new"

    manifest = {
        "name": "Fashion-MNIST",
        "package": "dataset-fashion-mnist",
        "licence": "Expat (MIT), Zalando SE 2017",
        "label_names": fashion_mnist.FASHION_MNIST_LABELS,
        "image_shape": [28, 28],
        "num_images": {"train": 5000, "validation": 1000, "test": 10_000},
        "sample": {
            "package_version": "1.2-3",
            "seed": 0,
            "images_per_class": {"train": 500, "validation": 100, "test": None},
        },
    }
    machine = {**machine_info(torch.device("cpu")), "cpu_model": "Some CPU", "cpus_available": 2}
    common = ["--num_train_epochs", "3", "--config_overrides", TINY_OVERRIDES]
    report = compare_report.render_report(
        "python scripts/compare.py --arm x=", manifest, machine, common, runs, "today", "report.png"
    )

    # The interval is the one train.py recorded, not computed again.
    results = json.loads((folder_a / "test_results.json").read_text())
    lower, upper = results["test_accuracy_ci_low"], results["test_accuracy_ci_high"]
    pflops = compare_report.petaflops(recorded["total_flops"])
    assert (
        f"| old \\| new @ 3 | `--randaugment_magnitude 5` | 42 | 3 | 81.23% [{100 * lower:.2f}, {100 * upper:.2f}] | "
        f"105.0 | {recorded['training_flops_per_image'] / 1e6:,.1f} | {recorded['num_parameters']:,} | "
        f"{pflops} + 0 + 0 = {pflops} | 0.0e+00 |"
    ) in report.splitlines()
    assert "python scripts/compare.py --arm x=" in report and "Generated by `scripts/compare.py` on today" in report
    assert "`dataset-fashion-mnist` 1.2-3" in report and "500 images per class (5,000)" in report
    assert "test: 10,000 images, the whole official test split" in report
    assert f"`--num_train_epochs 3 --config_overrides {TINY_OVERRIDES}`" in report
    assert "Some CPU, 2 available" in report and "not CIFAR-100" in report and "![Test top-1" in report
    # Per arm, the mean and sample std over its seeds, and its mean total compute; one seed has no spread.
    assert f"| old \\| new @ 3 | 1 | 81.23% (one seed) | {pflops} | 105.0 |" in report.splitlines()
    assert f"| plain | 2 | 50.00% ± 0.00 | {pflops} | 120.0 |" in report.splitlines()
    png = compare_report.plot_accuracy_against_compute(compare_report.arm_summaries(runs), "title")
    assert png.startswith(b"\x89PNG")

    # Another dataset than the proxy: named as given, and no proxy disclaimer.
    other = compare_report.render_report("cmd", {"dataset_name": "uoft-cs/cifar100", "label_column_name": "fine_label"},
                                  machine, common, runs, "today")  # fmt: skip
    assert "# Arms compared on uoft-cs/cifar100" in other and "not CIFAR-100" not in other


@needs_fashion_mnist
@pytest.mark.slow
def test_a_real_comparison_with_a_pretraining_stage_and_a_matched_arm(tmp_path):
    """The command line as a user runs it: an arm pre-trained first (2 epochs after 3 of pre-training), and a plain
    arm trained as long as the pre-trained one cost in all, on a tiny Fashion-MNIST sample; then the same command
    again."""
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "scripts", "compare.py"),
        f"--output_dir={tmp_path}",
        "--train_images_per_class=5",
        "--validation_images_per_class=2",
        "--test_images_per_class=3",
        f"--common=--config_overrides {TINY_OVERRIDES} --num_train_epochs 2 --report_to none",
        "--arm=MAE @ 2=--randaugment_num_ops 0",
        "--pretrain=MAE @ 2=--num_train_epochs 3 --decoder_hidden_size 16 --decoder_num_hidden_layers 1 "
        "--decoder_num_attention_heads 2 --decoder_intermediate_size 24",
        "--arm=plain at MAE's cost=--randaugment_num_ops 0",
        "--match_compute=plain at MAE's cost=MAE @ 2",
    ]
    first = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = tmp_path / "runs"
    assert sorted(os.listdir(runs)) == ["mae-2-seed42", "mae-2-seed42-pretrain", "plain-at-mae-s-cost-seed42"]
    recorded = json.loads((runs / "plain-at-mae-s-cost-seed42" / "run_arguments.json").read_text())
    assert recorded["augmentation_arguments"]["randaugment_num_ops"] == 0  # the arm's flag reached train.py
    assert recorded["data_arguments"]["dataset_name"] == str(tmp_path / "fashion-mnist")
    # What is published names the dataset folder, not its path on this machine.
    plain_info = json.loads((runs / "plain-at-mae-s-cost-seed42" / "run_info.json").read_text())
    assert plain_info["data_arguments"]["dataset_name"] == "fashion-mnist"
    # The pre-trained arm fine-tuned the pre-training, and its cost includes it.
    mae_info = json.loads((runs / "mae-2-seed42" / "run_info.json").read_text())
    assert mae_info["initialized_from"]["source"] == "mae-2-seed42-pretrain"
    pretraining = json.loads((runs / "mae-2-seed42-pretrain" / "run_info.json").read_text())["compute"]
    mae_total = compare_results.read_total_compute(str(runs / "mae-2-seed42"))
    assert mae_total["pretraining"] == pretraining["total_flops"] > 0
    # The matched arm trained the whole epochs that come closest to that total.
    per_epoch = plain_info["compute"]["training_flops_per_image"] * 50
    epochs = recorded["training_arguments"]["num_train_epochs"]
    assert epochs == max(1, round(mae_total["total"] / per_epoch)) and epochs != 2

    report = (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG") and "![Test top-1" in report
    test = json.loads((runs / "plain-at-mae-s-cost-seed42" / "test_results.json").read_text())
    lower, upper = test["test_accuracy_ci_low"], test["test_accuracy_ci_high"]
    runs_table = report.split("## Runs", 1)[1]
    row = next(line for line in runs_table.splitlines() if line.startswith("| plain at MAE's cost |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:5] == ["plain at MAE's cost", "`--randaugment_num_ops 0`", "42", f"{epochs:g}",
                         f"{100 * test['test_accuracy']:.2f}% [{100 * lower:.2f}, {100 * upper:.2f}]"]  # fmt: skip
    assert cells[7] == f"{plain_info['compute']['num_parameters']:,}"
    assert cells[9] == "0.0e+00"  # the plain layout's built-in ViT export gives identical logits
    assert "train: 5 images per class (50)" in report and "test: 30 images, 3 per class" in report
    mae_row = next(line for line in runs_table.splitlines() if line.startswith("| MAE @ 2 |"))
    assert f"= {compare_report.petaflops(mae_total['total'])} |" in mae_row

    # The same command again reuses the runs instead of training them again.
    log = tmp_path / "logs" / "mae-2-seed42.log"
    log_written = os.path.getmtime(log)
    second = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing the results" in second.stderr and os.path.getmtime(log) == log_written
    assert "'MAE @ 2' seed 42: epoch 2 of 2, validation top-1" in first.stderr  # progress from the checkpoints
