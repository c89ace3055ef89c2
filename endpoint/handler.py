"""Custom handler for Hugging Face Inference Endpoints: image classification with VTLM.

Uploaded to the root of the model repository beside `requirements.txt`. The endpoint calls
`EndpointHandler(path)(data)` with `data = {"inputs": ..., "parameters": {"top_k": 5}}`:

- `inputs` is one image or a list of images. An image is a PIL image (what the endpoint gives for an `image/*`
  request body), raw encoded bytes, or a base64 string of them (a `data:image/...;base64,` prefix is allowed).
- `parameters.top_k` (default 5) is how many labels to return per image, at most the number of classes.
- One image returns `[{"label": str, "score": float}, ...]` with the best label first; a list returns one such
  list per image, in order.

Errors: any input the handler cannot classify raises `ValueError` with a message that names the problem (and the
list index, for list inputs). The endpoint's web service answers every exception a handler raises with HTTP 400 and
`{"error": message}`, and keeps serving; a request with one bad image in a list fails as a whole.

Memory: an image is decoded only after its size is checked from its header. JPEG images are decoded at a reduced
scale (`Image.draft`, up to 1/8 per side) when they are larger than the model needs, so a 10,000 x 10,000 photo
decodes to 1,250 x 1,250. Images that cannot be decoded at reduced scale (PNG, WebP, ...) are refused above
`MAX_DECODED_PIXELS`, and every image above `MAX_INPUT_PIXELS` is refused before any decoding. PIL's own
decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`, which warns above its limit and refuses twice it) is set to
`MAX_INPUT_PIXELS` too: it also covers the images that the endpoint decodes itself, at full size, for `image/*`
request bodies. Send large images as JSON (base64) to get the reduced-scale decoding. The full-size limit is
`load_image`'s `max_decoded_pixels`, not a global: the endpoint and the demo keep it, and `scripts/predict.py` lifts
it for its user's own files.

This file imports only torch, transformers, PIL and the standard library: the model's own code comes from the
repository through `trust_remote_code=True`.
"""

import base64
import binascii
import io

import torch
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, AutoModelForImageClassification

# Largest image, in pixels, that is opened at all. JPEG decodes it at 1/8 scale: at most 2,048 x 2,048.
MAX_INPUT_PIXELS = 16_384 * 16_384
# Largest image decoded at full scale: 4,096 x 4,096 is 50 MB as RGB, 67 MB as 32-bit grayscale.
MAX_DECODED_PIXELS = 4_096 * 4_096
# The model sees 32 x 32 images: decoded images are shrunk to fit this side before any other work.
WORKING_SIZE = 512
DEFAULT_TOP_K = 5
# Images per forward pass, which bounds the memory a long list of images takes.
BATCH_SIZE = 64

# Errors PIL raises for bytes it cannot decode: unknown format, truncated or corrupt data, bombs.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class EndpointHandler:
    def __init__(self, path=""):
        # Set here rather than at import: `training.data` imports `to_rgb` from this module.
        Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True)
        self.model.to(self.device).eval()
        self.image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=True)
        self.id2label = self.model.config.id2label

    def __call__(self, data: dict) -> list:
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('the request must be a JSON object with an "inputs" field holding an image or a list')
        parameters = data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValueError(f'"parameters" must be a JSON object such as {{"top_k": 5}}, got {parameters!r}')
        top_k = parse_top_k(parameters.get("top_k", DEFAULT_TOP_K), len(self.id2label))
        inputs = data["inputs"]
        if not isinstance(inputs, list):
            return self.classify([load_image(inputs)], top_k)[0]
        if not inputs:
            raise ValueError('"inputs" is an empty list: send at least one image')

        predictions = []
        for start in range(0, len(inputs), BATCH_SIZE):
            images = []
            for index in range(start, min(start + BATCH_SIZE, len(inputs))):
                try:
                    images.append(load_image(inputs[index]))
                except ValueError as error:
                    raise ValueError(f"inputs[{index}]: {error}") from error
            predictions.extend(self.classify(images, top_k))
        return predictions

    @torch.inference_mode()
    def classify(self, images: list, top_k: int) -> list:
        pixel_values = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        logits = self.model(pixel_values=pixel_values.to(self.device)).logits
        scores, indices = logits.float().softmax(dim=-1).topk(top_k, dim=-1)  # each (B, top_k)
        return [
            [{"label": self.id2label[i], "score": score} for score, i in zip(scores_row, indices_row, strict=True)]
            for scores_row, indices_row in zip(scores.tolist(), indices.tolist(), strict=True)
        ]


def parse_top_k(top_k, num_labels: int) -> int:
    """`top_k` as a positive int, capped at the number of labels."""
    if isinstance(top_k, str) and top_k.strip().isdigit():  # query parameters arrive as strings
        top_k = int(top_k)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"parameters.top_k must be a positive integer, got {top_k!r}")
    return min(top_k, num_labels)


def load_image(value, max_decoded_pixels=MAX_DECODED_PIXELS) -> Image.Image:
    """Decode one input (PIL image, bytes or base64 string) into an RGB image no larger than `WORKING_SIZE`.

    An image that cannot be decoded at reduced scale is refused above `max_decoded_pixels`; None decodes any image
    up to `MAX_INPUT_PIXELS` (and PIL's own `Image.MAX_IMAGE_PIXELS`), for a caller that reads its user's own files.
    """
    if isinstance(value, str):
        value = decode_base64(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        if not value:
            raise ValueError("the image is empty (0 bytes)")
        try:
            image = Image.open(io.BytesIO(value))
        except Image.DecompressionBombError as error:
            raise ValueError(f"the image is too large ({error})") from error
        except Image.UnidentifiedImageError as error:
            raise ValueError("the bytes are not in any image format PIL can read") from error
        except DECODE_ERRORS as error:
            raise ValueError(f"the bytes are not an image PIL can read ({error})") from error
    elif isinstance(value, Image.Image):
        image = value
    else:
        raise ValueError(
            f"unsupported input type {type(value).__name__}: send an image as raw bytes, a base64 string or a "
            "PIL image, or a list of these"
        )

    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"the image has no pixels ({width}x{height})")
    if width * height > MAX_INPUT_PIXELS:
        raise ValueError(f"the image is {width}x{height}, more than the {MAX_INPUT_PIXELS:,} pixels accepted")
    # JPEG only: decode straight to a smaller scale that still covers WORKING_SIZE; a no-op for other formats.
    image.draft(None, (WORKING_SIZE, WORKING_SIZE))
    still_encoded = bool(getattr(image, "tile", None))  # an image already in memory costs nothing more to shrink
    if still_encoded and max_decoded_pixels is not None and image.width * image.height > max_decoded_pixels:
        raise ValueError(
            f"the image is {width}x{height}; a {image.format or image.mode} image is decoded at full size, and at "
            f"most {max_decoded_pixels:,} pixels are: downscale it, or send it as JPEG"
        )
    try:
        image.load()
        if image is value:  # the caller's image is never changed: transposed into a copy, which is ours to shrink
            image = ImageOps.exif_transpose(image)
        else:  # decoded here: no copy of what may be a full-size image
            ImageOps.exif_transpose(image, in_place=True)
        if image.mode != "RGB":  # an RGB image is already ours, and converting it would copy it
            image = to_rgb(image)
    except DECODE_ERRORS as error:
        raise ValueError(f"the image could not be decoded ({error})") from error
    image.thumbnail((WORKING_SIZE, WORKING_SIZE))  # shrinks in place, keeps the aspect ratio, never enlarges
    return image


def decode_base64(text: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)  # line breaks are allowed
    except (binascii.Error, ValueError) as error:
        raise ValueError(
            "a string input must be a base64-encoded image (file paths and URLs are not accepted)"
        ) from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as the 8-bit RGB image the model was trained on; the one conversion that training
    (`training.data`), `scripts/predict.py` and this handler share.

    16-bit images are scaled by 255 / 65535 (PIL's own `convert("RGB")` clips them at 255, which turns most of them
    white), 32-bit integer and float images by their range; alpha is dropped, as the `image-classification`
    pipeline drops it.
    """
    if image.mode.startswith("I;16"):
        image, scale = image.convert("I"), 1 / 257
    elif image.mode in ("I", "F"):
        high = image.getextrema()[1]
        if image.mode == "F" and high <= 1:
            scale = 255  # float images in [0, 1]
        elif high <= 255:
            scale = 1
        elif high <= 65_535:
            scale = 1 / 257  # 16-bit data in a 32-bit image
        else:
            scale = 255 / high
    if image.mode in ("I", "F"):
        image = image.point(lambda value: value * scale).convert("L")
    return image.convert("RGB")
