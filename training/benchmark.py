"""Timing VTLM's training and evaluation through the Trainer that `scripts/train.py` builds, on random images in
CIFAR-100's schema: every phase `scripts/benchmark.py` reports (its docstring says what each measures), the JSON
result and its Markdown table. The script parses the flags and prints."""

import math
import os
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from itertools import pairwise

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image
from transformers import AutoConfig, PrinterCallback, TrainerCallback, set_seed

from vtlm.modeling import CIFAR100_LABELS, build_image_processor

from .arguments import (
    DataArguments,
    DistillationArguments,
    VTLMTrainingArguments,
)
from .build import build_augmentation, build_config, build_distillation, build_model, build_trainer
from .data import load_image_datasets
from .flops import flops_per_image
from .provenance import machine_info
from .sources import check_model_source

PRECISIONS = ("fp32", "fp16", "bf16")
# Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets. Matched in order, as whole
# words, against `torch.cuda.get_device_name()`: the PCIe and NVL H100s before the SXM one ("NVIDIA H100 80GB HBM3").
GPU_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0),
                   ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0))  # fmt: skip
# The CIFAR-100 run that `scripts/train.py` does: 45k train and 5k validation images an epoch, its default epochs.
PROJECTION = {
    "train_images": 45_000,
    "validation_images": 5_000,
    "epochs": round(VTLMTrainingArguments.__dataclass_fields__["num_train_epochs"].default),
}


@dataclass
class BenchmarkArguments:
    batch_size: int = field(default=512, metadata={"help": "Training batch per step (per_device_train_batch_size)."})
    eval_batch_size: int = field(default=1024, metadata={"help": "Evaluation batch (per_device_eval_batch_size)."})
    eval_batches: int = field(default=5, metadata={"help": "Batches in the timed evaluation set."})
    precision: str = field(default="fp16", metadata={"help": "fp16, bf16 or fp32 (a CPU runs fp16 as fp32, as the "
                                                              "Trainer does).", "choices": PRECISIONS})  # fmt: skip
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the model."})
    steps: int = field(default=50, metadata={"help": "Timed steps of each phase, in each repeat."})
    untimed_steps: int = field(default=5, metadata={"help": "Steps run before the timed ones: compilation, warm-up."})
    repeats: int = field(default=3, metadata={"help": "Rounds of training, bare loop, pipeline and evaluation."})
    peak_tflops: float | None = field(default=None, metadata={"help": "Peak TFLOP/s for MFU (default: known GPUs)."})
    seed: int = field(default=42, metadata={"help": "Seed of the weights, the data order and the augmentation."})
    torch_num_threads: int | None = field(default=None, metadata={
        "help": "CPU threads of torch (default: 1 on a CPU: figures that do not swing with other jobs)."})  # fmt: skip
    output_json: str = field(default="runs/benchmark.json", metadata={"help": "Where every measured field goes."})
    summarize: list[str] | None = field(default=None, metadata={"help": "Print these JSON results' table; no run."})

    def __post_init__(self):
        counts = ("batch_size", "eval_batch_size", "eval_batches", "steps", "untimed_steps", "repeats")
        if too_small := [name for name in counts if getattr(self, name) < 1]:
            raise ValueError(f"--{too_small[0]} must be at least 1, got {getattr(self, too_small[0])}")
        if self.torch_num_threads is not None and self.torch_num_threads < 1:  # None: the default
            raise ValueError(f"--torch_num_threads must be at least 1, got {self.torch_num_threads}")


class StepClock(TrainerCallback):
    """Stamps step ends: CUDA events on a GPU (read after one synchronisation at the end: the clock never stalls the
    loop), wall time on a CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.marks = []

    def tick(self):
        if self.cuda:
            self.marks.append(torch.cuda.Event(enable_timing=True))
            self.marks[-1].record()
        else:
            self.marks.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.tick()

    def step_times(self, untimed_steps):
        """Seconds of each step after the first `untimed_steps` (the first stamp ends step 1)."""
        if self.cuda:
            torch.cuda.synchronize()
            times = [start.elapsed_time(end) / 1000 for start, end in pairwise(self.marks)]
        else:
            times = [end - start for start, end in pairwise(self.marks)]
        return times[untimed_steps - 1 :]


def synthetic_data(bench, image_size, root, label_names=CIFAR100_LABELS):
    """Random images in `uoft-cs/cifar100`'s schema (with `label_names`), loaded as `scripts/train.py` loads
    CIFAR-100. The train split holds one more batch than a phase reads, so no phase crosses an epoch boundary."""
    train_rows = bench.batch_size * (bench.untimed_steps + bench.steps + 1)
    eval_rows = bench.eval_batch_size * bench.eval_batches
    held_out = max(eval_rows, len(label_names))  # the stratified hold-out needs every class on both sides
    rows = math.ceil((max(train_rows, len(label_names)) + held_out) / 100) * 100
    rng = np.random.default_rng(bench.seed)
    features = Features({"img": Image(), "fine_label": ClassLabel(names=list(label_names))})
    os.makedirs(os.path.join(root, "data"))
    for split, count in (("train", rows), ("test", 1)):
        images = rng.integers(0, 256, (count, image_size, image_size, 3), dtype=np.uint8)
        columns = {"img": list(images), "fine_label": (np.arange(count) % len(label_names)).tolist()}
        Dataset.from_dict(columns, features=features).to_parquet(os.path.join(root, "data", f"{split}.parquet"))
    data_args = DataArguments(
        dataset_name=root,
        coarse_label_column_name=None,
        validation_split_size=held_out,
        max_train_samples=train_rows,
        max_eval_samples=eval_rows,
        cache_dir=os.path.join(root, "cache"),
    )
    return load_image_datasets(data_args, image_size=image_size, seed=bench.seed)


def training_arguments(bench, output_dir):
    """`VTLMTrainingArguments` as `scripts/train.py` gets them, cut to one short run with no evaluation or saving."""
    return VTLMTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=bench.batch_size,
        per_device_eval_batch_size=bench.eval_batch_size,
        max_steps=bench.untimed_steps + bench.steps,
        fp16=bench.precision == "fp16",
        bf16=bench.precision == "bf16",
        use_cpu=bench.precision == "bf16" and not torch.cuda.is_available(),  # the Trainer's bf16 on a CPU needs it
        torch_compile=bench.torch_compile,
        eval_strategy="no",  # timed on its own
        save_strategy="no",
        load_best_model_at_end=False,
        report_to="none",
        disable_tqdm=True,
        seed=bench.seed,
    )


def training_batches(images, labels, bench, seed):
    """`--untimed_steps` + `--steps` training batches of `--batch_size` images drawn from `images` (uint8, on the
    device) with their labels, as the train DataLoader hands them over."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(bench.untimed_steps + bench.steps):
        index = torch.randint(len(images), (bench.batch_size,), generator=generator).to(images.device)
        yield {"images": images[index], "labels": labels[index]}


def time_bare_loop(trainer, images, labels, bench):
    """The trainer's own step (`training_step`: augmentation, autocast, the loss with a teacher's work, backward) and
    its update, on batches indexed out of one tensor on the device: the step without the Trainer loop and DataLoader."""
    args, model = trainer.args, trainer.model_wrapped
    clock = StepClock(args.device)
    for batch in training_batches(images, labels, bench, args.seed):
        trainer.training_step(model, batch)
        # The update as the Trainer's inner loop makes it, inline there, with no method of its own to call.
        if args.max_grad_norm > 0:
            trainer.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
        clock.tick()
    return clock.step_times(bench.untimed_steps)


def time_input_pipeline(trainer, bench):
    """Batches of a fresh train DataLoader of `trainer`, augmented (`training_inputs`), with nothing else done."""
    clock = StepClock(trainer.args.device)
    for step, batch in enumerate(trainer.get_train_dataloader()):
        trainer.training_inputs(batch, micro_step=0)
        clock.tick()
        if step + 1 == bench.untimed_steps + bench.steps:
            break
    return clock.step_times(bench.untimed_steps)


def time_teacher(trainer, images, labels, bench):
    """The teacher's forward pass alone (`Distillation.teacher_outputs`, as the loss runs it), on the model's
    augmented batches."""
    clock = StepClock(trainer.args.device)  # stamps before and after each forward pass
    for batch in training_batches(images, labels, bench, trainer.args.seed):
        pixel_values = trainer.training_inputs(batch, micro_step=0)["pixel_values"]
        clock.tick()
        trainer.distillation.teacher_outputs(pixel_values, trainer.normalize, trainer.accelerator.autocast)
        clock.tick()
    forward_times = clock.step_times(untimed_steps=1)[::2]  # start -> end of each pass; [1::2] are the gaps between
    return forward_times[bench.untimed_steps :]


def known_peak_tflops(device_name, precision):
    """The table's dense fp16/bf16 peak for a GPU of this name, and where it came from; (None, None) for others."""
    if precision in ("fp16", "bf16"):
        for key, peak in GPU_PEAK_TFLOPS:
            if re.search(rf"\b{key}\b", device_name):
                return peak, f"table: {key}, dense {precision}"
    return None, None


def summary(times, batch_size, flops_per_item=None, peak_tflops=None):
    """images/s of the median of `times` (seconds a step, or an evaluation, of `batch_size` images), with its
    TFLOP/s and MFU when the work per image is known."""
    median = statistics.median(times)
    result = {"images_per_s": batch_size / median, "median_s": median, "times_s": times}
    if flops_per_item is not None:
        result["achieved_tflops"] = flops_per_item * result["images_per_s"] / 1e12
        result["mfu"] = result["achieved_tflops"] / peak_tflops if peak_tflops else None
    return result


def run(model_args, augmentation_args, bench, distillation_args=None):
    """Measure every phase `--repeats` times and gather every figure and the settings into one JSON-able dict."""
    distillation_args = distillation_args or DistillationArguments()
    samples = {phase: [] for phase in ("training", "bare_loop", "input_pipeline", "evaluation", "teacher_forward")}
    config = build_config(model_args, distillation_args)
    label_names = CIFAR100_LABELS
    if teacher := distillation_args.teacher_model_name_or_path:  # no dataset is named: random images of its labels
        check_model_source(teacher)
        teacher_config = AutoConfig.from_pretrained(
            teacher, trust_remote_code=distillation_args.teacher_trust_remote_code
        )
        label_names = [teacher_config.id2label[index] for index in range(teacher_config.num_labels)]
    with tempfile.TemporaryDirectory(prefix="vtlm-benchmark-") as workdir:
        data = synthetic_data(bench, config.image_size, os.path.join(workdir, "synthetic"), label_names)
        args = training_arguments(bench, os.path.join(workdir, "trainer"))
        image_processor = build_image_processor(config.image_size)
        train = data.tensors("train")
        images, labels = train.images.to(args.device), train.labels.to(args.device)
        for _ in range(bench.repeats):
            set_seed(args.seed)  # as scripts/train.py: the same weights in every repeat
            model = build_model(model_args, config, data.label_names)
            distillation = build_distillation(distillation_args, config, data.label_names)
            augmentation = build_augmentation(augmentation_args, config, args)
            clock = StepClock(args.device)
            trainer = build_trainer(
                model, args, data, augmentation, image_processor, callbacks=[clock], distillation=distillation
            )
            trainer.remove_callback(PrinterCallback)  # no metrics dict printed at every evaluation
            num_parameters = model.num_parameters()
            trainer.train()
            samples["training"] += clock.step_times(bench.untimed_steps)
            samples["bare_loop"] += time_bare_loop(trainer, images, labels, bench)
            samples["input_pipeline"] += time_input_pipeline(trainer, bench)
            if distillation is not None:
                samples["teacher_forward"] += time_teacher(trainer, images, labels, bench)
            trainer.evaluate()  # untimed: eval-mode compilation and warm-up
            clock = StepClock(args.device)
            clock.tick()
            trainer.evaluate()
            clock.tick()
            samples["evaluation"] += clock.step_times(untimed_steps=1)
            del trainer, model  # before the next repeat builds its own

    precision, machine = args.precision, machine_info(args.device)
    peak, peak_source = bench.peak_tflops, "--peak_tflops"
    if peak is None:
        peak, peak_source = known_peak_tflops(machine["device_name"], precision)
    flops = flops_per_image(config)
    training = summary(samples["training"], bench.batch_size, flops.training, peak)
    eval_images = len(data.datasets["validation"])
    evaluation = summary(samples["evaluation"], eval_images, flops.forward, peak)
    steps_per_epoch = math.ceil(PROJECTION["train_images"] / bench.batch_size)
    epoch_minutes = (
        steps_per_epoch * training["median_s"] + PROJECTION["validation_images"] / evaluation["images_per_s"]
    ) / 60
    results = {
        "machine": machine,
        "settings": {
            "model": model_args.model_name_or_path or model_args.model_preset,
            "config_overrides": model_args.config_overrides,
            "num_parameters": num_parameters,
            **{key: value for key, value in asdict(bench).items() if key != "summarize"},
            "effective_precision": precision,
            "augmentation": asdict(augmentation_args),
            "distillation": asdict(distillation_args),
        },
        "flops_per_image": {"forward": flops.forward, "backward": flops.backward, "training": flops.training},
        "peak_tflops": peak,
        "peak_source": peak_source if peak else None,
        "training": training,
        "bare_loop": summary(samples["bare_loop"], bench.batch_size, flops.training, peak),
        "input_pipeline": summary(samples["input_pipeline"], bench.batch_size),
        "evaluation": evaluation,
        # The teacher's forward pass per training step: part of every training step's time, not of its FLOPs.
        "teacher_forward": summary(samples["teacher_forward"], bench.batch_size)
        if samples["teacher_forward"]
        else None,
        "projection": {
            **PROJECTION,
            "epoch_minutes": epoch_minutes,
            "total_minutes": PROJECTION["epochs"] * epoch_minutes,
        },
    }
    results["training_over_bare_step_time"] = training["median_s"] / results["bare_loop"]["median_s"]
    results["input_pipeline_over_training"] = results["input_pipeline"]["images_per_s"] / training["images_per_s"]
    return results


def markdown_table(all_results):
    """One Markdown row per result, every figure read from the JSON."""
    columns = (
        ("device", lambda r: f"{r['machine']['device_name']} ({r['machine']['cpus_available']} CPUs)"),
        ("threads, load", lambda r: f"{r['machine']['torch_num_threads']}, {r['machine']['load_average_1min']:.1f}"),
        ("model", lambda r: r["settings"]["model"] + (" (overridden)" if r["settings"]["config_overrides"] else "")),
        ("params", lambda r: f"{r['settings']['num_parameters']:,}"),
        ("batch", lambda r: r["settings"]["batch_size"]),
        ("precision", lambda r: r["settings"]["effective_precision"]),
        ("compile", lambda r: "on" if r["settings"]["torch_compile"] else "off"),
        ("training GFLOPs/img", lambda r: f"{r['flops_per_image']['training'] / 1e9:.3f}"),
        ("training img/s", lambda r: f"{r['training']['images_per_s']:.1f}"),
        ("training / bare step time", lambda r: f"{r['training_over_bare_step_time']:.3f}"),
        ("pipeline / training", lambda r: f"{r['input_pipeline_over_training']:.1f}x"),
        ("eval img/s", lambda r: f"{r['evaluation']['images_per_s']:.1f}"),
        (
            "teacher ms/step",
            lambda r: f"{1000 * r['teacher_forward']['median_s']:.1f}" if r.get("teacher_forward") else "-",
        ),
        ("training TFLOP/s", lambda r: f"{r['training']['achieved_tflops']:.4f}"),
        ("MFU", lambda r: f"{r['training']['mfu']:.1%}" if r["training"]["mfu"] is not None else "-"),
        ("full run (min)", lambda r: f"{r['projection']['epochs']} epochs: {r['projection']['total_minutes']:,.0f}"),
    )
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell(results)) for _, cell in columns) + " |" for results in all_results]
    return "\n".join(lines)
