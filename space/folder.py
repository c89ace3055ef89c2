"""The demo Space published beside a model: the folder that `training.hub.publish_space` uploads.

It holds `space/app.py` as `app.py`, the endpoint's `handler.py` (which decodes images for it), the run's example
images, `requirements.txt` pinned to the tested versions (`space/requirements.txt`) and a README whose metadata
makes it a Gradio Space and links the model (`models:`), whose first entry `app.py` loads.
"""

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
