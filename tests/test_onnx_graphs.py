"""training/onnx_graphs.py and `scripts/export.py --measure_accuracy`: each ONNX graph of an export scored on a test
split, and transformers.js's default dtype chosen from the scores (the smallest graph whose top-1 is at most 0.3
points below fp32's). The graphs themselves are checked against PyTorch in test_export.py."""

import contextlib
import io
import json
from importlib.util import find_spec

import pytest
import torch
from conftest import TINY_CONFIG, load_script, make_run_folder, write_hub_dataset

from vtlm.modeling import VTLMConfig, VTLMForImageClassification, build_image_processor
from vtlm.training.arguments import DataArguments
from vtlm.training.cli import run_cli
from vtlm.training.export import MEASUREMENT_FILE
from vtlm.training.image_ops import Normalize
from vtlm.training.onnx_graphs import GRAPH_FILES, MAX_TOP1_DROP, choose_default_dtype, describe_top1, load_test_split

requires_onnx = pytest.mark.skipif(
    not all(find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")),
    reason="ONNX export needs onnx, onnxscript and onnxruntime (the [export] extra)",
)
# The sizes of a width-64, 4-block model's graphs, roughly: only their order matters to the rule.
SIZES = {"fp32": 800_000, "fp16": 420_000, "q8": 260_000}


def graphs(**accuracies):
    """Made-up measurements: each dtype's top-1 (a fraction) with `SIZES`' file size: what the rule reads."""
    return {dtype: {"accuracy": accuracy, "bytes": SIZES[dtype]} for dtype, accuracy in accuracies.items()}


@pytest.mark.parametrize(
    "accuracies, expected",
    [
        ({"fp32": 0.9000, "fp16": 0.9000, "q8": 0.8990}, "q8"),  # q8 0.1 points below: the smallest wins
        ({"fp32": 0.9000, "fp16": 0.8995, "q8": 0.8969}, "fp16"),  # q8 0.31 below: out; fp16 0.05 below
        ({"fp32": 0.9000, "fp16": 0.8960, "q8": 0.8500}, "fp32"),  # both more than 0.3 below
        ({"fp32": 0.9000, "fp16": 0.8990, "q8": 0.8970}, "q8"),  # exactly 0.3 below is within the rule
        ({"fp32": 0.5000, "fp16": 0.5000, "q8": 0.5040}, "q8"),  # better than fp32: qualifies too
        ({"fp32": 0.7000, "fp16": 0.6980}, "fp16"),  # only the graphs measured take part
        ({"fp32": 0.7000}, "fp32"),
    ],
)
def test_the_default_dtype_is_the_smallest_graph_at_most_0_3_points_below_fp32(accuracies, expected):
    assert MAX_TOP1_DROP == 0.3
    assert choose_default_dtype(graphs(**accuracies)) == expected


def test_the_dtype_rule_on_counts_of_a_10000_image_split():
    """30 images of 10,000 fewer right is 0.3 points, in the rule; 31 is not, whatever the rounding of fractions."""
    for wrong_more, expected in ((30, "q8"), (31, "fp16")):
        correct = {"fp32": 8_765, "fp16": 8_760, "q8": 8_765 - wrong_more}
        accuracies = {dtype: count / 10_000 for dtype, count in correct.items()}
        assert choose_default_dtype(graphs(**accuracies)) == expected


def test_the_dtype_rule_needs_the_fp32_graph():
    with pytest.raises(ValueError, match="fp32"):
        choose_default_dtype(graphs(fp16=0.9, q8=0.9))


@pytest.fixture(scope="module")
def measured_export(tmp_path_factory):
    """A run folder as train.py leaves one, trained (so its record says) on a small dataset in CIFAR-100's schema
    with its own validation split, exported to the ViT and ONNX by `scripts/export.py --measure_accuracy` with no data
    flag: the run's own data. Returns (root, run, export folder, what the script printed)."""
    root = tmp_path_factory.mktemp("measured")
    data = write_hub_dataset(root / "data", {"train": 10, "validation": 10, "test": 300})
    run = make_run_folder(root / "run", dataset_name=data)
    arguments = [str(run), "--format", "vit,onnx", "--output_dir", str(root / "export"), "--measure_accuracy"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_cli(load_script("export").main, [*arguments, "--num_threads", "1", "--latency_calls", "2"]) == 0
    return root, run, root / "export", printed.getvalue()


@requires_onnx
@pytest.mark.slow  # an ONNX export, measured; the fast tier checks the rule on made-up numbers
def test_the_measurement_scores_every_graph_on_the_whole_test_split(measured_export):
    root, run, folder, _ = measured_export
    measurement = json.loads((folder / MEASUREMENT_FILE).read_text())
    assert measurement["dataset"] == "data" and measurement["split"] == "test" and measurement["num_images"] == 300
    assert list(measurement["graphs"]) == list(GRAPH_FILES)
    for dtype, graph in measurement["graphs"].items():
        assert graph["file"] == GRAPH_FILES[dtype] and graph["bytes"] == (folder / GRAPH_FILES[dtype]).stat().st_size
        assert graph["accuracy"] == graph["correct"] / 300
        assert graph["accuracy_ci_low"] <= graph["accuracy"] <= graph["accuracy_ci_high"]
        fp32 = measurement["graphs"]["fp32"]["accuracy"]
        assert graph["points_from_fp32"] == pytest.approx(100 * (graph["accuracy"] - fp32))
        assert set(graph["latency_ms"]) == {"1", "32"} and min(graph["latency_ms"].values()) > 0
    assert measurement["latency"] == {"statistic": "median", "calls": 2, "num_threads": 1}
    # The fp32 graph is exact: its count is the PyTorch model's on the same images, normalised as training evaluates.
    model = VTLMForImageClassification.from_pretrained(run).eval()
    split = load_test_split(DataArguments(dataset_name=str(root / "data")), model.config)
    processor = build_image_processor()
    with torch.no_grad():
        predicted = model(Normalize(processor.image_mean, processor.image_std)(split["images"])).logits.argmax(-1)
    assert measurement["graphs"]["fp32"]["correct"] == (predicted == split["labels"]).sum().item()
    assert measurement["graphs"]["fp32"]["same_top1_as_fp32"] == 1.0


@requires_onnx
@pytest.mark.slow  # an ONNX export, measured; the fast tier checks the rule on made-up numbers
def test_the_measured_export_defaults_to_the_dtype_the_rule_chooses_and_its_card_lists_each_top1(measured_export):
    root, _, folder, printed = measured_export
    measurement = json.loads((folder / MEASUREMENT_FILE).read_text())
    chosen = choose_default_dtype(measurement["graphs"])
    assert measurement["default_dtype"] == chosen
    assert json.loads((folder / "config.json").read_text())["transformers.js_config"] == {"dtype": chosen}
    card = (folder / "README.md").read_text()
    assert "not measured" not in card
    assert "on the whole test\nsplit of data (300 images)" in card
    for dtype, graph in measurement["graphs"].items():
        assert f"| {dtype} | `{graph['file']}` | {graph['bytes'] / 1e6:.2f} | {describe_top1(graph)} |" in card
    assert f"transformers.js loads the **{chosen}** graph (`{GRAPH_FILES[chosen]}`) by default" in card
    # The script printed the table, one row a graph, and the choice.
    for dtype, graph in measurement["graphs"].items():
        assert f"| {dtype} | `{graph['file']}` |" in printed and describe_top1(graph) in printed
    assert f"Default dtype: **{chosen}**" in printed
    # Published as it is: the dataset is named by its folder's name, never its path here.
    for path in folder.rglob("*"):
        if path.is_file():
            assert str(root).encode() not in path.read_bytes(), path


@requires_onnx
def test_a_dataset_with_other_classes_is_refused_before_anything_is_written(tmp_path, capsys):
    run = make_run_folder(tmp_path / "run")  # CIFAR-100's 100 classes
    names = [f"class {index}" for index in range(10)]
    splits = {"train": 10, "validation": 10, "test": 10}
    data = write_hub_dataset(tmp_path / "cifar10", splits, label_names=names, label_column="label", coarse=False)
    arguments = [str(run), "--format", "onnx", "--output_dir", str(tmp_path / "out"), "--measure_accuracy"]
    assert run_cli(load_script("export").main, [*arguments, "--dataset_name", data]) == 2
    assert "differ from the dataset's 10 (cifar10, column 'label')" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cifar10", "run"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--dataset_name", "data"], "--dataset_name says what --measure_accuracy measures on"),
        (["--format", "vit", "--measure_accuracy"], "measuring the graphs' accuracy needs the onnx format"),
        (["--format", "onnx", "--measure_accuracy", "--latency_calls", "0"], "--latency_calls must be at least 1"),
    ],
)
def test_measuring_flags_refused_in_one_line(arguments, message, tmp_path, capsys):
    torch.manual_seed(0)
    VTLMForImageClassification(VTLMConfig(**TINY_CONFIG)).save_pretrained(tmp_path / "run")
    build_image_processor().save_pretrained(tmp_path / "run")
    exit_code = run_cli(
        load_script("export").main, [str(tmp_path / "run"), "--output_dir", str(tmp_path / "out"), *arguments]
    )
    assert exit_code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
