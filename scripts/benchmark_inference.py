#!/usr/bin/env python
"""Compare CPU inference speed of a VTLM model in PyTorch, as the built-in ViT export, and in ONNX Runtime.

    python scripts/benchmark_inference.py                                    # vtlm-37m and vtlm-37m-conv
    python scripts/benchmark_inference.py --model_presets vtlm-5m --batch_sizes 1 8 64 --repeats 9

For each preset, one run builds a model with random weights (speed does not depend on them), converts it with
the export's own functions (`to_vit`, `export_onnx`) and times, side by side: the VTLM classes in eager
PyTorch, the built-in `ViTForImageClassification` (only for configs it can express) and ONNX Runtime's CPU provider
on the exported graph, all with the same number of threads. Every figure is a median over `--repeats` rounds, with
the runtimes' order rotated each round. Prints a Markdown table and writes every measurement to `--output_json`.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import onnxruntime
import torch

from vtlm.modeling import VTLMConfig, VTLMForImageClassification
from vtlm.training.build import apply_config_overrides
from vtlm.training.cli import parse_flags, run_cli
from vtlm.training.onnx_graphs import export_onnx, onnx_logits, onnx_session
from vtlm.training.provenance import machine_info
from vtlm.training.vit_conversion import ExportError, to_vit

RUNTIMES = ("pytorch", "vit", "onnxruntime")
HEADERS = {"pytorch": "PyTorch eager (VTLM code)", "vit": "built-in ViT export", "onnxruntime": "ONNX Runtime"}


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_presets", nargs="+", default=["vtlm-37m", "vtlm-37m-conv"])
    parser.add_argument("--config_overrides", default=None, help="key=value,... applied to every preset.")
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5, help="Timed rounds; each figure is their median.")
    parser.add_argument("--min_time", type=float, default=0.5, help="Seconds of calls in one timing, at least.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="Threads of every runtime.")
    parser.add_argument("--output_json", default="runs/benchmark-inference.json")
    args = parse_flags(parser, argv)
    if min(args.batch_sizes) < 1:
        raise ValueError(f"--batch_sizes must each be at least 1, got {' '.join(map(str, args.batch_sizes))}")
    for name in ("repeats", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def build_config(preset, config_overrides):
    """The config of `preset` with `--config_overrides`: a bad preset, key or value fails before any timing."""
    config = VTLMConfig.from_preset(preset)
    if config_overrides:
        apply_config_overrides(config, config_overrides)
    config.validate_architecture()
    return config


def build_runtimes(config, folder, threads) -> dict:
    """Each runtime as a function from pixel values to logits; the ViT is missing when it cannot express `config`."""
    torch.manual_seed(0)
    model = VTLMForImageClassification(config).eval()
    runtimes = {"pytorch": lambda pixel_values: model(pixel_values).logits}
    try:
        vit = to_vit(model)
        runtimes["vit"] = lambda pixel_values: vit(pixel_values).logits
    except ExportError:
        pass
    export_onnx(model, os.path.join(folder, "model.onnx"))
    session = onnx_session(os.path.join(folder, "model.onnx"), num_threads=threads)
    runtimes["onnxruntime"] = lambda pixel_values: onnx_logits(session, pixel_values)
    return runtimes


def seconds_per_call(run, pixel_values, min_time) -> float:
    """The mean time of back-to-back calls of `run`, over at least `min_time` seconds (and at least one call)."""
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < min_time:
        run(pixel_values)
        calls += 1
    return (time.perf_counter() - start) / calls


def benchmark(config, args) -> list[dict]:
    """One row per batch size: images/s of every runtime, and each runtime's max logit difference from PyTorch."""
    with tempfile.TemporaryDirectory() as folder:
        runtimes = build_runtimes(config, folder, args.threads)
    rows = []
    with torch.inference_mode():
        for batch_size in args.batch_sizes:
            pixel_values = torch.randn(batch_size, config.num_channels, config.image_size, config.image_size)
            reference = runtimes["pytorch"](pixel_values)
            differences = {name: (run(pixel_values) - reference).abs().max().item() for name, run in runtimes.items()}
            times = {name: [] for name in runtimes}  # the call above was each runtime's warm-up
            names = list(runtimes)
            for repeat in range(args.repeats):
                for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                    times[name].append(seconds_per_call(runtimes[name], pixel_values, args.min_time))
            rows.append(
                {
                    "batch_size": batch_size,
                    "images_per_s": {name: batch_size / statistics.median(t) for name, t in times.items()},
                    "seconds_per_batch": times,
                    "max_logit_difference_from_pytorch": differences,
                }
            )
        return rows


def markdown_table(results) -> str:
    info = results["machine"]
    lines = [
        f"Machine: {info['cpu_model']} ({info['cpus_available']} CPUs), {info['torch_num_threads']} thread(s); torch "
        f"{info['torch']}, transformers {info['transformers']}, onnxruntime {info['onnxruntime']}; load average "
        f"{info['load_average_1min']:.2f} at the start. Images/s, median of {results['settings']['repeats']} "
        "rounds, fp32.",
        "",
        "| model | batch | " + " | ".join(HEADERS[name] for name in RUNTIMES) + " | ONNX Runtime / PyTorch |",
        "|---|---|" + "---|" * (len(RUNTIMES) + 1),
    ]
    for model in results["models"]:
        for row in model["rows"]:
            speeds = row["images_per_s"]
            cells = [f"{speeds[name]:.1f}" if name in speeds else "not expressible" for name in RUNTIMES]
            ratio = speeds["onnxruntime"] / speeds["pytorch"]
            lines.append(f"| {model['name']} | {row['batch_size']} | {' | '.join(cells)} | {ratio:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    configs = {preset: build_config(preset, args.config_overrides) for preset in args.model_presets}
    torch.set_num_threads(args.threads)
    machine = {**machine_info(torch.device("cpu")), "onnxruntime": onnxruntime.__version__}
    results = {"machine": machine, "settings": vars(args), "models": []}
    for preset, config in configs.items():
        name = preset + (f" ({args.config_overrides})" if args.config_overrides else "")
        results["models"].append({"name": name, "config": config.to_diff_dict(), "rows": benchmark(config, args)})
    os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
    with open(args.output_json, "w") as file:
        json.dump(results, file, indent=2)
    print(markdown_table(results))
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))
