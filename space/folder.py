"""The demo Space published beside a model: the folder that `training.hub.publish_space` uploads.

It holds `space/app.py` as `app.py`, the endpoint's `handler.py` (which decodes images for it), the run's example
images, `requirements.txt` pinned to the tested versions (`space/requirements.txt`) and a README whose metadata
makes it a Gradio Space and links the model (`models:`), whose first entry `app.py` loads.
"""

import json
import shutil
from pathlib import Path

from huggingface_hub import SpaceCard, SpaceCardData

SPACE_DIR = Path(__file__).resolve().parent
SPACE_REQUIREMENTS = SPACE_DIR / "requirements.txt"  # the versions tested; Gradio's becomes the README's sdk_version
SPACE_FILES = {"app.py": SPACE_DIR / "app.py", "handler.py": SPACE_DIR.parent / "endpoint" / "handler.py"}


def pinned_requirements(path=SPACE_REQUIREMENTS) -> dict[str, str]:
    """`{package: version}` of the `package==version` lines of `path`."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            package, separator, version = line.partition("==")
            if not separator:
                raise ValueError(f"{path}: {line!r} is not pinned as package==version")
            pins[package.strip()] = version.strip()
    return pins


def write_space(space_dir, output_dir, model_ids: list[str], space_id: str, license: str) -> Path:
    """Write the Space of the run folder `output_dir` into `space_dir`; `model_ids[0]` is the repository the app
    loads (the built-in ViT export where one is published), the others are linked too. Returns `space_dir`."""
    space_dir = Path(space_dir)
    (space_dir / "examples").mkdir(parents=True, exist_ok=True)
    for name, source in SPACE_FILES.items():
        shutil.copyfile(source, space_dir / name)
    for example in sorted(Path(output_dir, "examples").glob("*.png")):
        shutil.copyfile(example, space_dir / "examples" / example.name)
    pins = pinned_requirements()
    gradio_version = pins.pop("gradio")
    (space_dir / "requirements.txt").write_text(
        "# Pinned to the versions the demo was tested with; Gradio comes from the README's sdk_version.\n"
        + "".join(f"{package}=={version}\n" for package, version in pins.items())
    )
    card_data = SpaceCardData(
        title=space_id.split("/")[1],
        sdk="gradio",
        sdk_version=gradio_version,
        app_file="app.py",
        models=list(model_ids),
        license=license,
        short_description="A VTLM image classifier: its top 5 and its attention",  # the Hub allows 60 characters
    )
    model_links = ", ".join(f"[{model_id}](https://huggingface.co/{model_id})" for model_id in model_ids)
    body = (
        f"# Demo of {model_ids[0]}\n\n"
        "Drop in an image, paste one or click an example: the app answers with the model's top-5 classes and their "
        "probabilities, and shows what the model attended to (attention rollout from the CLS token, or the "
        "sequence-pooling weights, as the model computes).\n\n"
        f"Model: {model_links}. Published by VTLM's `scripts/push_to_hub.py --space_id`; `app.py` is VTLM's "
        "`space/app.py`, and `handler.py` decodes images exactly as the model's Inference Endpoints handler does.\n"
    )
    SpaceCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}").save(space_dir / "README.md")
    return space_dir


# The static Space: the model's ONNX graph runs in the visitor's browser (space/static/), loaded from its repository
# with this pinned transformers.js. The version is the one its browser test runs (.ci/run installs it from npm).
STATIC_DIR = SPACE_DIR / "static"
STATIC_FILES = ("index.html", "app.js", "style.css")
TRANSFORMERS_JS_VERSION = "4.3.2"
TRANSFORMERS_JS_URL = f"https://cdn.jsdelivr.net/npm/@huggingface/transformers@{TRANSFORMERS_JS_VERSION}"
HUB_URL = "https://huggingface.co/"


def write_static_space(space_dir, model, examples: list[dict], space_id: str, license: str) -> Path:
    """Write a static Space (`sdk: static`) into `space_dir` that classifies images in the visitor's browser with the
    ONNX graph of `model`, a dict: `id` (the repository of the graph), `name`, `accuracy` (what its card reports, as
    a sentence), `dtype` (the graph transformers.js loads by default) and `onnx_file` (that graph's path in the
    repository). `examples` are the run's example images, `{"file": path, "label": name}`. Returns `space_dir`."""
    space_dir = Path(space_dir)
    (space_dir / "examples").mkdir(parents=True, exist_ok=True)
    for name in STATIC_FILES:
        shutil.copyfile(STATIC_DIR / name, space_dir / name)
    published_examples = []
    for example in examples:
        target = f"examples/{Path(example['file']).name}"
        shutil.copyfile(example["file"], space_dir / target)
        published_examples.append({"file": target, "label": example["label"]})
    settings = {
        "model_id": model["id"],
        "model_url": f"{HUB_URL}{model['id']}",
        "model_name": model["name"],
        "accuracy": model["accuracy"],
        "dtype": model["dtype"],
        "onnx_file": model["onnx_file"],
        "transformers_js": TRANSFORMERS_JS_URL,
        "hub": HUB_URL,
        "onnxruntime_wasm": None,  # transformers.js's own choice: the ONNX Runtime Web it pins, from the same CDN
        "examples": published_examples,
    }
    (space_dir / "space.json").write_text(json.dumps(settings, indent=2) + "\n")
    card_data = SpaceCardData(
        title=space_id.split("/")[1],
        sdk="static",
        app_file="index.html",
        models=[model["id"]],
        license=license,
        short_description="A VTLM image classifier, run in your browser",  # the Hub allows 60 characters
    )
    body = (
        f"# {model['name']}, in your browser\n\n"
        f"The ONNX graph of [{model['id']}]({HUB_URL}{model['id']}) ({model['dtype']}) runs in the visitor's browser "
        f"with transformers.js {TRANSFORMERS_JS_VERSION} (WebGPU where the browser has it, else WebAssembly): no "
        "server and no GPU on the Hub's side. Drop in an image or click an example for the model's top 5.\n\n"
        f"{model['accuracy']}\n\n"
        "Published by VTLM's `scripts/push_to_hub.py --static_space_id`; the page is VTLM's `space/static/`.\n"
    )
    SpaceCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}").save(space_dir / "README.md")
    return space_dir
