"""training/export.py, scripts/export.py and scripts/benchmark_inference.py: a VTLM run exported to the built-in ViT
(loaded without custom code, under transformers 5.x and 4.57) and to ONNX, with the same logits as the source."""

import json
import os
import re
import site
import statistics
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_CONFIG, TINY_OVERRIDES, class_images, load_script, run_without_modeling
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, ViTForImageClassification, pipeline

import vtlm.training.export
import vtlm.training.vit_conversion
from vtlm.modeling import PRESETS, VTLMConfig, VTLMForImageClassification, build_image_processor
from vtlm.training.cli import run_cli
from vtlm.training.export import ONNX_FILE, PREPROCESSOR_FILE, export_model, source_reference
from vtlm.training.onnx_graphs import GRAPH_FILES, onnx_logits, onnx_session
from vtlm.training.vit_conversion import ExportError, Refusal, to_vit, vit_refusals

requires_onnx = pytest.mark.skipif(
    not all(find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")),
    reason="ONNX export needs onnx, onnxscript and onnxruntime (the [export] extra)",
)
# The original layout, and one with every field the ViT maps set away from the original model's value.
VIT_CONFIGS = {
    "original": {},
    "variant": {"qkv_bias": False, "layer_norm_eps": 1e-5, "hidden_act": "gelu_new", "image_size": 24, "patch_size": 6},
    # Initialisation, not architecture: a mimetic model is the same ViT.
    "mimetic": {"attention_initializer": "mimetic", "mimetic_beta1": 0.5},
    "impulse": {"attention_initializer": "impulse"},
}
LOAD_WITHOUT_CUSTOM_CODE = """
import json, sys
import torch, transformers
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

for folder, pixels_file in zip(sys.argv[1::2], sys.argv[2::2]):
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(torch.load(pixels_file)).logits
    top = pipeline("image-classification", model=folder)(Image.new("RGB", (40, 20)), top_k=2)
    print("RESULT" + json.dumps({
        "version": transformers.__version__, "class": type(model).__name__, "logits": logits.tolist(), "top": top
    }))
"""


def save_random_run(folder, config):
    """A run folder whose every parameter is distinct: a mapping that swapped two LayerNorms or q and k would show.
    BatchNorm statistics, if any, move off their init too, so that an export that lost them would show."""
    torch.manual_seed(0)
    model = VTLMForImageClassification(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.add_(0.1 * torch.randn_like(buffer))
            elif name.endswith("running_var"):
                buffer.mul_(1 + torch.rand_like(buffer))
    model.save_pretrained(folder)
    build_image_processor(config.image_size).save_pretrained(folder)
    return model


def processed_images(folder, num_images=6):
    """`class_images` of as many classes, normalised by the image processor saved in `folder`."""
    processor = AutoImageProcessor.from_pretrained(folder)
    return processor(list(class_images(list(range(num_images)))), return_tensors="pt")["pixel_values"]


def logits_of(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values).logits


@pytest.fixture(scope="module")
def vit_exports(tmp_path_factory):
    """{name: (source model, run folder, ViT folder, measured differences)} for each of `VIT_CONFIGS`."""
    exports = {}
    for name, overrides in VIT_CONFIGS.items():
        root = tmp_path_factory.mktemp(f"export-{name}")
        model = save_random_run(root / "run", VTLMConfig(**TINY_CONFIG, **overrides))
        exports[name] = model, root / "run", root / "vit", export_model(root / "run", root / "vit", ("vit",))
    return exports


@pytest.mark.parametrize("name", list(VIT_CONFIGS))
def test_vit_export_loads_without_custom_code_and_gives_the_same_logits(vit_exports, name):
    model, run, folder, differences = vit_exports[name]
    assert sorted(path.name for path in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        PREPROCESSOR_FILE,
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "vit" and "auto_map" not in config
    assert (folder / PREPROCESSOR_FILE).read_bytes() == (run / PREPROCESSOR_FILE).read_bytes()

    vit = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(vit) is ViTForImageClassification
    pixel_values = processed_images(folder)
    expected = logits_of(model, pixel_values)
    assert (logits_of(vit, pixel_values) - expected).abs().max() <= 1e-5
    assert differences["vit"] <= 1e-5

    predictions = pipeline("image-classification", model=str(folder))(list(class_images(list(range(6)))), top_k=1)
    assert [p[0]["label"] for p in predictions] == [model.config.id2label[i] for i in expected.argmax(-1).tolist()]


def test_vit_export_card_names_its_source_and_the_measured_difference(vit_exports):
    _, run, folder, differences = vit_exports["original"]
    card = (folder / "README.md").read_text()
    assert "`run` (a local folder)" in card
    assert str(run.parent) not in card  # never the training machine's path
    assert f"| `model.safetensors` | {differences['vit']:.3g} |" in card
    assert "pipeline_tag: image-classification" in card and "library_name: transformers" in card


def test_the_endpoint_handler_serves_the_vit_export_as_the_custom_model(vit_exports):
    """The handler needs only what `from_pretrained` gives: on the ViT export it answers as on the VTLM run."""
    from PIL import Image

    from vtlm.endpoint.handler import EndpointHandler

    _, run, folder, _ = vit_exports["original"]
    image = Image.fromarray(class_images([7], image_size=48)[0])
    answers = [EndpointHandler(str(path))({"inputs": image, "parameters": {"top_k": 3}}) for path in (run, folder)]
    assert type(EndpointHandler(str(folder)).model) is ViTForImageClassification
    assert [row["label"] for row in answers[0]] == [row["label"] for row in answers[1]]
    assert [row["score"] for row in answers[0]] == pytest.approx([row["score"] for row in answers[1]], abs=1e-6)


@pytest.mark.slow  # a fresh interpreter under transformers 4.57
def test_vit_export_gives_the_same_logits_under_transformers_4_57(vit_exports, legacy_transformers, tmp_path):
    folders, expected = [], []
    for name, (model, _, folder, _) in vit_exports.items():
        pixel_values = processed_images(folder)
        torch.save(pixel_values, tmp_path / f"{name}.pt")
        folders += [folder, tmp_path / f"{name}.pt"]
        expected.append(logits_of(model, pixel_values))
    run = run_without_modeling(LOAD_WITHOUT_CUSTOM_CODE, *folders, cwd=tmp_path, python_path=legacy_transformers)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(line[len("RESULT") :]) for line in run.stdout.splitlines() if line.startswith("RESULT")]
    assert len(results) == len(expected)
    for result, logits, (model, *_) in zip(results, expected, vit_exports.values(), strict=True):
        assert result["version"].startswith("4.57.") and result["class"] == "ViTForImageClassification"
        assert (torch.tensor(result["logits"]) - logits).abs().max() <= 1e-5
        assert all(prediction["label"] in model.config.label2id for prediction in result["top"])


# How close each smaller graph must come to PyTorch's logits, as a fraction of the largest logit, and on how many of
# the 6 test images its top class must be PyTorch's. Seen on every preset's tiny random model (onnxruntime 1.32):
# fp16 within 0.1%, 8-bit within 2.7%, and 8-bit rounding swapped a close top two on one image of DHVT-T/2's; the
# fp32 graph keeps its own bound (1e-4, absolute). The bounds, about 4 to 10 times the worst seen, catch a graph
# that computes something else (a lost input cast, weights quantized with a wrong scale), not rounding.
SMALLER_GRAPH_TOLERANCE = {"fp16": (0.01, 6), "q8": (0.1, 5)}


def assert_onnx_matches(onnx_path, model, pixel_values):
    """ONNX Runtime on the CPU: the graph's names, a dynamic batch, logits within 1e-4 and the same top-1."""
    session = onnx_session(onnx_path)
    assert [node.name for node in session.get_inputs()] == ["pixel_values"]
    assert [node.name for node in session.get_outputs()] == ["logits"]
    expected = logits_of(model, pixel_values)
    for batch in (pixel_values[:1], pixel_values):  # batch 1 and 6 through one graph, exported at batch 2
        logits = onnx_logits(session, batch)
        assert (logits - expected[: len(batch)]).abs().max() <= 1e-4
        assert torch.equal(logits.argmax(-1), expected[: len(batch)].argmax(-1))


def assert_smaller_graphs_match(folder, model, pixel_values):
    """The fp16 and 8-bit graphs beside the fp32 one: fp32 input and output under the same names, a dynamic batch,
    and logits within `SMALLER_GRAPH_TOLERANCE` of PyTorch's."""
    expected = logits_of(model, pixel_values)
    for dtype, (tolerance, same_top1) in SMALLER_GRAPH_TOLERANCE.items():
        session = onnx_session(folder / GRAPH_FILES[dtype])
        assert [(node.name, node.type) for node in session.get_inputs()] == [("pixel_values", "tensor(float)")]
        assert [(node.name, node.type) for node in session.get_outputs()] == [("logits", "tensor(float)")]
        assert onnx_logits(session, pixel_values[:1]).shape == expected[:1].shape
        logits = onnx_logits(session, pixel_values)
        difference = (logits - expected).abs().max().item()
        assert difference <= tolerance * expected.abs().max().item(), (dtype, difference, expected.abs().max().item())
        assert (logits.argmax(-1) == expected.argmax(-1)).sum().item() >= same_top1, dtype
    # Half and a quarter of the fp32 graph's weights, plus the graph's structure, which dominates a tiny model: its
    # files were 0.5 to 0.66 of the fp32 graph's here (the 8-bit one has scales and extra nodes per small tensor).
    sizes = {dtype: (folder / file).stat().st_size for dtype, file in GRAPH_FILES.items()}
    assert max(sizes["fp16"], sizes["q8"]) < 0.75 * sizes["fp32"], sizes


@pytest.mark.slow  # ONNX exports beyond one per tokenizer family
@requires_onnx
def test_vit_and_onnx_export_replaces_the_folder_and_puts_the_onnx_file_inside(tmp_path):
    model = save_random_run(tmp_path / "run", VTLMConfig(**TINY_CONFIG))
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "stale.txt").write_text("from an earlier export")
    exit_code = run_cli(
        load_script("export").main,
        [
            str(tmp_path / "run"),
            "--format",
            "vit,onnx",
            "--output_dir",
            str(tmp_path / "vit"),
            "--overwrite_output_dir",
        ],
    )
    assert exit_code == 0
    assert not (tmp_path / "vit" / "stale.txt").exists()
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path / "vit")) is ViTForImageClassification
    assert_onnx_matches(tmp_path / "vit" / ONNX_FILE, model, processed_images(tmp_path / "vit"))
    assert_smaller_graphs_match(tmp_path / "vit", model, processed_images(tmp_path / "vit"))


def tiny_layout(preset):
    """The preset at the tests' sizes, less its name: what its export has to handle."""
    return json.dumps({**VTLMConfig.from_preset(preset, **TINY_CONFIG).to_dict(), "model_preset": None}, sort_keys=True)


# One preset of each tokenizer family in the fast tier (patches, a conv tokenizer with CCT's norms, SOPE with DHVT's
# blocks); every other layout in the slow one. Presets that differ only in size (vtlm-5m and vtlm-14m against
# vtlm-37m) are one layout at the tests' sizes, exported once.
ONNX_FAMILIES = ("vtlm-37m", "vtlm-cct-7-3x1", "vtlm-dhvt-t2")
ONNX_LAYOUTS = {}  # layout: the first preset with it
for name in [*ONNX_FAMILIES, *PRESETS]:
    ONNX_LAYOUTS.setdefault(tiny_layout(name), name)
ONNX_PRESETS = [
    name if name in ONNX_FAMILIES else pytest.param(name, marks=pytest.mark.slow) for name in ONNX_LAYOUTS.values()
]


@pytest.fixture(scope="module")
def onnx_export(request, tmp_path_factory):
    """(source model, ONNX folder, measured differences) of a random run of the preset `request.param`, exported
    once per module."""
    root = tmp_path_factory.mktemp(f"onnx-{request.param}")
    model = save_random_run(root / "run", VTLMConfig.from_preset(request.param, **TINY_CONFIG))
    return model, root / "onnx", export_model(root / "run", root / "onnx", ("onnx",))


@requires_onnx
@pytest.mark.parametrize("onnx_export", ONNX_PRESETS, indirect=True)
def test_every_preset_exports_to_onnx(onnx_export):
    model, folder, differences = onnx_export
    assert differences["onnx"] <= 1e-4
    assert set(differences) == {"onnx", "onnx_fp16", "onnx_q8"}  # the smaller graphs' differences: recorded only
    # Typed as the built-in ViT for the clients that run the graph alone (transformers.js, optimum), which refuse a
    # "vtlm" model type; the labels are the model's, and transformers.js is told to take the full-precision graph:
    # nothing measured the smaller graphs' accuracy.
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "vit" and config["id2label"]["0"] == model.config.id2label[0]
    assert config["transformers.js_config"] == {"dtype": "fp32"} and "_name_or_path" not in config
    assert_onnx_matches(folder / ONNX_FILE, model, processed_images(folder))
    assert_smaller_graphs_match(folder, model, processed_images(folder))
    card = (folder / "README.md").read_text()
    assert "The fp16 and 8-bit graphs' accuracy was **not measured**" in card
    for name, dtype in vtlm.training.export.GRAPH_CHECKS.items():
        assert f"| `{GRAPH_FILES[dtype]}` | {differences[name]:.3g} | " in card
    assert not (folder / vtlm.training.export.MEASUREMENT_FILE).exists()
    # No weights: transformers' own classes refuse the folder rather than fill a ViT with random weights.
    assert not (folder / "model.safetensors").exists()
    with pytest.raises(OSError):
        AutoModelForImageClassification.from_pretrained(folder)
    exportable = not vit_refusals(model.config)
    assert ("vtlm_config" in config) != exportable  # a graph that is no ViT says what it is
    assert ("is not a built-in ViT" in (folder / "README.md").read_text()) != exportable


@pytest.mark.slow  # ONNX exports beyond one per tokenizer family
@requires_onnx
def test_no_path_of_this_machine_is_in_an_export(tmp_path):
    save_random_run(tmp_path / "run", VTLMConfig.from_preset("vtlm-cct-7-3x1", **TINY_CONFIG))
    export_model(tmp_path / "run", tmp_path / "onnx", ("onnx",))
    save_random_run(tmp_path / "plain", VTLMConfig(**TINY_CONFIG))
    export_model(tmp_path / "plain", tmp_path / "vit", ("vit", "onnx"))
    # Nor the source files the exporter traced through (its stack traces name the checkout's and the packages').
    paths = [str(tmp_path), str(REPO_ROOT), sys.prefix, *site.getsitepackages()]
    scanned = []
    for path in [*(tmp_path / "onnx").rglob("*"), *(tmp_path / "vit").rglob("*")]:
        if path.is_file():
            assert [local for local in paths if local.encode() in path.read_bytes()] == [], path
            scanned.append(path.relative_to(tmp_path).as_posix())
    # Every graph was scanned: the quantizer and the fp16 converter write no path of theirs either.
    assert {f"{folder}/{file}" for folder in ("onnx", "vit") for file in GRAPH_FILES.values()} <= set(scanned)


@requires_onnx
def test_the_export_card_of_a_published_export_loads_its_hub_id():
    checks = {
        name: {"max_logit_difference": difference, "same_top1": 16}
        for name, difference in {"vit": 0.0, "onnx": 2e-6, "onnx_fp16": 1e-3, "onnx_q8": 3e-2}.items()
    }
    published = str(vtlm.training.export.render_export_card("`run`", checks, 16, model_id="someone/vtlm-vit"))
    assert 'pipeline("image-classification", model="someone/vtlm-vit")' in published
    assert 'model = "someone/vtlm-vit"' in published and "MODEL" not in published
    local = str(vtlm.training.export.render_export_card("`run`", checks, 16))  # a folder: its reader fills it in
    assert "Replace `MODEL` with this folder or its Hub id." in local and 'model = "MODEL"' in local


@requires_onnx
def test_the_card_of_a_graph_that_is_no_vit_names_the_settings_the_vit_cannot_express():
    refusals = vit_refusals(VTLMConfig(**TINY_CONFIG, pooling="mean"))
    checks = {"onnx": {"max_logit_difference": 2e-6, "same_top1": 16}}
    card = str(vtlm.training.export.render_export_card("`run`", checks, 16, refusals=refusals))
    assert "It computes VTLM's own layout (pooling='mean'), which no transformers class" in card.replace("\n", " ")
    assert "is not a built-in ViT" not in str(vtlm.training.export.render_export_card("`run`", checks, 16))


def test_a_field_the_layout_does_not_read_blocks_no_export():
    # conv_hidden_size belongs to the conv tokenizer: a patch-4 model ignores it, and CCT's one conv block outputs
    # hidden_size channels whatever it says.
    plain = VTLMConfig(**TINY_CONFIG, conv_hidden_size=32)
    assert vit_refusals(plain) == ()
    cct = VTLMConfig.from_preset("vtlm-cct-7-3x1", **TINY_CONFIG, conv_hidden_size=32)
    fields = [refusal.field for refusal in vit_refusals(cct)]
    assert "conv_hidden_size" not in fields and "patch_embedding_type" in fields


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"pooling": "mean"}, "pooling"),
        ({"pooling": "sequence", "use_cls_token": False}, "use_cls_token"),
        ({"patch_embedding_type": "conv"}, "patch_embedding_type"),
        ({"layer_norm_layout": "cct"}, "layer_norm_layout"),
        ({"patch_embedding_type": "sope"}, "patch_embedding_type"),
        ({"use_position_embeddings": False}, "use_position_embeddings"),
        ({"feed_forward_type": "daff"}, "feed_forward_type"),
        ({"use_head_tokens": True}, "use_head_tokens"),
    ],
)
def test_configs_the_vit_cannot_express_are_refused_before_anything_is_written(overrides, field, tmp_path, capsys):
    save_random_run(tmp_path / "run", VTLMConfig(**TINY_CONFIG, **overrides))
    capsys.readouterr()  # what saving the run printed
    assert run_cli(load_script("export").main, [str(tmp_path / "run"), "--output_dir", str(tmp_path / "vit")]) == 2
    message = capsys.readouterr().err  # one line, as the script's __main__ prints it
    assert message.startswith("error: transformers' built-in ViT cannot express") and message.count("\n") == 1
    assert f"{field}=" in message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]  # no output folder, no staging folder


def test_a_field_added_later_is_refused_unless_it_holds_the_seeds_value():
    class LaterConfig(VTLMConfig):
        def __init__(self, new_idea=0, **kwargs):
            self.new_idea = new_idea
            super().__init__(**kwargs)

    with pytest.raises(ExportError, match=r"new_idea=1 \(exportable only at the original model's 0\)"):
        to_vit(VTLMForImageClassification(LaterConfig(new_idea=1, **TINY_CONFIG)))
    model = VTLMForImageClassification(LaterConfig(**TINY_CONFIG)).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    assert torch.equal(logits_of(to_vit(model), pixel_values), logits_of(model, pixel_values))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["runs/no/such", "--output_dir", "out"], "runs/no/such is neither a folder nor a Hub id"),
        (["run", "--format", "vit,tflite", "--output_dir", "out"], "formats must be one or more of"),
        (["run", "--output_dir", "run"], "pass --overwrite_output_dir"),
        (["pickled", "--output_dir", "out"], "model.safetensors"),
    ],
)
def test_cli_errors_end_with_a_message_and_exit_status_2(arguments, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save_random_run(tmp_path / "run", VTLMConfig(**TINY_CONFIG))
    model = save_random_run(tmp_path / "pickled", VTLMConfig(**TINY_CONFIG))
    (tmp_path / "pickled" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")  # a pickle: never loaded
    before = sorted(path.name for path in tmp_path.iterdir())

    assert run_cli(load_script("export").main, arguments) == 2
    assert message in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_an_export_that_computes_something_else_is_refused(tmp_path, monkeypatch):
    save_random_run(tmp_path / "run", VTLMConfig(**TINY_CONFIG))
    swap = {"layernorm_before": "layernorm_after", "layernorm_after": "layernorm_before"}
    renames = [
        (pattern, re.sub("layernorm_(before|after)", lambda m: swap[m[0]], target))
        for pattern, target in vtlm.training.vit_conversion.VIT_RENAMES
    ]
    # The two norms of each block swapped.
    monkeypatch.setattr(vtlm.training.vit_conversion, "VIT_RENAMES", tuple(renames))
    with pytest.raises(ExportError, match="differs from its source by"):
        export_model(tmp_path / "run", tmp_path / "vit", ("vit",))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


@requires_onnx
def test_a_failed_export_leaves_no_folder_behind(tmp_path, monkeypatch):
    save_random_run(tmp_path / "run", VTLMConfig(**TINY_CONFIG))

    def fail(model, path):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"half a graph")
        raise RuntimeError("the exporter crashed")

    monkeypatch.setattr(vtlm.training.export, "export_onnx", fail)
    with pytest.raises(RuntimeError, match="the exporter crashed"):
        export_model(tmp_path / "run", tmp_path / "out", ("vit", "onnx"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_source_reference_is_a_hub_link_or_a_folder_name_never_a_local_path(tmp_path):
    (tmp_path / "my-run" / "checkpoint-880").mkdir(parents=True)
    assert source_reference("you/vtlm-37m") == "[`you/vtlm-37m`](https://huggingface.co/you/vtlm-37m)"
    assert source_reference(tmp_path / "my-run") == "`my-run` (a local folder)"
    assert source_reference(tmp_path / "my-run" / "checkpoint-880") == "`my-run/checkpoint-880` (a local folder)"


@pytest.mark.slow  # ONNX exports beyond one per tokenizer family
@requires_onnx
def test_inference_benchmark_table_and_json(tmp_path, capsys):
    benchmark = load_script("benchmark_inference")
    results = benchmark.main(
        ["--model_presets", "vtlm-37m", "vtlm-cct-7-3x1", "--config_overrides", TINY_OVERRIDES]
        + ["--batch_sizes", "1", "3", "--repeats", "3", "--min_time", "0.01"]
        + ["--output_json", str(tmp_path / "bench.json")]
    )
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(results))
    assert {"cpu_model", "torch_num_threads", "torch", "onnxruntime"} <= set(results["machine"])
    original, cct = results["models"]
    assert [row["batch_size"] for row in original["rows"]] == [1, 3]
    assert set(original["rows"][0]["images_per_s"]) == {"pytorch", "vit", "onnxruntime"}
    assert set(cct["rows"][0]["images_per_s"]) == {"pytorch", "onnxruntime"}  # the ViT cannot express CCT
    for row in original["rows"] + cct["rows"]:
        for name, times in row["seconds_per_batch"].items():
            assert len(times) == 3
            assert row["images_per_s"][name] == pytest.approx(row["batch_size"] / statistics.median(times))
        assert max(row["max_logit_difference_from_pytorch"].values()) <= 1e-4

    table = capsys.readouterr().out.splitlines()
    rows = [line for line in table if line.startswith("| vtlm-")]
    assert len(rows) == 4 and all(line.count("|") == len(benchmark.RUNTIMES) + 4 for line in rows)
    assert sum("not expressible" in line for line in rows) == 2
    assert results["machine"]["cpu_model"] in table[0]


def test_a_hub_id_is_exported_and_linked_from_the_card(tmp_path):
    """A Hub repo, as the offline Hub cache holds one after a download (refs/main -> snapshots/<commit>/...)."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--you--vtlm-export-test"
    commit = "0" * 40
    model = save_random_run(repo / "snapshots" / commit, VTLMConfig(**TINY_CONFIG))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    differences = export_model("you/vtlm-export-test", tmp_path / "vit", ("vit",))
    assert differences["vit"] <= 1e-5
    pixel_values = processed_images(tmp_path / "vit")
    vit = AutoModelForImageClassification.from_pretrained(tmp_path / "vit")
    assert (logits_of(vit, pixel_values) - logits_of(model, pixel_values)).abs().max() <= 1e-5
    card = (tmp_path / "vit" / "README.md").read_text()
    assert "[`you/vtlm-export-test`](https://huggingface.co/you/vtlm-export-test)" in card


# optimum's ONNX Runtime classes (optimum-onnx 0.1.0 allows transformers < 4.58): beside transformers 4.57, in a folder
# of their own, as .ci/run installs them.
OPTIMUM = Path(sys.prefix) / "optimum"
OPTIMUM_INSTALL = 'pip install --no-deps --target "$VIRTUAL_ENV/optimum" optimum==2.1.0 optimum-onnx==0.1.0'
RUN_WITH_OPTIMUM = """
import json, sys
from PIL import Image
from transformers import AutoImageProcessor, pipeline
from optimum.onnxruntime import ORTModelForImageClassification

end = sys.argv.index("--")
folders, images = sys.argv[1:end], [Image.open(path) for path in sys.argv[end + 1 :]]
for folder in folders:
    model = ORTModelForImageClassification.from_pretrained(folder, subfolder="onnx")
    processor = AutoImageProcessor.from_pretrained(folder)
    classify = pipeline("image-classification", model=model, image_processor=processor)
    print("RESULT" + json.dumps(classify(images, top_k=5)))
"""
# Both kinds of ONNX folder: the plain layout's, exported with the built-in ViT, and the conv tokenizer's graph alone.
OPTIMUM_EXPORTS = {"vtlm-37m": ("vit", "onnx"), "vtlm-37m-conv": ("onnx",)}


@requires_onnx
@pytest.mark.slow  # a fresh interpreter under transformers 4.57
def test_optimum_runs_the_onnx_folders_as_predict_does(legacy_transformers, tmp_path):
    if not (OPTIMUM / "optimum" / "onnxruntime").is_dir():
        pytest.skip(f"optimum is not installed in {OPTIMUM}: {OPTIMUM_INSTALL}")
    images = []
    for index, image in enumerate(class_images([0, 1, 30])):
        images.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(images[-1])
    predict, exports, expected = load_script("predict"), [], []
    for preset, formats in OPTIMUM_EXPORTS.items():
        save_random_run(tmp_path / preset, VTLMConfig.from_preset(preset, **TINY_CONFIG))
        exports.append(tmp_path / f"{preset}-export")
        export_model(tmp_path / preset, exports[-1], formats)
        expected.append(predict.main([str(tmp_path / preset), *map(str, images)]))

    python_path = f"{legacy_transformers}{os.pathsep}{OPTIMUM}"
    run = run_without_modeling(RUN_WITH_OPTIMUM, *exports, "--", *images, cwd=tmp_path, python_path=python_path)
    assert run.returncode == 0, run.stderr[-3000:]
    answers = [json.loads(line[len("RESULT") :]) for line in run.stdout.splitlines() if line.startswith("RESULT")]
    assert len(answers) == len(exports), run.stdout[-3000:]
    for folder_answers, predictions in zip(answers, expected, strict=True):
        for answer, prediction in zip(folder_answers, predictions, strict=True):
            assert [row["label"] for row in answer] == [row["label"] for row in prediction]
            assert [row["score"] for row in answer] == pytest.approx([row["score"] for row in prediction], abs=1e-4)


def test_a_dhvt_preset_is_refused_naming_each_dhvt_field():
    config = VTLMConfig.from_preset("vtlm-dhvt-t2", **TINY_CONFIG)
    refused = {refusal.field: refusal.value for refusal in vit_refusals(config)}
    dhvt = {"patch_embedding_type": "sope", "use_position_embeddings": False, "feed_forward_type": "daff"}
    assert dhvt.items() <= refused.items() and refused["use_head_tokens"] is True


def test_a_refusal_is_data_that_reads_as_the_errors_name_it():
    (refusal,) = vit_refusals(VTLMConfig(**TINY_CONFIG, pooling="mean"))
    assert refusal == Refusal("pooling", "mean", "cls")
    assert str(refusal) == "pooling='mean' (exportable only at the original model's 'cls')"


@pytest.mark.slow  # ONNX exports beyond one per tokenizer family
def test_the_export_cards_onnx_snippet_runs_on_the_folder_and_the_card_has_a_license(tmp_path, monkeypatch):
    """What a visitor copies from the card works: the ONNX snippet, with `MODEL` set to the exported folder."""
    model = save_random_run(tmp_path / "run", VTLMConfig(**TINY_CONFIG))
    export_model(tmp_path / "run", tmp_path / "export", ("vit", "onnx"))
    card = (tmp_path / "export" / "README.md").read_text()
    assert "license: apache-2.0" in card.split("---")[1]
    snippet = card.split("```python\n")[2].split("```")[0]  # the second block: ONNX
    assert "InferenceSession(onnx_file)" in snippet
    Image.fromarray(class_images([3])[0]).save(tmp_path / "cat.png")
    namespace = {}
    monkeypatch.chdir(tmp_path)
    exec(snippet.replace("MODEL", str(tmp_path / "export")), namespace)
    pixel_values = AutoImageProcessor.from_pretrained(tmp_path / "export")(
        Image.open(tmp_path / "cat.png"), return_tensors="pt"
    )["pixel_values"]
    torch.testing.assert_close(torch.from_numpy(namespace["logits"]), logits_of(model, pixel_values), atol=1e-4, rtol=0)
