"""The Gradio demo of a VTLM model: drop in an image, get the top-5 classes and what the model attended to.

    python app.py                      # in a Space: the model named first under `models:` in the README beside it
    python app.py you/vtlm-37m --port 7861
    python scripts/demo.py runs/vtlm-37m   # from the VTLM repository, for a run folder or a Hub id

Uploaded as the `app.py` of the demo Space, with `handler.py` (the Inference Endpoints handler) beside it: images
are decoded and converted by its `load_image`, as the endpoint and `scripts/predict.py` convert them. A model that
ships its own code (an `auto_map` in its config) is loaded with `trust_remote_code=True`; the exact export to
transformers' built-in ViT needs none. Imports only gradio, torch, transformers, huggingface_hub, PIL, NumPy and
`handler`.

What the model attended to, as each layout really computes it:
- a model that classifies from its CLS token (the plain ViT, DHVT): attention rollout (Abnar & Zuidema, 2020) from
  the CLS token to the patches, through every layer, heads averaged and the residual path counted as half;
- a model that pools its tokens with learned weights (the conv tokenizer, CCT): those sequence-pooling weights;
- a model that averages its patch tokens: their rollouts, averaged.
"""

import argparse
import html
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import metadata_load
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, PretrainedConfig

if __package__:  # imported from the VTLM repository as `space.app`
    from vtlm.endpoint.handler import load_image
else:  # run as `app.py` in a Space, with the handler beside it
    from handler import load_image

APP_DIR = Path(__file__).resolve().parent
TOP_K = 5
# The overlay's side, in pixels, for inputs smaller than this (the model sees 32 x 32).
MIN_OVERLAY_SIZE = 256
# The example thumbnails at 3x a CIFAR image, its pixels kept sharp: at their own 32 px they are hard to make out.
EXAMPLES_CSS = (
    "button.gallery-item img { width: 96px !important; height: 96px !important; max-width: none !important; "
    "max-height: none !important; object-fit: contain; image-rendering: pixelated; }"
)

ROLLOUT = (
    "Attention rollout: how much the CLS token, which the classifier reads, drew from each patch through all "
    "{layers} layers (heads averaged, the residual path counted as half; Abnar & Zuidema, 2020)."
)
MEAN_ROLLOUT = (
    "Attention rollout: how much the patch tokens, whose mean the classifier reads, drew from each patch through all "
    "{layers} layers (heads averaged, the residual path counted as half; Abnar & Zuidema, 2020)."
)
SEQUENCE_POOLING = (
    "Sequence-pooling weights: the share of each token in the weighted mean that the classifier reads (the model's "
    "own softmax over its last layer's tokens)."
)


class Classifier:
    """A model, its image processor and how to show what it attended to."""

    def __init__(self, model_id: str):
        config_dict, _ = PretrainedConfig.get_config_dict(model_id)
        trust_remote_code = "auto_map" in config_dict  # the built-in ViT export runs no remote code
        # Eager attention: the only one that returns its attention probabilities, which the rollout needs.
        self.model = AutoModelForImageClassification.from_pretrained(
            model_id, trust_remote_code=trust_remote_code, attn_implementation="eager"
        ).eval()
        self.image_processor = AutoImageProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        # A local folder is shown by its name only: its path says nothing to a visitor.
        self.model_name = Path(model_id).name if Path(model_id).is_dir() else model_id
        config, base = self.model.config, self.model.base_model
        self.pooling = getattr(config, "pooling", "cls")  # transformers' ViT classifies from its CLS token
        # Where the patches sit in the attention maps and what the pooling weighs, as the model says; transformers'
        # ViT, and a VTLM model saved before VTLM said so (its own saved code is what loads here), by their config.
        self.model_says = hasattr(base, "pooling_weights")
        if self.model_says:
            self.num_prefix_tokens, self.num_head_tokens = base.num_prefix_tokens, base.num_head_tokens
        else:
            self.num_prefix_tokens = int(getattr(config, "use_cls_token", True))
            self.num_head_tokens = config.num_attention_heads if getattr(config, "use_head_tokens", False) else 0
        description = {"cls": ROLLOUT, "mean": MEAN_ROLLOUT, "sequence": SEQUENCE_POOLING}[self.pooling]
        self.attention_description = description.format(layers=config.num_hidden_layers)

    @torch.inference_mode()
    def __call__(self, image: Image.Image) -> tuple[dict, np.ndarray]:
        """The class probabilities of `image`, best first, and what the model attended to: a (side, side) grid over
        the patches, summing to 1."""
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        if self.pooling == "sequence":  # VTLM's own code: the weights its pooling gave each patch
            base = self.model.base_model
            outputs = base(pixel_values=pixel_values)
            logits = self.model.classifier(outputs.pooler_output)
            if self.model_says:
                weights = base.pooling_weights(outputs.last_hidden_state)[0]
            else:  # its pooling's score over the patch tokens, softmaxed
                patch_tokens = outputs.last_hidden_state[:, self.num_prefix_tokens :]
                weights = base.sequence_pooling.score(patch_tokens).softmax(dim=1)[0, :, 0]
        else:
            outputs = self.model(pixel_values=pixel_values, output_attentions=True)
            logits = outputs.logits
            weights = attention_rollout(
                outputs.attentions, self.num_prefix_tokens, self.num_head_tokens, average=self.pooling == "mean"
            )
        probabilities = logits[0].float().softmax(dim=-1)
        id2label = self.model.config.id2label
        ranked = probabilities.argsort(descending=True).tolist()
        return {id2label[i]: probabilities[i].item() for i in ranked}, patch_grid(weights)


def attention_rollout(attentions, num_prefix_tokens: int, num_head_tokens: int = 0, average: bool = False):
    """How much the classifier's token drew from each patch, through all layers (Abnar & Zuidema, 2020): per layer
    the heads' mean attention plus the identity (the residual), rows normalised, multiplied from the first layer up.

    `attentions` holds one (1, heads, T, T) tensor per layer, T being the prefix tokens (CLS), the patches and then
    any DHVT head tokens, which are left out (they are rebuilt from the other tokens in every layer). Returns the
    weights of the patches, summing to 1: drawn by the first token, or with `average` by the patches on average
    (what a mean-pooling model reads)."""
    num_tokens = attentions[0].shape[-1] - num_head_tokens
    rollout = torch.eye(num_tokens)
    for attention in attentions:
        layer = attention[0].float().mean(dim=0)[:num_tokens, :num_tokens]  # (T, T)
        layer = layer / layer.sum(dim=-1, keepdim=True)
        layer = 0.5 * layer + 0.5 * torch.eye(num_tokens)
        rollout = layer @ rollout
    drawn = rollout[num_prefix_tokens:].mean(dim=0) if average else rollout[0]
    patches = drawn[num_prefix_tokens:]
    return patches / patches.sum()


def patch_grid(weights: torch.Tensor) -> np.ndarray:
    """Patch weights (in row-major order) as a square (side, side) array."""
    side = round(len(weights) ** 0.5)
    if side * side != len(weights):
        raise ValueError(f"{len(weights)} tokens do not make a square grid of patches")
    return weights.reshape(side, side).numpy()


def overlay(image: Image.Image, grid: np.ndarray, opacity: float = 0.6) -> Image.Image:
    """`image` with `grid` laid over it as a heat map: black through red and yellow to white, from the grid's
    smallest value to its largest (all black where every value is the same). Each cell covers its patch; an image
    smaller than `MIN_OVERLAY_SIZE` is enlarged first, so that a 32 x 32 picture stays visible."""
    scale = max(1, -(-MIN_OVERLAY_SIZE // max(image.size)))
    image = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    spread = grid.max() - grid.min()
    heat = (grid - grid.min()) / spread if spread > 0 else np.zeros_like(grid)
    heat = Image.fromarray(np.uint8(255 * heat)).resize(image.size, Image.Resampling.BILINEAR)
    value = np.asarray(heat, dtype=np.float32)[..., None] / 255
    colours = np.clip(3 * value - np.array([0.0, 1.0, 2.0]), 0, 1)  # (H, W, 3): the "hot" colour map
    blended = (1 - opacity) * np.asarray(image, dtype=np.float32) + opacity * 255 * colours
    return Image.fromarray(np.uint8(np.round(blended)))


def probability_table(probabilities: dict) -> str:
    rows = [
        f"| {rank} | {html.escape(label)} | {score:.6f} |"
        for rank, (label, score) in enumerate(probabilities.items(), 1)
    ]
    return "| rank | label | probability |\n|---:|---|---:|\n" + "\n".join(rows[:TOP_K])


def build_demo(classifier: Classifier, examples=()):
    """The app, a `gradio.Blocks`: an image in (upload, paste or an example); the top-5 classes, their probabilities
    and the attention picture out. A file that cannot be classified gets its reason in the page, and the app keeps
    serving."""
    import gradio as gr  # here, not at the top: `scripts/demo.py` reads its flags before Gradio is known installed

    # Gradio's own preprocessing of the image input is off (`preprocess=False`): it decodes the file with PIL first,
    # and a file that is not an image would end in its raw error in both panels. `classify` gets the uploaded file
    # (`{"path": ...}`) and decodes it as the endpoint does, so such a file gets the app's own message.
    def classify(upload):
        if not upload:
            return None, "Upload or paste an image, or click an example.", None
        try:
            image = load_image(Path(upload["path"] if isinstance(upload, dict) else upload).read_bytes())
        except ValueError as error:
            return None, f"**Could not classify this file:** {html.escape(str(error))}", None
        probabilities, grid = classifier(image)
        return dict(list(probabilities.items())[:TOP_K]), probability_table(probabilities), overlay(image, grid)

    with gr.Blocks(title=f"VTLM demo: {classifier.model_name}") as demo:
        gr.Markdown(
            f"# {classifier.model_name}\nA VTLM image classifier. Drop in a picture: it is resized to what the "
            "model sees, classified, and shown with what the model attended to."
        )
        with gr.Row():
            with gr.Column() as left:
                image = gr.Image(
                    type="filepath", sources=["upload", "clipboard"], label="Image", elem_id="image", height=320
                )
                button = gr.Button("Classify", variant="primary", elem_id="classify")
            with gr.Column():
                top = gr.Label(num_top_classes=TOP_K, label="Top 5", elem_id="top")
                table = gr.Markdown(elem_id="probabilities")
                picture = gr.Image(
                    label="What the model attended to", elem_id="attention", interactive=False, height=320
                )
                gr.Markdown(classifier.attention_description, elem_id="attention-method")
        button.click(classify, inputs=image, outputs=[top, table, picture], preprocess=False)
        if examples:
            with left:  # under the button; a click classifies the example at once
                gr.Examples(
                    [[str(path)] for path in examples],
                    inputs=image,
                    outputs=[top, table, picture],
                    fn=classify,
                    run_on_click=True,
                    preprocess=False,
                    cache_examples=False,
                    label="The model's examples: click one to classify it",
                )
    return demo


def published_model(readme=APP_DIR / "README.md") -> str | None:
    """The first model under `models:` in the Space's README, or None without one."""
    models = metadata_load(readme).get("models") if readme.is_file() else None
    return models[0] if models else None


def add_server_arguments(parser):
    """`--host` and `--port`; unset, Gradio's own defaults apply: $GRADIO_SERVER_NAME and $GRADIO_SERVER_PORT
    (which a Space sets), else 127.0.0.1 and the first free port from 7860."""
    parser.add_argument("--host", default=None, help="Address to serve on (default 127.0.0.1; 0.0.0.0: every one).")
    parser.add_argument("--port", type=int, default=None, help="Port to serve on (default: the first free from 7860).")


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=None, help="Hub id or folder; default: the README's `models:`.")
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    args.model = args.model or published_model()
    if args.model is None:
        parser.error("name a model: no README with `models:` beside app.py")
    return args


def launch(classifier: Classifier, examples=(), host: str | None = None, port: int | None = None):
    """Serve the app until interrupted; `examples` are image files, which the app may serve."""
    allowed = sorted({str(Path(path).resolve().parent) for path in examples})
    demo = build_demo(classifier, examples)
    demo.launch(server_name=host, server_port=port, show_error=True, allowed_paths=allowed, css=EXAMPLES_CSS)


if __name__ == "__main__":
    args = parse_arguments()
    launch(Classifier(args.model), sorted((APP_DIR / "examples").glob("*.png")), args.host, args.port)
