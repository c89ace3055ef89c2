"""Export a trained VTLM to transformers' built-in ViT (no custom code) and to ONNX, checking each against the source:
the exported folder, its config and its card.

The ViT is the exact conversion of `training/vit_conversion.py`; a config the ViT cannot express is refused before
anything is written. ONNX needs `onnx`, `onnxscript` and `onnxruntime`, which are imported only when an ONNX export is
asked for.

An ONNX export ships three graphs (`training/onnx_graphs.py`): the exact fp32 one and, beside it, an fp16 and an 8-bit
one, which transformers.js loads by their dtype names. Which of them transformers.js loads by default
(`transformers.js_config.dtype` in config.json) is decided by measuring them: with `measure_on` (a dataset), each
graph is scored on the dataset's whole test split, the figures go into the card and `onnx_accuracy.json`, and the
default is the smallest graph whose top-1 is at most 0.3 points below the fp32 graph's. Without a measurement, the
default stays fp32 and the card says that the smaller graphs' accuracy was not measured.
"""

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from huggingface_hub import ModelCard, ModelCardData
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, ViTConfig
from transformers.utils import CONFIG_NAME, IMAGE_PROCESSOR_NAME, SAFE_WEIGHTS_NAME, cached_file

from . import LICENSE
from .onnx_graphs import (
    GRAPH_FILES,
    GRAPH_NAMES,
    MAX_TOP1_DROP,
    describe_top1,
    export_onnx,
    load_test_split,
    measure_graphs,
    onnx_logits,
    onnx_session,
    write_smaller_graphs,
)
from .sources import check_model_source, is_local
from .vit_conversion import ExportError, check_vit_exportable, describe_refusals, to_vit, vit_config, vit_refusals

FORMATS = ("vit", "onnx")
ONNX_FILE = GRAPH_FILES["fp32"]  # where optimum and transformers.js look
PREPROCESSOR_FILE = IMAGE_PROCESSOR_NAME  # transformers' name: preprocessor_config.json
MEASUREMENT_FILE = "onnx_accuracy.json"  # each graph's accuracy and latency on a test split (`measure_graphs`)
# The largest logit difference from the source that an exact export may have (fp32). The ViT runs the same kernels.
# ONNX Runtime fuses and reorders the arithmetic, which grows with depth and activation size (up to 3e-5 was seen on a
# 12-layer model); a wrong weight mapping is off by far more. The fp16 and 8-bit graphs have no bound: they are not
# exact, and their difference is recorded, their accuracy measured (`onnx_graphs.measure_graphs`).
MAX_LOGIT_DIFFERENCE = {"vit": 1e-5, "onnx": 1e-3}
CHECK_BATCH_SIZE = 16  # random images (seeded) on which each export is compared with its source
# How the model card says to run each format (`MODEL`: the folder or its Hub id).
CARD_FORMATS = {
    "vit": """```python
from transformers import pipeline

classify = pipeline("image-classification", model="MODEL")  # built-in classes: no trust_remote_code
classify("cat.png", top_k=5)
```
""",
    "onnx": f"""```python
import os

import onnxruntime
from huggingface_hub import hf_hub_download
from PIL import Image
from transformers import AutoImageProcessor

model = "MODEL"
processor = AutoImageProcessor.from_pretrained(model)
# InferenceSession takes a file: this folder's, or the one downloaded from the Hub.
onnx_file = os.path.join(model, "{ONNX_FILE}") if os.path.isdir(model) else hf_hub_download(model, "{ONNX_FILE}")
session = onnxruntime.InferenceSession(onnx_file)
pixel_values = processor(Image.open("cat.png"), return_tensors="np")["pixel_values"]
logits = session.run(["logits"], {{"pixel_values": pixel_values}})[0]  # (batch, num_labels)
```
""",
}


# Each file an export checks against its source (`export_model`'s checks): the ViT's weights, then every ONNX graph,
# each by its dtype (`GRAPH_FILES`); "onnx", the format's own name, is the exact fp32 graph.
GRAPH_CHECKS = {"onnx": "fp32", "onnx_fp16": "fp16", "onnx_q8": "q8"}
# How the card names each of them, and its file.
CARD_ROWS = {
    "vit": ("transformers' `ViTForImageClassification`", SAFE_WEIGHTS_NAME),
    **{name: (GRAPH_NAMES[dtype], GRAPH_FILES[dtype]) for name, dtype in GRAPH_CHECKS.items()},
}


def published_export_formats(config) -> tuple:
    """What the export that publishing ships (`--hub_vit_model_id`) holds for `config`: the built-in ViT and its ONNX
    graph, the ViT alone where onnxruntime is not installed, or the ONNX graph alone for a layout the ViT cannot
    express, which then needs the export extra (an `ExportError` here, before anything is trained or uploaded)."""
    has_onnx = importlib.util.find_spec("onnxruntime") is not None
    refusals = vit_refusals(config)
    if not refusals:
        return ("vit", "onnx") if has_onnx else ("vit",)
    if not has_onnx:
        raise ExportError(
            f"transformers' built-in ViT cannot express {describe_refusals(refusals)}: --hub_vit_model_id "
            "publishes its ONNX graph, which needs the export extra (pip install -e '.[export]')"
        )
    return ("onnx",)


def load_vtlm_config(model_name_or_path):
    """The config of a VTLM run folder, checkpoint-N folder or Hub id; an `ExportError` for anything else."""
    check_model_source(model_name_or_path)
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=True)
    if config.model_type != "vtlm":
        raise ExportError(f"{model_name_or_path} is a {config.model_type!r} model, not a VTLM model")
    return config


def source_reference(model_name_or_path) -> str:
    """How an export's card names its source: a link to the Hub id, or the folder's name (after its run's, for a
    checkpoint). Never a local absolute path: the card is published, where the training machine's paths mean nothing.
    """
    if not is_local(model_name_or_path):
        return f"[`{model_name_or_path}`](https://huggingface.co/{model_name_or_path})"
    path = Path(model_name_or_path).resolve()
    name = f"{path.parent.name}/{path.name}" if path.name.startswith("checkpoint-") else path.name
    return f"`{name}` (a local folder)"


def check_images(config, batch_size=CHECK_BATCH_SIZE) -> torch.Tensor:
    """Normalised-looking random images (seeded), shape (B, C, H, W), on which exports are compared."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, config.num_channels, config.image_size, config.image_size, generator=generator)


def export_model(
    model_name_or_path,
    output_dir,
    formats=("vit",),
    overwrite_output_dir=False,
    source=None,
    model_id=None,
    measure_on=None,
    num_threads=None,
    latency_calls=20,
) -> dict:
    """Export a VTLM model into `output_dir` in each of `formats` and return the measured max logit differences, by
    format ("vit", "onnx": the fp32 graph) and smaller graph ("onnx_fp16", "onnx_q8").

    The card names the source as `source` (a Hub id or folder, default `model_name_or_path`) would be named, and its
    usage snippets load `model_id`, the Hub id the export is published to, when it is known.

    `"vit"` writes a folder for the built-in `ViTForImageClassification` (config.json, model.safetensors); `"onnx"`
    writes `onnx/model.onnx`, of the ViT when both are asked for, else of the VTLM model (with its config.json,
    minus the code map, for the labels), and its fp16 and 8-bit versions (`onnx_graphs.GRAPH_FILES`). Both copy the
    source's `preprocessor_config.json` and write a model card. The ViT and the fp32 graph must give the source's
    logits (`MAX_LOGIT_DIFFERENCE`); the smaller graphs' differences and top-1 agreement are recorded in the card.

    `measure_on` (a `DataArguments`, as train.py's data flags give it) scores every graph on that dataset's whole test
    split (`onnx_graphs.measure_graphs`, sessions with `num_threads` threads, latency the median of `latency_calls`
    calls): the figures go into the card and `onnx_accuracy.json`, and config.json's `transformers.js_config.dtype`
    becomes the graph they choose. The dataset is loaded, and its classes checked against the model's, before
    anything is written. The folder is built aside and moved into place complete: a refusal or a failure leaves
    nothing behind.
    """
    formats = tuple(dict.fromkeys(formats))
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"formats must be one or more of {FORMATS}, got {list(formats)}")
    if measure_on is not None and "onnx" not in formats:
        raise ExportError("measuring the graphs' accuracy needs the onnx format (--format onnx or vit,onnx)")
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite_output_dir:
        raise ExportError(f"{output_dir} exists and is not empty; pass --overwrite_output_dir to replace it")
    if "onnx" in formats:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as error:
            raise ExportError(f"ONNX export needs onnx, onnxscript and onnxruntime ({error})") from error

    config = load_vtlm_config(model_name_or_path)
    refusals = vit_refusals(config)  # what the folder's config and card say, and whether "vit" can be written
    if "vit" in formats:
        check_vit_exportable(refusals)
    preprocessor = cached_file(model_name_or_path, PREPROCESSOR_FILE)
    model = AutoModelForImageClassification.from_pretrained(
        model_name_or_path, config=config, trust_remote_code=True, use_safetensors=True, dtype=torch.float32
    ).eval()
    if measure_on is not None:
        test_split = load_test_split(measure_on, model.config)
        processor = AutoImageProcessor.from_pretrained(model_name_or_path)
    images = check_images(model.config)
    with torch.no_grad():
        expected = model(images).logits

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp's 0o700 would keep the finished folder from everyone else
    try:
        checks, measurement = {}, None
        exported = model if refusals else to_vit(model)  # the ViT's graph where there is one
        if "vit" in formats:
            with torch.no_grad():
                checks["vit"] = _check(exported(images).logits, expected, "vit")
            exported.save_pretrained(staging)
        if "onnx" in formats:
            export_onnx(exported, staging / ONNX_FILE)
            write_smaller_graphs(staging)
            for name, dtype in GRAPH_CHECKS.items():
                checks[name] = _check(onnx_logits(onnx_session(staging / GRAPH_FILES[dtype]), images), expected, name)
            if measure_on is not None:
                measurement = measure_graphs(
                    staging, test_split, processor.image_mean, processor.image_std, num_threads, latency_calls
                )
                (staging / MEASUREMENT_FILE).write_text(json.dumps(measurement, indent=2) + "\n")
        dtype = measurement["default_dtype"] if measurement else "fp32"
        write_export_config(staging, config, refusals, weights="vit" in formats, graph="onnx" in formats, dtype=dtype)
        shutil.copyfile(preprocessor, staging / PREPROCESSOR_FILE)
        card = render_export_card(
            source_reference(source or model_name_or_path),
            checks,
            len(images),
            refusals=refusals,
            model_id=model_id,
            measurement=measurement,
        )
        card.save(staging / "README.md")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {name: check["max_logit_difference"] for name, check in checks.items()}


def write_export_config(folder, config, refusals, weights, graph, dtype="fp32"):
    """The exported folder's `config.json`, for the clients that load it without custom code: the built-in ViT's
    config, the one that `ViTForImageClassification` reads with the weights (`weights`), or, for an ONNX graph alone,
    the one that transformers.js and optimum read to find the task, the input size and the labels before they run
    `onnx/model.onnx`. A layout the ViT cannot express (`refusals`: `vit_refusals` of `config`) gets a ViT-typed
    config that records what the graph really is (`vtlm_config`) and comes with no weights, so transformers' Python
    classes fail to load it instead of filling a ViT with random weights. With the graphs,
    `transformers.js_config.dtype` names the one transformers.js loads by default (`dtype`: fp32 unless a measurement
    chose a smaller graph); without it, transformers.js in a browser would load the 8-bit graph, whatever its
    accuracy. No path of this machine (`_name_or_path`) is written."""
    if dtype not in GRAPH_FILES:
        raise ExportError(f"dtype must be one of {list(GRAPH_FILES)}, got {dtype!r}")
    exported = vit_config(config) if not refusals else ViTConfig(
        image_size=config.image_size, num_channels=config.num_channels, id2label=config.id2label,
        label2id=config.label2id,
    )  # fmt: skip
    exported.architectures = ["ViTForImageClassification"]
    content = exported.to_dict()
    content.pop("_name_or_path", None)
    if refusals:
        vtlm = {key: value for key, value in config.to_dict().items() if key not in ("auto_map", "_name_or_path")}
        content["vtlm_config"] = vtlm  # the graph's own architecture, for a reader: nothing loads from it
    if graph:
        content["transformers.js_config"] = {"dtype": dtype}
    if weights or graph:
        (Path(folder) / CONFIG_NAME).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def _check(logits, expected, name) -> dict:
    """How `logits` agree with the source's `expected`: the max absolute difference and the number of images with
    the same top class. An exact export (`MAX_LOGIT_DIFFERENCE` has a bound for it) further away is refused."""
    difference = (logits - expected).abs().max().item()
    if name in MAX_LOGIT_DIFFERENCE and not difference <= MAX_LOGIT_DIFFERENCE[name]:
        raise ExportError(
            f"the {name} export differs from its source by {difference:.3g} in the logits "
            f"(at most {MAX_LOGIT_DIFFERENCE[name]:g} allowed); nothing was written"
        )
    same_top1 = int((logits.argmax(-1) == expected.argmax(-1)).sum())
    return {"max_logit_difference": difference, "same_top1": same_top1}


def render_export_card(source, checks, num_images, refusals=(), model_id=None, measurement=None) -> ModelCard:
    """The exported folder's README.md: its source (`source_reference`), what it holds, how close each file was
    measured to be to the source (`checks`: {"vit", "onnx", "onnx_fp16", "onnx_q8": `_check`'s answer} on
    `num_images` random images), and, with ONNX graphs, each graph's accuracy on a test split (`measurement`, from
    `onnx_graphs.measure_graphs`) and which graph transformers.js loads by default, or that it was not measured.
    `refusals` (`vit_refusals`) name the settings that make an ONNX graph no built-in ViT. The usage snippets load
    `model_id`, the export's own Hub id, when it is published; otherwise they say `MODEL`, for the reader to
    replace."""
    formats = [name for name in FORMATS if name in checks]
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if "onnx" in formats:
        import onnxruntime

        versions += f", onnxruntime {onnxruntime.__version__}"
    table = "\n".join(
        f"| {CARD_ROWS[name][0]} | `{CARD_ROWS[name][1]}` | {check['max_logit_difference']:.3g} | "
        f"{check['same_top1']}/{num_images} |"
        for name, check in checks.items()
    )
    usage = "\n".join(CARD_FORMATS[name] for name in formats)
    if model_id is None:
        usage = f"Replace `MODEL` with this folder or its Hub id.\n\n{usage}"
    else:
        usage = usage.replace('"MODEL"', json.dumps(model_id))
    title = "transformers' built-in ViT" if "vit" in formats else "ONNX"
    tags = ["image-classification", "vision", "vtlm", *formats]  # the formats' names: "vit", "onnx"
    data = ModelCardData(library_name="transformers", pipeline_tag="image-classification", tags=tags, license=LICENSE)
    smaller = "The fp16 and 8-bit ONNX graphs beside the fp32 one are smaller, and not exact: their accuracy is below."
    body = f"""
# VTLM, exported to {title}

An exact export of the VTLM model {source}: the same weights, computing the same function. Its accuracy is the
source's; see the source's model card. The preprocessing (`{PREPROCESSOR_FILE}`) is the source's, copied.
{smaller if "onnx" in formats else ""}

| format | file | max logit difference from the source | same top-1 as the source |
|---|---|---|---|
{table}

The differences were measured at export time, on a CPU, on {num_images} random images, with {versions}.
{_graph_note(refusals)}{_accuracy_section(measurement) if "onnx" in formats else ""}
## Usage

{usage}"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _accuracy_section(measurement):
    """The card's section on the ONNX graphs' accuracy: the measured table and the default it chose, or why the
    default is fp32."""
    if measurement is None:
        return f"""
## Accuracy of the ONNX graphs

The fp32 graph is exact, so its accuracy is the source's. The fp16 and 8-bit graphs' accuracy was **not measured**
for this export, so transformers.js loads the fp32 graph by default (`transformers.js_config.dtype` in
`config.json`). `scripts/export.py --measure_accuracy` scores every graph on a test split and makes the default the
smallest graph whose top-1 is at most {MAX_TOP1_DROP} points below the fp32 graph's. Another graph is one option
away in transformers.js: `{{ dtype: "q8" }}` (or `"fp16"`) in the options of its `pipeline`.
"""
    rows = "\n".join(
        f"| {dtype} | `{graph['file']}` | {graph['bytes'] / 1e6:.2f} | {describe_top1(graph)} | "
        f"{graph['points_from_fp32']:+.2f} |"
        for dtype, graph in measurement["graphs"].items()
    )
    default = measurement["default_dtype"]
    other = "q8" if default == "fp32" else "fp32"
    return f"""
## Accuracy of the ONNX graphs

Each graph, run by onnxruntime {measurement["machine"]["onnxruntime"]} on a CPU, on the whole {measurement["split"]}
split of {measurement["dataset"]} ({measurement["num_images"]:,} images); top-1 with its 95% Wilson interval:

| graph (transformers.js `dtype`) | file | size (MB) | top-1 | vs fp32 (points) |
|---|---|---:|---|---:|
{rows}

transformers.js loads the **{default}** graph (`{GRAPH_FILES[default]}`) by default (`transformers.js_config.dtype`
in `config.json`): {measurement["rule"]}. Another graph is one option away:
`{{ dtype: "{other}" }}` in the options of transformers.js's `pipeline`. `{MEASUREMENT_FILE}` holds every figure,
with each graph's latency.
"""


def _graph_note(refusals):
    if not refusals:
        return ""
    graph_of = ", ".join(refusal.setting for refusal in refusals)
    return f"""
**The ONNX graph is not a built-in ViT.** It computes VTLM's own layout ({graph_of}), which no transformers class
expresses, so this folder holds the graph and no PyTorch weights. Its `config.json` is typed `vit` only so that
the clients that run the graph alone (transformers.js, optimum's ONNX Runtime classes) find the task, the input size
and the labels; its `vtlm_config` records the graph's real architecture. transformers' Python classes cannot load
this folder (there are no weights): load the source with `trust_remote_code=True` instead.
"""
