#!/usr/bin/env python
"""Measure how fast VTLM trains and evaluates, through the same code path as `scripts/train.py`, on synthetic data.

    python scripts/benchmark.py                                       # vtlm-37m, batch 512, fp16 on a GPU
    python scripts/benchmark.py --precision bf16 --torch_compile True
    python scripts/benchmark.py --model_preset vtlm-5m --batch_size 64 --steps 10 --eval_batch_size 256
    python scripts/benchmark.py --summarize runs/benchmark-*.json     # a Markdown table of earlier results

One run measures, side by side and in alternating order over `--repeats`:

- training: `VTLMTrainer.train()` with `VTLMTrainingArguments`' recipe, `collate_batch` and `BatchAugmentation`, as
  `scripts/train.py` builds them. A callback stamps the end of every optimizer step (CUDA events on a GPU), so a step
  is everything between two step ends: data loading, augmentation, forward, backward, clipping, the AdamW step, the
  scheduler, callbacks and logging.
- a bare PyTorch loop: the same model, batch, precision, optimizer (class, arguments and parameter groups), clipping,
  schedule and augmentation call, on batches indexed out of one uint8 tensor on the device. real / bare step time is
  the cost of the framework (Trainer, accelerate, DataLoader, datasets).
- the input pipeline alone: the Trainer's own train DataLoader plus the augmentation, with no model; its images/s over
  the training images/s says how far data loading is from limiting training.
- evaluation: `trainer.evaluate()` on `--eval_batches` batches of `--eval_batch_size`, metrics included.

The first `--untimed_steps` steps of each phase (worker start-up, compilation, allocator warm-up) are not timed; every
figure is a median. FLOPs come from `torch.utils.flop_counter` (`training/flops.py`); MFU needs a peak, from
`--peak_tflops` or the table of known GPUs below. The data is synthetic (random pixels, written in the Hub's CIFAR
schema and read back by `load_image_datasets`), so accuracy means nothing here; speed does not depend on pixel values.
"""

import gc
import json
import logging
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from itertools import pairwise

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never wait on the Hub

import accelerate  # noqa: E402
import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from datasets import ClassLabel, Dataset, Features, Image  # noqa: E402
from train import build_config, build_model  # noqa: E402  (scripts/train.py: the same config and model)
from transformers import HfArgumentParser, Trainer, TrainerCallback, get_scheduler, set_seed  # noqa: E402

from modeling import CIFAR100_LABELS, build_image_processor  # noqa: E402
from training.arguments import ModelArguments, VTLMTrainingArguments  # noqa: E402
from training.augmentation import AugmentationArguments, augmentation_seed  # noqa: E402
from training.data import DataArguments, load_image_datasets  # noqa: E402
from training.flops import flops_per_image  # noqa: E402
from training.trainer import build_augmentation, build_trainer  # noqa: E402

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
# Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets. Matched in order, as whole
# words, against `torch.cuda.get_device_name()`: the PCIe and NVL H100s before the SXM one ("NVIDIA H100 80GB HBM3").
GPU_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)
# The CIFAR-100 run that `scripts/train.py` does: 45k train and 5k validation images an epoch, 100 epochs.
PROJECTION = {"train_images": 45_000, "validation_images": 5_000, "epochs": 100}


@dataclass
class BenchmarkArguments:
    batch_size: int = field(
        default=VTLMTrainingArguments.per_device_train_batch_size,
        metadata={"help": "Training batch per step (the Trainer's per_device_train_batch_size)."},
    )
    eval_batch_size: int = field(
        default=VTLMTrainingArguments.per_device_eval_batch_size,
        metadata={"help": "Evaluation batch (the Trainer's per_device_eval_batch_size)."},
    )
    eval_batches: int = field(default=5, metadata={"help": "Batches in the timed evaluation set."})
    precision: str = field(
        default="fp16",
        metadata={"help": "fp16 or bf16 mixed precision, or fp32. A CPU runs fp16 as fp32, as the Trainer does.",
                  "choices": PRECISIONS},
    )  # fmt: skip
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the model (both loops)."})
    steps: int = field(default=50, metadata={"help": "Timed steps of each phase, in each repeat."})
    untimed_steps: int = field(
        default=5, metadata={"help": "Steps run before the timed ones: worker start-up, compilation, warm-up."}
    )
    repeats: int = field(default=3, metadata={"help": "Rounds of training, bare loop, pipeline and evaluation."})
    dataloader_num_workers: int = field(
        default=VTLMTrainingArguments.dataloader_num_workers,
        metadata={"help": "The Trainer's DataLoader workers; the default is the recipe's."},
    )
    peak_tflops: float | None = field(
        default=None, metadata={"help": "The device's peak TFLOP/s for MFU; default: known GPUs at fp16/bf16."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the weights, the data order and the augmentation."})
    synthetic_data_dir: str | None = field(
        default=None,
        metadata={"help": "Keep the synthetic dataset here and reuse it across runs; default: a temporary folder."},
    )
    output_json: str = field(default="runs/benchmark.json", metadata={"help": "Where every measured field goes."})
    summarize: list[str] | None = field(
        default=None, metadata={"help": "Print a Markdown table of these JSON results and exit, measuring nothing."}
    )

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("batch_size", "eval_batch_size", "eval_batches", "steps", "untimed_steps", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ValueError(f"--peak_tflops must be positive, got {self.peak_tflops}")


class StepClock:
    """Time stamps of step ends, in wall time and in the CPU time of this process (all its threads; DataLoader
    workers are other processes). On a GPU the wall stamps are CUDA events, read after one synchronisation at the
    end, so the loop is never stalled by the clock; on a CPU every op has finished when it returns."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks, self.cpu_marks = [], []

    def tick(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())
        self.cpu_marks.append(time.process_time())

    def step_times(self, untimed_steps: int) -> dict[str, list[float]]:
        """Seconds of each step after the first `untimed_steps`, wall and host CPU. The first stamp ends step 1, so
        interval i is step i + 2: dropping `untimed_steps - 1` intervals leaves the timed steps."""
        if self.cuda:
            torch.cuda.synchronize()
            wall = [start.elapsed_time(end) / 1000 for start, end in pairwise(self.marks)]
        else:
            wall = [end - start for start, end in pairwise(self.marks)]
        cpu = [end - start for start, end in pairwise(self.cpu_marks)]
        return {"wall": wall[untimed_steps - 1 :], "host_cpu": cpu[untimed_steps - 1 :]}


class StepTimer(TrainerCallback):
    def __init__(self, clock: StepClock):
        self.clock = clock

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.tick()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_synthetic_cifar(root, train_rows, test_rows, image_size, seed):
    """Random RGB images in `uoft-cs/cifar100`'s schema (PNG `img`, ClassLabel `fine_label`), as parquet under
    `root/data`. Reused when `root` already holds this exact set (see `--synthetic_data_dir`)."""
    spec = {"train_rows": train_rows, "test_rows": test_rows, "image_size": image_size, "seed": seed}
    spec_path = os.path.join(root, "synthetic.json")
    if os.path.exists(spec_path):
        with open(spec_path) as file:
            if json.load(file) == spec:
                return
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    features = Features({"img": Image(), "fine_label": ClassLabel(names=list(CIFAR100_LABELS))})
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    for split, rows in (("train", train_rows), ("test", test_rows)):
        images = rng.integers(0, 256, (rows, image_size, image_size, 3), dtype=np.uint8)
        labels = (np.arange(rows) % len(CIFAR100_LABELS)).tolist()
        dataset = Dataset.from_dict({"img": list(images), "fine_label": labels}, features=features)
        dataset.to_parquet(os.path.join(root, "data", f"{split}-00000-of-00001.parquet"))
    with open(spec_path, "w") as file:
        json.dump(spec, file)


def load_synthetic_data(bench, image_size, root):
    """Train and validation splits exactly as `load_image_datasets` returns them for CIFAR-100, but synthetic.

    The train split holds one more batch than a phase reads, so no phase crosses an epoch boundary."""
    train_rows = bench.batch_size * (bench.untimed_steps + bench.steps + 1)
    eval_rows = bench.eval_batch_size * bench.eval_batches
    # The stratified hold-out needs every class at least twice and on both sides; the limits below cut it back.
    num_classes = len(CIFAR100_LABELS)
    held_out = max(eval_rows, num_classes)
    rows = math.ceil((max(train_rows, num_classes) + held_out) / num_classes) * num_classes
    write_synthetic_cifar(root, rows, test_rows=1, image_size=image_size, seed=bench.seed)
    data_args = DataArguments(
        dataset_name=root,
        coarse_label_column_name=None,
        validation_split_size=held_out,
        max_train_samples=train_rows,
        max_eval_samples=eval_rows,
        preprocessing_num_workers=min(8, os.cpu_count() or 1) if train_rows >= 20_000 else None,
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
        dataloader_num_workers=bench.dataloader_num_workers,
        eval_strategy="no",  # timed on its own
        save_strategy="no",
        load_best_model_at_end=False,
        seed=bench.seed,
    )


def effective_precision(args):
    return "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"


def build_timed_trainer(model_args, config, data, augmentation, args, clock):
    set_seed(args.seed)  # as scripts/train.py: the same weights in every phase
    return build_trainer(build_model(model_args, config), args, data, augmentation, callbacks=[StepTimer(clock)])


def time_real_path(model_args, config, data, augmentation, args, bench):
    """One training run through `VTLMTrainer`, then the input pipeline and `evaluate()` on the same Trainer."""
    device = args.device
    if args.torch_compile:
        torch.compiler.reset()  # a fresh compile, as a new run gets, within dynamo's recompilation limit
    clock = StepClock(device)
    trainer = build_timed_trainer(model_args, config, data, augmentation, args, clock)
    trainer.train()
    training = clock.step_times(bench.untimed_steps)

    # The input pipeline: the Trainer's own train DataLoader (accelerate-prepared: batches arrive on the device),
    # augmented as `VTLMTrainer.training_step` does, no model; then the DataLoader alone, to tell the two apart.
    pipeline, loader = time_input_pipeline(trainer, bench, augment=True), time_input_pipeline(trainer, bench)

    trainer.evaluate()  # untimed: eval-mode compilation, eval DataLoader workers
    synchronize(device)
    start = time.perf_counter()
    trainer.evaluate()
    synchronize(device)
    evaluation = time.perf_counter() - start
    return training, pipeline, loader, evaluation


def time_input_pipeline(trainer, bench, augment=False):
    """Batches of a fresh train DataLoader of `trainer`, augmented or not, with nothing else done to them."""
    args = trainer.args
    clock = StepClock(args.device)
    for step, batch in enumerate(trainer.get_train_dataloader()):
        if augment:
            seed = augmentation_seed(args.seed, step, args.process_index, 0)
            trainer.augmentation(batch["pixel_values"], batch["labels"], seed)
        clock.tick()
        if step + 1 == bench.untimed_steps + bench.steps:
            break
    return clock.step_times(bench.untimed_steps)


def time_bare_loop(model_args, config, augmentation, args, bench, images, labels):
    """The same training steps in plain PyTorch: no Trainer, no accelerate, no DataLoader."""
    device = args.device
    set_seed(args.seed)
    model = build_model(model_args, config).to(device).train()
    # The optimizer the Trainer makes: its class and arguments (AdamW, fused where torch has it), and its parameter
    # groups, decay on all but VTLM's no-decay parameters.
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    no_decay = set(model.no_weight_decay_parameter_names())
    groups = [
        {"params": [p for n, p in model.named_parameters() if n not in no_decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n in no_decay], "weight_decay": 0.0},
    ]
    optimizer = optimizer_cls(groups, **optimizer_kwargs)
    num_steps = bench.untimed_steps + bench.steps
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, args.get_warmup_steps(num_steps), num_training_steps=num_steps
    )
    forward = model
    if args.torch_compile:
        torch.compiler.reset()
        forward = torch.compile(model, backend=args.torch_compile_backend, mode=args.torch_compile_mode)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(effective_precision(args))
    scaler = torch.amp.GradScaler(device.type) if args.fp16 else None
    generator = torch.Generator().manual_seed(args.seed)

    clock = StepClock(device)
    for step in range(num_steps):
        index = torch.randint(len(images), (bench.batch_size,), generator=generator).to(device)
        seed = augmentation_seed(args.seed, step, args.process_index, 0)
        pixel_values, targets = augmentation(images[index], labels[index], seed)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = forward(pixel_values=pixel_values, labels=targets).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick()
    return clock.step_times(bench.untimed_steps)


def known_peak_tflops(device_name, precision):
    """The table's dense fp16/bf16 peak for a GPU of this name, and where it came from; (None, None) for others."""
    if precision in ("fp16", "bf16"):
        for key, peak in GPU_PEAK_TFLOPS:
            if re.search(rf"\b{key}\b", device_name):
                return peak, f"table: {key}, dense {precision}"
    return None, None


def cpu_model_name():
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device):
    cuda = device.type == "cuda"
    return {
        "device_type": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model_name(),
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu_model": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
    }


def throughput(times, batch_size, flops_per_item, peak_tflops):
    """images/s of the median step, with its TFLOP/s and MFU when the work per image is known. The host CPU time is
    this process's: when it nears the wall time, the step is bound by Python and the CPU, not by the device."""
    wall = times["wall"]
    median = statistics.median(wall)
    result = {
        "images_per_s": batch_size / median,
        "step_time_s_median": median,
        "step_time_s_min": min(wall),
        "step_time_s_max": max(wall),
        "host_cpu_time_s_median": statistics.median(times["host_cpu"]),
        "timed_steps": len(wall),
        "step_times_s": wall,
    }
    if flops_per_item is not None:
        result["achieved_tflops"] = flops_per_item * result["images_per_s"] / 1e12
        result["mfu"] = result["achieved_tflops"] / peak_tflops if peak_tflops else None
    return result


def measure(model_args, augmentation_args, bench, workdir):
    """Every phase, `--repeats` times, in alternating order: (config, training arguments, samples, per-repeat rows)."""
    image_size = build_config(model_args).image_size
    data = load_synthetic_data(bench, image_size, bench.synthetic_data_dir or os.path.join(workdir, "synthetic"))
    config = build_config(model_args, data)
    args = training_arguments(bench, os.path.join(workdir, "trainer"))
    augmentation = build_augmentation(augmentation_args, config, args, build_image_processor(config.image_size))
    train = data.tensors("train")
    images = train.pixel_values.to(args.device)  # (N, 3, H, W) uint8: the bare loop's whole dataset
    labels = train.labels.to(args.device)

    phase_names = ("training", "bare_loop", "input_pipeline", "data_loader")
    samples = {name: {"wall": [], "host_cpu": []} for name in phase_names}
    samples["evaluation"] = []
    per_repeat = []
    for repeat in range(bench.repeats):
        order = ("real", "bare") if repeat % 2 == 0 else ("bare", "real")  # slow drift then hits both alike
        for phase in order:
            if phase == "real":
                training, pipeline, loader, evaluation = time_real_path(
                    model_args, config, data, augmentation, args, bench
                )
            else:
                bare = time_bare_loop(model_args, config, augmentation, args, bench, images, labels)
            gc.collect()  # the phase's model, optimizer and DataLoader workers go before the next phase starts
            if args.device.type == "cuda":
                torch.cuda.empty_cache()
        phases = {"training": training, "bare_loop": bare, "input_pipeline": pipeline, "data_loader": loader}
        for name, times in phases.items():
            for kind in ("wall", "host_cpu"):
                samples[name][kind] += times[kind]
        samples["evaluation"].append(evaluation)
        medians = {name: statistics.median(times["wall"]) for name, times in phases.items()}
        per_repeat.append(
            {
                "order": list(order),
                **{f"{name}_step_time_s_median": median for name, median in medians.items()},
                "evaluation_time_s": evaluation,
                "real_over_bare_step_time": medians["training"] / medians["bare_loop"],
                "input_pipeline_over_training": medians["training"] / medians["input_pipeline"],
                "data_loader_over_training": medians["training"] / medians["data_loader"],
            }
        )
        logger.info(f"repeat {repeat + 1}/{bench.repeats}: {json.dumps(per_repeat[-1])}")
    return config, args, len(data.datasets["validation"]), samples, per_repeat


def run(model_args, augmentation_args, bench):
    """Measure, then gather every figure, its parts and the settings into one JSON-able dict."""
    load_before = os.getloadavg()
    workdir = tempfile.mkdtemp(prefix="vtlm-benchmark-")
    try:
        config, args, eval_images, samples, per_repeat = measure(model_args, augmentation_args, bench, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    device, precision = args.device, effective_precision(args)
    flops = flops_per_image(config)
    with torch.device("meta"):
        num_parameters = build_model(model_args, config).num_parameters()
    peak, peak_source = None, None
    if device.type == "cuda":
        peak, peak_source = known_peak_tflops(torch.cuda.get_device_name(device), precision)
    if bench.peak_tflops is not None:
        peak, peak_source = bench.peak_tflops, "--peak_tflops"

    training = throughput(samples["training"], bench.batch_size, flops.training, peak)
    bare_loop = throughput(samples["bare_loop"], bench.batch_size, flops.training, peak)
    pipeline = throughput(samples["input_pipeline"], bench.batch_size, None, None)
    loader = throughput(samples["data_loader"], bench.batch_size, None, None)
    eval_time = statistics.median(samples["evaluation"])
    eval_tflops = flops.forward * eval_images / eval_time / 1e12
    evaluation = {
        "images_per_s": eval_images / eval_time,
        "time_s_median": eval_time,
        "images": eval_images,
        "batch_size": bench.eval_batch_size,
        "timed_runs": len(samples["evaluation"]),
        "achieved_tflops": eval_tflops,
        "mfu": eval_tflops / peak if peak else None,
    }
    train_steps = math.ceil(PROJECTION["train_images"] / bench.batch_size)
    epoch_s = (
        train_steps * training["step_time_s_median"] + PROJECTION["validation_images"] / evaluation["images_per_s"]
    )
    return {
        "data": "synthetic",
        "machine": {**machine_info(device), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "settings": {
            "model_preset": model_args.model_preset,
            "model_name_or_path": model_args.model_name_or_path,
            "config_overrides": model_args.config_overrides,
            "architecture": {key: getattr(config, key) for key in ARCHITECTURE_KEYS},
            "num_parameters": num_parameters,
            "batch_size": bench.batch_size,
            "eval_batch_size": bench.eval_batch_size,
            "eval_batches": bench.eval_batches,
            "precision": bench.precision,
            "effective_precision": precision,
            "torch_compile": bench.torch_compile,
            "steps": bench.steps,
            "untimed_steps": bench.untimed_steps,
            "repeats": bench.repeats,
            "dataloader_num_workers": args.dataloader_num_workers,
            "optimizer": str(getattr(args.optim, "value", args.optim)),
            "augmentation": asdict(augmentation_args),
            "seed": bench.seed,
        },
        "flops_per_image": {
            "forward": flops.forward,
            "backward": flops.backward,
            "training": flops.training,
            "counter": "torch.utils.flop_counter (training/flops.py)",
        },
        "peak_tflops": peak,
        "peak_source": peak_source,
        "training": training,
        "bare_loop": bare_loop,
        "real_over_bare_step_time": training["step_time_s_median"] / bare_loop["step_time_s_median"],
        # Less sensitive to other processes on a shared machine: the median of the ratios of phases run back to back,
        # and the ratio of this process's CPU time per step.
        "real_over_bare_step_time_paired": statistics.median(row["real_over_bare_step_time"] for row in per_repeat),
        "real_over_bare_host_cpu_time": training["host_cpu_time_s_median"] / bare_loop["host_cpu_time_s_median"],
        "input_pipeline": pipeline,
        "input_pipeline_over_training": pipeline["images_per_s"] / training["images_per_s"],
        "data_loader": loader,
        "data_loader_over_training": loader["images_per_s"] / training["images_per_s"],
        "evaluation": evaluation,
        "per_repeat": per_repeat,
        "projection": {
            **PROJECTION,
            "train_steps_per_epoch": train_steps,
            "epoch_minutes": epoch_s / 60,
            "total_minutes": PROJECTION["epochs"] * epoch_s / 60,
            "formula": "epochs * (ceil(train_images / batch_size) * training.step_time_s_median "
            "+ validation_images / evaluation.images_per_s) / 60",
        },
    }


ARCHITECTURE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size")


def describe(results):
    """The run on a few readable lines."""
    settings, machine = results["settings"], results["machine"]
    flops = results["flops_per_image"]
    precision = settings["effective_precision"]
    if precision != settings["precision"]:
        precision += f" ({settings['precision']} requested; the Trainer runs fp32 on a CPU)"
    lines = [
        f"VTLM benchmark on {machine['device_name']} ({machine['device_type']}, {machine['cpus_available']} CPUs, "
        f"torch {machine['torch']}, transformers {machine['transformers']}), {results['data']} data",
        f"{model_label(settings)}: "
        f"{settings['num_parameters']:,} parameters, batch {settings['batch_size']}, {precision}, "
        f"torch.compile {'on' if settings['torch_compile'] else 'off'}, "
        f"{settings['repeats']} x {settings['steps']} timed steps after {settings['untimed_steps']} untimed",
        f"FLOPs per image: forward {flops['forward'] / 1e9:.3f} G, training (forward + backward) "
        f"{flops['training'] / 1e9:.3f} G; peak {results['peak_tflops'] or '-'} TFLOP/s ({results['peak_source']})",
        "",
        f"{'':32}{'images/s':>10}{'ms/batch':>10}{'host CPU ms':>13}{'TFLOP/s':>10}{'MFU':>8}",
    ]
    rows = (
        ("training (VTLMTrainer)", results["training"], results["training"]["step_time_s_median"]),
        ("bare PyTorch loop", results["bare_loop"], results["bare_loop"]["step_time_s_median"]),
        ("input pipeline (no model)", results["input_pipeline"], results["input_pipeline"]["step_time_s_median"]),
        ("  of which DataLoader alone", results["data_loader"], results["data_loader"]["step_time_s_median"]),
        (
            "evaluation (trainer.evaluate)",
            results["evaluation"],
            results["evaluation"]["time_s_median"] / settings["eval_batches"],
        ),
    )
    for name, row, batch_s in rows:
        cpu = f"{row['host_cpu_time_s_median'] * 1000:.1f}" if "host_cpu_time_s_median" in row else "-"
        tflops = f"{row['achieved_tflops']:.3f}" if "achieved_tflops" in row else "-"
        mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"
        lines.append(f"{name:32}{row['images_per_s']:10.1f}{batch_s * 1000:10.1f}{cpu:>13}{tflops:>10}{mfu:>8}")
    projection = results["projection"]
    lines += [
        "",
        f"real / bare step time:       {results['real_over_bare_step_time']:.3f}  (framework overhead "
        f"{results['real_over_bare_step_time'] - 1:+.1%})",
        f"  median of per-repeat ratios {results['real_over_bare_step_time_paired']:.3f}, "
        f"host CPU time per step {results['real_over_bare_host_cpu_time']:.3f}",
        f"input pipeline / training:   {results['input_pipeline_over_training']:.2f}x  (DataLoader alone "
        f"{results['data_loader_over_training']:.2f}x)",
        f"{projection['epochs']} epochs ({projection['train_images'] // 1000}k train + "
        f"{projection['validation_images'] // 1000}k val) at these speeds: {projection['total_minutes']:.1f} min",
    ]
    return "\n".join(lines)


def model_label(settings):
    """The preset's name, or the architecture when --config_overrides changed it."""
    name = settings["model_name_or_path"] or settings["model_preset"]
    if not settings["config_overrides"]:
        return name
    architecture = settings["architecture"]
    return (
        f"hidden {architecture['hidden_size']}, {architecture['num_hidden_layers']} layers, "
        f"{architecture['num_attention_heads']} heads, MLP {architecture['intermediate_size']} ({name} overridden)"
    )


def markdown_table(all_results):
    """One Markdown row per result, every figure read from the JSON."""
    columns = (
        ("device", lambda r: f"{r['machine']['device_name']} ({r['machine']['cpus_available']} CPUs)"),
        ("model", lambda r: model_label(r["settings"])),
        ("batch", lambda r: r["settings"]["batch_size"]),
        ("precision", lambda r: r["settings"]["effective_precision"]),
        ("compile", lambda r: "on" if r["settings"]["torch_compile"] else "off"),
        ("training img/s", lambda r: f"{r['training']['images_per_s']:.1f}"),
        ("bare loop img/s", lambda r: f"{r['bare_loop']['images_per_s']:.1f}"),
        ("real / bare step time", lambda r: f"{r['real_over_bare_step_time']:.3f}"),
        ("per-repeat median", lambda r: f"{r['real_over_bare_step_time_paired']:.3f}"),
        ("input pipeline img/s", lambda r: f"{r['input_pipeline']['images_per_s']:.1f}"),
        ("pipeline / training", lambda r: f"{r['input_pipeline_over_training']:.2f}x"),
        ("DataLoader / training", lambda r: f"{r['data_loader_over_training']:.2f}x"),
        ("eval img/s", lambda r: f"{r['evaluation']['images_per_s']:.1f}"),
        ("training TFLOP/s", lambda r: f"{r['training']['achieved_tflops']:.4f}"),
        ("MFU", lambda r: f"{r['training']['mfu']:.1%}" if r["training"]["mfu"] is not None else "-"),
        ("100 epochs (min)", lambda r: f"{r['projection']['total_minutes']:,.0f}"),
    )
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    for results in all_results:
        lines.append("| " + " | ".join(str(cell(results)) for _, cell in columns) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = HfArgumentParser((ModelArguments, AugmentationArguments, BenchmarkArguments))
    model_args, augmentation_args, bench = parser.parse_args_into_dataclasses(sys.argv[1:] if argv is None else argv)
    if bench.summarize:
        results = []
        for path in bench.summarize:
            with open(path) as file:
                results.append(json.load(file))
        print(markdown_table(results))
        return results

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()
    datasets.disable_progress_bars()

    results = run(model_args, augmentation_args, bench)
    os.makedirs(os.path.dirname(os.path.abspath(bench.output_json)), exist_ok=True)
    with open(bench.output_json, "w") as file:
        json.dump(results, file, indent=2)
    print(describe(results))
    print(f"\nwrote {bench.output_json}")
    return results


if __name__ == "__main__":
    main()
