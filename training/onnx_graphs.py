"""The ONNX graphs an export ships, and what the smaller ones cost: written from a model, run by ONNX Runtime on the
CPU, and measured on a dataset's test split.

Three graphs, under the names transformers.js gives its dtypes (`GRAPH_FILES`): `fp32` is the exact export; `fp16`
(weights and activations in half precision, its input and output kept fp32, so a client feeds it as it feeds the
fp32 graph) and `q8` (onnxruntime's dynamic quantization: 8-bit weights, activations quantized on the fly) are
about half and a quarter of its size, and not exact. `measure_graphs` scores each on every image of a test split
(top-1 with its 95% interval, agreement with the fp32 graph) and times it, and `choose_default_dtype` picks the
graph transformers.js should load by default from those numbers. ONNX needs `onnx`, `onnxscript` and
`onnxruntime` (the `export` extra), imported only where a graph is written or run.
"""

import contextlib
import logging
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .arguments import DataArguments
from .data import load_image_datasets
from .image_ops import Normalize
from .metrics import wilson_interval
from .provenance import machine_info
from .run_record import dataset_display_name, read_run_arguments

# transformers.js loads `onnx/model{suffix}.onnx` for its `dtype` option (or `transformers.js_config.dtype` in
# config.json): no suffix for fp32, `_fp16` for fp16, `_quantized` for q8. Its int8 and uint8 dtypes would look for
# `model_int8.onnx` and `model_uint8.onnx`, which are not written: q8 is the 8-bit graph its own converter ships.
GRAPH_FILES = {"fp32": "onnx/model.onnx", "fp16": "onnx/model_fp16.onnx", "q8": "onnx/model_quantized.onnx"}
# How the card and the table name each graph.
GRAPH_NAMES = {
    "fp32": "ONNX, fp32 (exact)",
    "fp16": "ONNX, fp16 weights and activations (fp32 input and output)",
    "q8": "ONNX, 8-bit weights (dynamic quantization)",
}
# A smaller graph may become transformers.js's default when its top-1 is at most this many points (of 100) below the
# fp32 graph's, on the same images: the smallest such graph is chosen (`choose_default_dtype`).
MAX_TOP1_DROP = 0.3
LATENCY_BATCH_SIZES = (1, 32)
EVALUATION_BATCH_SIZE = 256  # images per ONNX Runtime call when scoring a split
# What the ONNX exporter logs that no user of the export can act on, and the level that keeps it quiet: torch warns
# that it skips torchvision's detection ops (a classifier has none); onnx_ir's passes log each initializer they
# deduplicate (two dozen INFO lines for a tiny model) and onnxscript's optimizer each rule it applied.
EXPORTER_LOGGERS = {
    "torch.onnx._internal.exporter._registration": logging.ERROR,
    "onnx_ir": logging.WARNING,
    "onnxscript": logging.WARNING,
}
# onnxruntime's quantizer warns on the root logger, on every call, that the graph could be "pre-processed" (symbolic
# shape inference and ONNX Runtime's own fusions) first; the exported graph already has its LayerNorm and GELU fused.
QUANTIZER_LOGGERS = {"": logging.ERROR}


class LogitsOnly(nn.Module):
    """An image classifier whose output is the logits tensor alone, so the ONNX graph's output is a plain tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def export_onnx(model, path):
    """Write `model` (a VTLM or ViT classifier) to the ONNX file `path`: input `pixel_values` with a dynamic batch
    dimension, output `logits`, weights inside the file.

    The exporter's debugging metadata is dropped from the graph's nodes before it is written: its stack traces
    (`pkg.torch.onnx.stack_trace`) and FX nodes name this machine's source files (`File "<venv>/site-packages/..."`),
    and the graph is published. ONNX Runtime never reads node metadata, so the graph computes the same."""
    from onnxscript.ir.passes.common import ClearMetadataAndDocStringPass

    config = model.config
    example = torch.zeros(2, config.num_channels, config.image_size, config.image_size)  # batch 2: not specialised
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), _quiet(EXPORTER_LOGGERS):
        # torch's own pytree code uses a deprecated check: nothing a user of the export can act on either.
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
        program = torch.onnx.export(
            LogitsOnly(model).eval(),
            (example,),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
            dynamo=True,
            verbose=False,
        )
        ClearMetadataAndDocStringPass()(program.model)
        program.save(str(path), external_data=False)


def write_smaller_graphs(folder):
    """Write the fp16 and q8 graphs (`GRAPH_FILES`) of `folder`'s fp32 graph beside it.

    fp16: onnxruntime's `convert_float_to_float16` with `keep_io_types=True`: a Cast in and out, everything between in
    half precision, minus the ops onnxruntime keeps in fp32 by default. q8: onnxruntime's `quantize_dynamic` of every
    MatMul and Conv with a constant weight, weights as unsigned 8-bit integers (QUInt8), as transformers.js's own
    converter quantizes a graph that has a Conv: onnxruntime-web has no ConvInteger for signed 8-bit weights. Every
    VTLM graph starts with a Conv (the patch embedding or the conv tokenizer)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    folder = Path(folder)
    fp32 = folder / GRAPH_FILES["fp32"]
    onnx.save(convert_float_to_float16(onnx.load(fp32), keep_io_types=True), folder / GRAPH_FILES["fp16"])
    with _quiet(QUANTIZER_LOGGERS):
        quantize_dynamic(fp32, folder / GRAPH_FILES["q8"], weight_type=QuantType.QUInt8)


@contextlib.contextmanager
def _quiet(levels):
    """Raise each logger of `levels` ({name: level}) to its level inside the block, and restore it after."""
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    before = {logger: logger.level for logger in loggers}
    try:
        for logger, level in loggers.items():
            logger.setLevel(max(logger.level, level))
        yield
    finally:
        for logger, level in before.items():
            logger.setLevel(level)


def onnx_session(path, num_threads=None):
    """An ONNX Runtime session on the CPU, with `num_threads` intra-op threads (default: ONNX Runtime's choice)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session, pixel_values: torch.Tensor) -> torch.Tensor:
    (logits,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
    return torch.from_numpy(logits)


# train.py's data flags that say which test split the graphs are measured on.
DATA_FLAGS = ("dataset_name", "dataset_config_name", "dataset_display_name", "image_column_name", "label_column_name")


def recorded_data(source, **given) -> DataArguments:
    """The data to measure a run's graphs on: the data flags `given` (not None), else those the run folder or
    checkpoint `source` recorded in its `run_arguments.json` (the data it trained on), else train.py's defaults."""
    recorded = read_run_arguments(source).get("data_arguments", {}) if Path(source).is_dir() else {}
    values = {name: value for name, value in given.items() if value is not None}
    return DataArguments(**{**{name: recorded[name] for name in DATA_FLAGS if name in recorded}, **values})


def load_test_split(data_args, config) -> dict:
    """The test split of `data_args`'s dataset at `config.image_size`, as `load_image_datasets` decodes it for training
    and evaluation: `{"images": uint8 (N, 3, H, W), "labels": int64 (N,), "dataset": its publishable name}`. A
    dataset whose classes are not the model's, in the model's order, is refused: its top-1 would mean nothing."""
    data = load_image_datasets(data_args, image_size=config.image_size)
    model_labels = [config.id2label[index] for index in range(config.num_labels)]
    if model_labels != data.label_names:
        raise ValueError(
            f"the model predicts {config.num_labels} labels that differ from the dataset's {len(data.label_names)} "
            f"({dataset_display_name(data_args)}, column {data.label_column!r})"
        )
    split = data.tensors("test")
    return {"images": split.images, "labels": split.labels, "dataset": dataset_display_name(data_args)}


def measure_graphs(folder, test_split, image_mean, image_std, num_threads=None, latency_calls=20) -> dict:
    """Score and time each graph of `GRAPH_FILES` in `folder` on `test_split` (`load_test_split`), normalised with
    `image_mean` and `image_std` (the export's image processor's), and choose transformers.js's default dtype.

    Returns the measurement as written to the export's `onnx_accuracy.json`: for each graph its file and size in
    bytes, images right (`correct`), `accuracy` with its 95% Wilson interval, `points_from_fp32` (its top-1 minus
    the fp32 graph's, in points), `same_top1_as_fp32` (the fraction of images whose top class is the fp32 graph's),
    and `latency_ms` by batch size (`LATENCY_BATCH_SIZES`): the median of `latency_calls` calls, the graphs' calls
    interleaved so that a change in the machine's load touches all alike, each session with `num_threads` threads.
    """
    import onnxruntime

    folder = Path(folder)
    sessions = {dtype: onnx_session(folder / file, num_threads) for dtype, file in GRAPH_FILES.items()}
    normalize = Normalize(image_mean, image_std)
    images, labels = test_split["images"], test_split["labels"]
    predictions = {dtype: [] for dtype in sessions}
    for start in range(0, len(labels), EVALUATION_BATCH_SIZE):
        pixel_values = normalize(images[start : start + EVALUATION_BATCH_SIZE])
        for dtype, session in sessions.items():
            predictions[dtype].append(onnx_logits(session, pixel_values).argmax(-1))
    predictions = {dtype: torch.cat(batches) for dtype, batches in predictions.items()}
    latencies = {dtype: {} for dtype in sessions}
    for batch_size in LATENCY_BATCH_SIZES:
        pixel_values = normalize(images[torch.arange(batch_size) % len(images)])  # a split this small repeats
        for dtype, milliseconds in _median_latencies_ms(sessions, pixel_values, latency_calls).items():
            latencies[dtype][str(batch_size)] = milliseconds

    num_images = len(labels)
    graphs = {}
    for dtype, predicted in predictions.items():
        correct = int((predicted == labels).sum())
        low, high = wilson_interval(correct, num_images)
        graphs[dtype] = {
            "file": GRAPH_FILES[dtype],
            "bytes": (folder / GRAPH_FILES[dtype]).stat().st_size,
            "correct": correct,
            "accuracy": correct / num_images,
            "accuracy_ci_low": low,
            "accuracy_ci_high": high,
            "same_top1_as_fp32": (predicted == predictions["fp32"]).float().mean().item(),
            "latency_ms": latencies[dtype],
        }
    for graph in graphs.values():
        graph["points_from_fp32"] = 100 * (graph["accuracy"] - graphs["fp32"]["accuracy"])
    machine = {**machine_info(torch.device("cpu")), "onnxruntime": onnxruntime.__version__}
    return {
        "dataset": test_split["dataset"],
        "split": "test",
        "num_images": num_images,
        "graphs": graphs,
        "default_dtype": choose_default_dtype(graphs),
        "rule": f"the smallest graph whose top-1 is at most {MAX_TOP1_DROP} points below the fp32 graph's (the fp32 "
        "graph itself when no smaller one is)",
        "latency": {"statistic": "median", "calls": latency_calls, "num_threads": num_threads},
        "machine": machine,
    }


def _median_latencies_ms(sessions, pixel_values, calls) -> dict:
    """{dtype: median milliseconds of one call} over `calls` calls of each session on `pixel_values`, after one
    untimed call each; the sessions take turns, call by call."""
    inputs = {"pixel_values": pixel_values.numpy()}
    times = {dtype: [] for dtype in sessions}
    for session in sessions.values():
        session.run(["logits"], inputs)
    for _ in range(calls):
        for dtype, session in sessions.items():
            start = time.perf_counter()
            session.run(["logits"], inputs)
            times[dtype].append(1000 * (time.perf_counter() - start))
    return {dtype: statistics.median(milliseconds) for dtype, milliseconds in times.items()}


def choose_default_dtype(graphs: dict) -> str:
    """The graph transformers.js should load by default: of those whose top-1 (`accuracy`, measured on the same
    images) is at most `MAX_TOP1_DROP` points below the fp32 graph's, the smallest file (`bytes`); the fp32 graph
    when no other is. A graph better than fp32 qualifies: the rule guards accuracy, not sameness.

    `graphs` maps dtypes ("fp32" and any of the others) to at least `accuracy` (a fraction) and `bytes`."""
    if "fp32" not in graphs:
        raise ValueError(f"the rule compares with the fp32 graph, which is not among {sorted(graphs)}")
    reference = graphs["fp32"]["accuracy"]
    # A tolerance far below one image in a million: "exactly 0.3 points below" is within the rule, whatever the
    # rounding of the fractions.
    eligible = [
        dtype for dtype, graph in graphs.items() if 100 * (reference - graph["accuracy"]) <= MAX_TOP1_DROP + 1e-9
    ]
    return min(eligible, key=lambda dtype: (graphs[dtype]["bytes"], dtype != "fp32"))


def markdown_table(measurement) -> str:
    """The measurement (`measure_graphs`) as Markdown: one row a graph, then the machine and the choice."""
    latency = measurement["latency"]
    batches = [str(batch_size) for batch_size in LATENCY_BATCH_SIZES]
    lines = [
        f"{measurement['dataset']}, {measurement['split']} split, {measurement['num_images']:,} images; "
        f"top-1 with its 95% interval.",
        "",
        "| graph | file | size (MB) | top-1 | vs fp32 (points) | same top-1 as fp32 | "
        + " | ".join(f"ms, batch {batch}" for batch in batches)
        + " |",
        "|---|---|---:|---|---:|---:|" + "---:|" * len(batches),
    ]
    for dtype, graph in measurement["graphs"].items():
        times = " | ".join(f"{graph['latency_ms'][batch]:.2f}" for batch in batches)
        lines.append(
            f"| {dtype} | `{graph['file']}` | {graph['bytes'] / 1e6:.2f} | {describe_top1(graph)} | "
            f"{graph['points_from_fp32']:+.2f} | {graph['same_top1_as_fp32']:.2%} | {times} |"
        )
    machine = measurement["machine"]
    threads = latency["num_threads"] or "onnxruntime's default"
    lines += [
        "",
        f"Latency: the {latency['statistic']} of {latency['calls']} calls, onnxruntime {machine['onnxruntime']} on "
        f"the CPU ({machine['cpu_model']}, {machine['cpus_available']} CPUs), {threads} thread(s); load average "
        f"{machine['load_average_1min']:.2f} at the end.",
        f"Default dtype: **{measurement['default_dtype']}**, {measurement['rule']}.",
    ]
    return "\n".join(lines)


def describe_top1(graph) -> str:
    return f"{graph['accuracy']:.2%} ({graph['accuracy_ci_low']:.2%}-{graph['accuracy_ci_high']:.2%})"
