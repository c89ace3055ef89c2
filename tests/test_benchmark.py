"""scripts/benchmark.py: FLOPs against a formula derived by hand, and a tiny run whose JSON is complete and coherent."""

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from test_flops import hand_derived_flops

from modeling import VTLMConfig, VTLMForImageClassification
from tests.conftest import TINY_CONFIG

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = ",".join(f"{key}={value}" for key, value in TINY_CONFIG.items())


@pytest.fixture(scope="module")
def benchmark_module():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))  # benchmark.py imports scripts/train.py as `train`
    try:
        yield importlib.import_module("benchmark")
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))


@pytest.mark.parametrize(
    "device_name, precision, peak",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),  # the SXM card's name
        ("NVIDIA H100 PCIe", "fp16", 756.0),  # matched before the bare "H100"
        ("NVIDIA H200", "bf16", 989.0),
        ("NVIDIA A100-SXM4-80GB", "fp16", 312.0),
        ("NVIDIA L4", "bf16", 121.0),
        ("NVIDIA L40", "bf16", None),  # not the L4: names match as whole words
        ("NVIDIA H100 80GB HBM3", "fp32", None),  # the table holds fp16/bf16 peaks only
        ("Some Future GPU", "bf16", None),
    ],
)
def test_known_peaks(benchmark_module, device_name, precision, peak):
    assert benchmark_module.known_peak_tflops(device_name, precision)[0] == peak


STEPS, UNTIMED_STEPS, REPEATS, BATCH, EVAL_BATCH, EVAL_BATCHES, PEAK = 2, 1, 2, 8, 24, 2, 0.5


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny benchmark through the command line, as a user runs it: (results, stdout)."""
    output = tmp_path_factory.mktemp("benchmark") / "benchmark.json"
    command = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "benchmark.py"),
        f"--config_overrides={TINY_OVERRIDES}",
        f"--batch_size={BATCH}",
        f"--eval_batch_size={EVAL_BATCH}",
        f"--eval_batches={EVAL_BATCHES}",
        f"--steps={STEPS}",
        f"--untimed_steps={UNTIMED_STEPS}",
        f"--repeats={REPEATS}",
        f"--peak_tflops={PEAK}",
        f"--output_json={output}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(output.read_text()), process.stdout


def positive_finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_json_has_every_field_with_sane_values(tiny_run):
    results, _ = tiny_run
    assert results["data"] == "synthetic"
    machine = results["machine"]
    assert machine["device_type"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert machine["torch"] == torch.__version__ and machine["transformers"] == transformers.__version__
    assert machine["cpu_count"] == os.cpu_count() and positive_finite(machine["torch_num_threads"])
    assert all(machine[key] for key in ("device_name", "cpu_model", "python", "accelerate", "datasets"))

    settings = results["settings"]
    assert all(settings["architecture"][key] == value for key, value in TINY_CONFIG.items())
    assert settings["num_parameters"] == VTLMForImageClassification(VTLMConfig(**TINY_CONFIG)).num_parameters()
    assert (settings["batch_size"], settings["steps"], settings["repeats"]) == (BATCH, STEPS, REPEATS)
    if not torch.cuda.is_available():  # the Trainer runs fp16 as fp32 on a CPU, and the benchmark says so
        assert (settings["precision"], settings["effective_precision"]) == ("fp16", "fp32")

    for section in ("training", "bare_loop", "input_pipeline", "data_loader"):
        row = results[section]
        for key in (
            "images_per_s",
            "step_time_s_median",
            "step_time_s_min",
            "step_time_s_max",
            "host_cpu_time_s_median",
        ):
            assert positive_finite(row[key]), (section, key, row[key])
        assert row["step_time_s_min"] <= row["step_time_s_median"] <= row["step_time_s_max"]
        assert row["timed_steps"] == len(row["step_times_s"]) == STEPS * REPEATS  # warm-up steps are not among them
        assert all(positive_finite(value) for value in row["step_times_s"])
    for section in ("training", "bare_loop", "evaluation"):
        assert positive_finite(results[section]["achieved_tflops"])
        assert positive_finite(results[section]["mfu"])
    evaluation = results["evaluation"]
    assert positive_finite(evaluation["images_per_s"]) and positive_finite(evaluation["time_s_median"])
    assert (evaluation["images"], evaluation["timed_runs"]) == (EVAL_BATCH * EVAL_BATCHES, REPEATS)
    assert (results["peak_tflops"], results["peak_source"]) == (PEAK, "--peak_tflops")
    assert [row["order"] for row in results["per_repeat"]] == [["real", "bare"], ["bare", "real"]]
    assert positive_finite(results["projection"]["total_minutes"])


def test_derived_figures_agree_with_their_parts(tiny_run):
    results, _ = tiny_run
    close = dict(rel=1e-9)
    flops = results["flops_per_image"]
    forward, backward = hand_derived_flops(VTLMConfig(**TINY_CONFIG))
    assert (flops["forward"], flops["backward"], flops["training"]) == (forward, backward, forward + backward)

    training, bare, pipeline = results["training"], results["bare_loop"], results["input_pipeline"]
    loader = results["data_loader"]
    for row in (training, bare, pipeline, loader):
        assert row["images_per_s"] == pytest.approx(BATCH / row["step_time_s_median"], **close)
    for row in (training, bare):
        assert row["achieved_tflops"] == pytest.approx(flops["training"] * row["images_per_s"] / 1e12, **close)
        assert row["mfu"] == pytest.approx(row["achieved_tflops"] / PEAK, **close)
    evaluation = results["evaluation"]
    assert evaluation["images_per_s"] == pytest.approx(evaluation["images"] / evaluation["time_s_median"], **close)
    assert evaluation["achieved_tflops"] == pytest.approx(forward * evaluation["images_per_s"] / 1e12, **close)

    assert results["real_over_bare_step_time"] == pytest.approx(
        training["step_time_s_median"] / bare["step_time_s_median"], **close
    )
    assert results["input_pipeline_over_training"] == pytest.approx(
        pipeline["images_per_s"] / training["images_per_s"], **close
    )
    assert results["data_loader_over_training"] == pytest.approx(
        loader["images_per_s"] / training["images_per_s"], **close
    )
    paired = sorted(row["real_over_bare_step_time"] for row in results["per_repeat"])
    assert results["real_over_bare_step_time_paired"] == pytest.approx((paired[0] + paired[-1]) / 2, **close)
    assert results["real_over_bare_host_cpu_time"] == pytest.approx(
        training["host_cpu_time_s_median"] / bare["host_cpu_time_s_median"], **close
    )
    for row in results["per_repeat"]:
        assert row["real_over_bare_step_time"] == pytest.approx(
            row["training_step_time_s_median"] / row["bare_loop_step_time_s_median"], **close
        )
        assert training["step_time_s_min"] <= row["training_step_time_s_median"] <= training["step_time_s_max"]

    projection = results["projection"]
    epoch_s = (
        math.ceil(projection["train_images"] / BATCH) * training["step_time_s_median"]
        + projection["validation_images"] / evaluation["images_per_s"]
    )
    assert projection["epoch_minutes"] == pytest.approx(epoch_s / 60, **close)
    assert projection["total_minutes"] == pytest.approx(projection["epochs"] * epoch_s / 60, **close)


def test_stdout_table_and_markdown_summary(tiny_run, tmp_path, benchmark_module, capsys):
    results, stdout = tiny_run
    for label in ("training (VTLMTrainer)", "bare PyTorch loop", "input pipeline (no model)", "real / bare step time"):
        assert label in stdout
    assert f"{results['real_over_bare_step_time']:.3f}" in stdout

    path = tmp_path / "result.json"
    path.write_text(json.dumps(results))
    benchmark_module.main(["--summarize", str(path), str(path)])
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 2 + 2  # header, rule, one row per file
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert f"| {results['training']['images_per_s']:.1f} |" in table[2]
    assert f"| {results['input_pipeline_over_training']:.2f}x |" in table[2]
