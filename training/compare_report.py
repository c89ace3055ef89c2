"""The Markdown report of a comparison's runs (`compare_results.RunResult`s) and its plot: per arm the test top-1
mean ± std over seeds against its total training compute (its own training, a teacher's forward passes, the teacher's
own training when another arm trained it, a pre-training stage), a plot of accuracy against compute, and per run its
95% Wilson interval, seconds per epoch, FLOPs and parameters."""

import dataclasses
import shlex
import statistics


def cell(text):
    return str(text).replace("|", "\\|")


def code(text):
    return f"`{cell(text)}`" if text else "(none)"


def petaflops(flops):
    """FLOPs in PFLOPs, to 4 significant digits: the compute of a CPU proxy run and of a GPU run read alike."""
    return f"{flops / 1e15:.4g}"


def spread(values):
    return statistics.stdev(values) if len(values) > 1 else None


@dataclasses.dataclass
class ArmSummary:
    name: str
    way: str
    seeds: int
    mean: float
    std: float | None  # sample std over seeds; None for one seed
    seconds_per_epoch: float  # median over seeds
    total_compute: float  # mean over seeds, FLOPs


def arm_summaries(runs):
    """Per arm, in order: its seeds' test top-1 mean and std, median seconds per epoch and mean total compute."""
    summaries = []
    for name in dict.fromkeys(run.arm for run in runs):
        arm_runs = [run for run in runs if run.arm == name]
        accuracies = [run.test_accuracy for run in arm_runs]
        summaries.append(
            ArmSummary(
                name=name,
                way=arm_runs[0].way,
                seeds=len(arm_runs),
                mean=statistics.mean(accuracies),
                std=spread(accuracies),
                seconds_per_epoch=statistics.median(run.seconds_per_epoch for run in arm_runs),
                total_compute=statistics.mean(run.total_compute["total"] for run in arm_runs),
            )
        )
    return summaries


def plot_accuracy_against_compute(summaries, title):
    """PNG bytes: test top-1 (mean, with a bar of ± one std over seeds) against total training compute, a log axis;
    one line per way (arms named `WAY @ LENGTH`), in order of compute."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for way in dict.fromkeys(summary.way for summary in summaries):
        points = sorted((s for s in summaries if s.way == way), key=lambda summary: summary.total_compute)
        axes.errorbar(
            [point.total_compute for point in points],
            [100 * point.mean for point in points],
            yerr=[100 * (point.std or 0) for point in points],
            marker="o",
            capsize=3,
            label=way,
        )
    axes.set_xscale("log")
    axes.set_xlabel("total training compute (FLOPs): training, teacher forward and training, pre-training")
    axes.set_ylabel("test top-1 (%)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def describe_data(manifest):
    """The report's lines on the data: a Fashion-MNIST sample's manifest (`training.fashion_mnist.prepare_dataset`)
    or a dataset that train.py loads and splits itself."""
    if "sample" not in manifest:
        return [
            f"- `{manifest['dataset_name']}` (label column `{manifest['label_column_name']}`), loaded and split by "
            "train.py: its own validation split, or one held out of train by `--validation_split_size` and each "
            "run's seed, selects the best epoch; the test split is evaluated once. Pre-training stages read the "
            "training split only.",
        ]
    sample = manifest["sample"]
    per_class = sample["images_per_class"]
    counts = manifest["num_images"]
    test_per_class = f"{per_class['test']} per class" if per_class["test"] else "the whole official test split"
    return [
        f"- {manifest['name']} from the Debian package `{manifest['package']}` "
        f"{sample['package_version'] or '(version unknown)'} "
        f"({manifest['licence']}): {'x'.join(map(str, manifest['image_shape']))} greyscale images, "
        f"{len(manifest['label_names'])} classes ({', '.join(manifest['label_names'])}). The training pipeline turns "
        "them into RGB at the model's image size.",
        f"- train: {per_class['train']} images per class ({counts['train']:,}), a stratified sample of the official "
        f"train split (seed {sample['seed']}).",
        f"- validation (selects the best epoch): {per_class['validation']} per class ({counts['validation']:,}), "
        "disjoint from train.",
        f"- test: {counts['test']:,} images, {test_per_class}.",
    ]


def render_report(command, manifest, machine, common, runs, generated_at, plot_file=None):
    """The Markdown report of `runs` (`RunResult`s) on the dataset `manifest` describes, measured on `machine`
    (`training.provenance.machine_info`); `plot_file` names the accuracy-against-compute PNG beside it."""
    devices = sorted({run.device for run in runs if run.device})
    commits = sorted({run.git_commit for run in runs if run.git_commit})
    name = manifest.get("name") or manifest["dataset_name"]
    lines = [
        f"# Arms compared on {name}",
        "",
        f"Generated by `scripts/compare.py` on {generated_at}; do not edit by hand. Command:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    if "sample" in manifest:
        lines += [
            f"{name}, not CIFAR-100: these numbers compare the arms with each other on small real images and say "
            "nothing about CIFAR-100 accuracy.",
            "",
        ]
    lines += [
        "## Data",
        "",
        *describe_data(manifest),
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']}, {machine['cpus_available']} available to the runs "
        f"({machine['torch_num_threads']} torch threads; load {machine['load_average_1min']:.1f} when reported); "
        f"training device: {', '.join(devices) or 'unknown'}",
        f"- torch {machine['torch']}, transformers {machine['transformers']}, Python {machine['python']}",
        f"- code: {', '.join(f'`{commit}`' for commit in commits) or 'unknown'} (git commit of the runs)",
        "",
        "## Flags",
        "",
        f"- every arm: {code(shlex.join(common))}",
        "- set by the script for each run: `--dataset_name`, `--label_column_name`, `--output_dir`, `--seed`, "
        "`--disable_tqdm True` (and `--model_name_or_path` after a pre-training stage, `--num_train_epochs` for an "
        "arm that matches another's compute)",
        "- a run's command: `train.py [the arm's recipe file] [flags of every arm] [the arm's flags] [the script's "
        "flags]`; a flag replaces the recipe's value, and a flag given twice takes its last value.",
        "",
        "## Summary",
        "",
        "| arm | seeds | test top-1, mean ± std over seeds | total training compute, PFLOPs (mean) "
        "| s / epoch, median over seeds |",
        "|---|---:|---|---:|---:|",
    ]
    summaries = arm_summaries(runs)
    for summary in summaries:
        spread_text = f" ± {100 * summary.std:.2f}" if summary.std is not None else " (one seed)"
        lines.append(
            f"| {cell(summary.name)} | {summary.seeds} | {100 * summary.mean:.2f}%{spread_text} | "
            f"{petaflops(summary.total_compute)} | {summary.seconds_per_epoch:.1f} |"
        )
    if plot_file:
        lines += ["", f"![Test top-1 against total training compute]({plot_file})"]
    lines += [
        "",
        "## Runs",
        "",
        "| arm | arm flags | seed | epochs | test top-1 [95% CI] | s / epoch | training MFLOPs / image "
        "| parameters | compute, PFLOPs: own (teacher forward) + teacher training + pre-training = total "
        "| built-in ViT export: max \\|logit difference\\| |",
        "|---|---|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    for run in runs:
        lower, upper = run.test_interval
        marker = "" if run.epochs_timed else " *"
        total = run.total_compute
        teacher = run.compute.get("teacher_forward_flops")
        own = petaflops(total["own"]) + (f" ({petaflops(teacher)})" if teacher else "")
        export = "custom code only" if run.vit_export_difference is None else f"{run.vit_export_difference:.1e}"
        lines.append(
            f"| {cell(run.arm)} | {code(run.arm_flags)} | {run.seed} | {run.epochs:g} | "
            f"{100 * run.test_accuracy:.2f}% [{100 * lower:.2f}, {100 * upper:.2f}] | "
            f"{run.seconds_per_epoch:.1f}{marker} | {run.compute['training_flops_per_image'] / 1e6:,.1f} | "
            f"{run.compute['num_parameters']:,} | {own} + {petaflops(total['teacher_training'])} + "
            f"{petaflops(total['pretraining'])} = {petaflops(total['total'])} | {export} |"
        )
    lines += [
        "",
        "Test top-1 is on the test images above; its interval is the 95% Wilson score interval of correct / test "
        "images that train.py recorded (`test_accuracy_ci_low`/`_high`), which covers the sampling of the test set "
        "only; the summary's std is the sample standard deviation over seeds. s / epoch: the median training time "
        "between successive epoch ends (an epoch's training, validation and checkpoint; `training_seconds` in each "
        "run's `trainer_state.json`); * marks a run of one epoch, where it is the training time / epochs; a taught "
        "run's includes its teacher's forward. Compute (`compute` in each run's `run_info.json`, "
        "`training.flops.describe_compute`): FLOPs counted by `torch.utils.flop_counter`, a multiply-add counting 2: "
        "the model's forward and backward on every training image it processed, plus a teacher's forward on those "
        "images; plus, for the total, the teacher's own training when the teacher is a run folder with a record "
        "(another arm's), and the pre-training stage the run started from. Evaluation is not counted. ViT export: "
        "each run's saved model exported by `training.export.export_model` to transformers' "
        "`ViTForImageClassification` and run on the same check images; 0.0e+00 is identical logits, and a layout the "
        "built-in ViT cannot express needs custom code.",
        "",
    ]
    return "\n".join(lines)
