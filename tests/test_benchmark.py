"""scripts/benchmark.py and training/benchmark.py: a tiny run whose JSON is complete and coherent, and its table."""

import json
import math
import statistics
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import REPO_ROOT, TINY_CONFIG, TINY_OVERRIDES, load_script
from test_flops import hand_derived_flops

import vtlm.training.provenance
from vtlm.modeling import VTLMConfig, VTLMForImageClassification, build_image_processor
from vtlm.training.arguments import AugmentationArguments, ModelArguments
from vtlm.training.benchmark import BenchmarkArguments, known_peak_tflops, run
from vtlm.training.trainer import VTLMTrainer

STEPS, UNTIMED_STEPS, REPEATS, BATCH, EVAL_BATCH, EVAL_BATCHES, PEAK = 2, 1, 2, 8, 24, 2, 0.5


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
def test_known_peaks(device_name, precision, peak):
    assert known_peak_tflops(device_name, precision)[0] == peak


def test_the_bare_loop_times_the_trainers_own_step(monkeypatch):
    """Every timed step, in training and in the bare loop, goes through `VTLMTrainer.training_step`: the bare loop is
    that step without the Trainer's loop, not a copy of it."""
    steps = []
    real_step = VTLMTrainer.training_step

    def counted_step(*args, **kwargs):
        steps.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(VTLMTrainer, "training_step", counted_step)
    bench = BenchmarkArguments(
        batch_size=4, eval_batch_size=4, eval_batches=1, steps=2, untimed_steps=1, repeats=1, precision="fp32"
    )
    results = run(ModelArguments(config_overrides=TINY_OVERRIDES), AugmentationArguments(), bench)
    assert len(steps) == 2 * (bench.untimed_steps + bench.steps)  # train(), then the bare loop
    assert len(results["bare_loop"]["times_s"]) == bench.steps


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--steps=0", "--steps must be at least 1, got 0"),  # was statistics' "no median for empty data"
        ("--batch_size=0", "--batch_size must be at least 1, got 0"),  # was a message naming max_train_samples
    ],
)
def test_a_count_below_one_is_a_one_line_error_before_any_work(flag, message, tmp_path, capsys):
    output = tmp_path / "benchmark.json"
    benchmark = load_script("benchmark")
    assert benchmark.run_cli(benchmark.main, [flag, f"--output_json={output}"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not output.exists()


def test_a_cpu_only_torch_records_no_cuda_version(monkeypatch):
    """The CUDA recorded is the one torch runs on, not a toolkit that happens to be installed on the host."""
    host = vtlm.training.provenance.collect_env.get_env_info()._replace(cuda_runtime_version="12.4.131")
    monkeypatch.setattr(vtlm.training.provenance.collect_env, "get_env_info", lambda: host)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert vtlm.training.provenance.machine_info(torch.device("cpu"))["cuda"] is None
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert vtlm.training.provenance.machine_info(torch.device("cpu"))["cuda"] == "12.8"


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
    process = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(output.read_text()), process.stdout


def positive_finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_json_has_every_field_with_sane_values(tiny_run):
    results, _ = tiny_run
    machine = results["machine"]
    assert machine["device_type"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert machine["torch"] == torch.__version__ and machine["transformers"] == transformers.__version__
    assert positive_finite(machine["cpus_available"]) and positive_finite(machine["torch_num_threads"])
    assert all(machine[key] for key in ("device_name", "cpu_model", "python", "os"))

    settings = results["settings"]
    assert settings["config_overrides"] == TINY_OVERRIDES
    assert settings["num_parameters"] == VTLMForImageClassification(VTLMConfig(**TINY_CONFIG)).num_parameters()
    assert (settings["batch_size"], settings["steps"], settings["repeats"]) == (BATCH, STEPS, REPEATS)
    if not torch.cuda.is_available():  # the Trainer runs fp16 as fp32 on a CPU, and the benchmark says so
        assert (settings["precision"], settings["effective_precision"]) == ("fp16", "fp32")

    for section in ("training", "bare_loop", "input_pipeline"):
        row = results[section]
        assert positive_finite(row["images_per_s"]) and positive_finite(row["median_s"])
        assert len(row["times_s"]) == STEPS * REPEATS  # warm-up steps are not among them
        assert all(positive_finite(value) for value in row["times_s"])
    for section in ("training", "bare_loop", "evaluation"):
        assert positive_finite(results[section]["achieved_tflops"])
        assert positive_finite(results[section]["mfu"])
    assert len(results["evaluation"]["times_s"]) == REPEATS
    assert (results["peak_tflops"], results["peak_source"]) == (PEAK, "--peak_tflops")
    assert positive_finite(results["projection"]["total_minutes"])


@pytest.mark.slow
def test_derived_figures_agree_with_their_parts(tiny_run):
    results, _ = tiny_run
    close = dict(rel=1e-9)
    flops = results["flops_per_image"]
    forward, backward = hand_derived_flops(VTLMConfig(**TINY_CONFIG))
    assert (flops["forward"], flops["backward"], flops["training"]) == (forward, backward, forward + backward)

    training, bare, pipeline, evaluation = (
        results[key] for key in ("training", "bare_loop", "input_pipeline", "evaluation")
    )
    for row in (training, bare, pipeline):
        assert row["median_s"] == pytest.approx(statistics.median(row["times_s"]), **close)
        assert row["images_per_s"] == pytest.approx(BATCH / row["median_s"], **close)
    for row in (training, bare):
        assert row["achieved_tflops"] == pytest.approx(flops["training"] * row["images_per_s"] / 1e12, **close)
        assert row["mfu"] == pytest.approx(row["achieved_tflops"] / PEAK, **close)
    assert evaluation["images_per_s"] == pytest.approx(EVAL_BATCH * EVAL_BATCHES / evaluation["median_s"], **close)
    assert evaluation["achieved_tflops"] == pytest.approx(forward * evaluation["images_per_s"] / 1e12, **close)

    assert results["training_over_bare_step_time"] == pytest.approx(training["median_s"] / bare["median_s"], **close)
    assert results["input_pipeline_over_training"] == pytest.approx(
        pipeline["images_per_s"] / training["images_per_s"], **close
    )
    projection = results["projection"]
    epoch_s = (
        math.ceil(projection["train_images"] / BATCH) * training["median_s"]
        + projection["validation_images"] / evaluation["images_per_s"]
    )
    assert projection["epoch_minutes"] == pytest.approx(epoch_s / 60, **close)
    assert projection["total_minutes"] == pytest.approx(projection["epochs"] * epoch_s / 60, **close)


@pytest.mark.slow
def test_table_of_the_run_and_of_saved_results(tiny_run, tmp_path, capsys):
    results, stdout = tiny_run
    assert f"| {results['training']['images_per_s']:.1f} |" in stdout
    path = tmp_path / "result.json"
    path.write_text(json.dumps(results))
    load_script("benchmark").main(["--summarize", str(path), str(path)])
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 2 + 2  # header, rule, one row per file
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert f"| {results['training']['images_per_s']:.1f} |" in table[2]
    assert f"| {results['training_over_bare_step_time']:.3f} |" in table[2]
    assert f"| {results['input_pipeline_over_training']:.1f}x |" in table[2]
    # The threads and the load the run was measured under, beside its figures; a CPU run takes one thread.
    machine = results["machine"]
    assert f"| {machine['torch_num_threads']}, {machine['load_average_1min']:.1f} |" in table[2]
    assert machine["torch_num_threads"] == 1 or torch.cuda.is_available()


@pytest.mark.slow  # a script in a fresh interpreter
def test_a_teacher_with_its_own_labels_is_timed(tmp_path):
    """No dataset is named: the random images carry the teacher's labels, whatever they are, not CIFAR-100's."""
    teacher = tmp_path / "ten-label-teacher"
    labels = [f"class {index}" for index in range(10)]
    VTLMForImageClassification(VTLMConfig(**TINY_CONFIG, id2label=dict(enumerate(labels)))).save_pretrained(teacher)
    build_image_processor().save_pretrained(teacher)
    output = tmp_path / "benchmark.json"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), f"--config_overrides={TINY_OVERRIDES}"]
    command += ["--batch_size=4", "--eval_batch_size=4", "--eval_batches=1", "--steps=1", "--untimed_steps=1"]
    command += ["--repeats=1", f"--teacher_model_name_or_path={teacher}", f"--output_json={output}"]
    process = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    assert positive_finite(json.loads(output.read_text())["teacher_forward"]["median_s"])
