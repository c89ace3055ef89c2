"""The Inference Endpoints handler, run as the endpoint runs it: from the model folder, without this repository.

One subprocess loads `handler.py` from a saved model folder, with the `modeling` and `training` packages blocked,
and runs every input kind through it; the tests below check its answers. Huge images are made here, in the test
process, so the subprocess's peak memory counts only what the handler spends on them.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import class_images, save_tiny_model
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # every test reads the answers of one handler subprocess
MiB = 1024 * 1024

DRIVER = r'''
import base64, importlib.abc, io, json, sys
from pathlib import Path


class BlockProjectPackages(importlib.abc.MetaPathFinder):
    """The endpoint has only the Hub repository: this repository's packages must not be needed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling", "training"):
            raise ImportError(f"the handler imported {name}")


sys.meta_path.insert(0, BlockProjectPackages())
sys.path.insert(0, str(Path.cwd()))
import numpy as np
from PIL import Image
from transformers import pipeline

from handler import EndpointHandler, load_image

inputs_dir = Path(sys.argv[1])
handler = EndpointHandler(str(Path.cwd()))
results = {"model_module": type(handler.model).__module__}


def encoded(image, format="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, format)
    return buffer.getvalue()


def run(name, data):
    try:
        results[name] = {"output": handler(data)}
    except ValueError as error:
        results[name] = {"error": str(error)}


def memory_mib(field):
    """VmRSS (now) or VmHWM (peak) of this process, from Linux's /proc; None elsewhere."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    return int(status.split(field + ":")[1].split()[0]) / 1024


def reset_peak_rss():
    # Writing 5 to clear_refs resets VmHWM to the current RSS. (ru_maxrss would not do: it keeps the peak of the
    # process that forked this one.)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


image = Image.fromarray(np.load(inputs_dir / "image.npy"))
png = encoded(image)
run("pil", {"inputs": image})
results["pipeline"] = pipeline("image-classification", model=str(Path.cwd()), trust_remote_code=True)(image)
run("png_bytes", {"inputs": png})
run("jpeg_bytes", {"inputs": encoded(image, "JPEG")})
run("bytearray", {"inputs": bytearray(png)})
run("base64", {"inputs": base64.b64encode(png).decode()})
run("base64_with_line_breaks", {"inputs": base64.encodebytes(png).decode()})
run("data_url", {"inputs": "data:image/png;base64," + base64.b64encode(png).decode()})
run("list", {"inputs": [image, png, base64.b64encode(png).decode()]})
run("top_k_3", {"inputs": image, "parameters": {"top_k": 3}})
run("top_k_query_string", {"inputs": image, "parameters": {"top_k": "2"}})
run("top_k_above_num_labels", {"inputs": image, "parameters": {"top_k": 1000}})
run("parameters_null", {"inputs": image, "parameters": None})
run("parameters_not_an_object", {"inputs": image, "parameters": [5]})

gray = image.convert("L")
run("gray_8bit", {"inputs": gray})
sixteen = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)  # the same picture, in 16 bits (255 -> 65535)
assert sixteen.mode.startswith("I;16"), sixteen.mode
run("gray_16bit_png", {"inputs": encoded(sixteen)})
run("gray_16bit_pil", {"inputs": sixteen})
palette = image.quantize(32)
run("palette", {"inputs": encoded(palette)})
run("palette_as_rgb", {"inputs": palette.convert("RGB")})
transparent = image.convert("RGBA")
transparent.putalpha(Image.linear_gradient("L").resize(image.size))
run("rgba", {"inputs": encoded(transparent)})
run("rgba_alpha_dropped", {"inputs": transparent.convert("RGB")})
transparent_palette = image.quantize(32)
transparent_palette.info["transparency"] = 0
run("palette_transparent", {"inputs": encoded(transparent_palette)})
run("cmyk", {"inputs": encoded(image.convert("CMYK"), "JPEG")})

run("not_an_image", {"inputs": b"hello, I am a text file and not an image"})
run("corrupt_png", {"inputs": png[: len(png) // 2]})
run("not_base64", {"inputs": "photo.jpg"})
run("base64_of_text", {"inputs": base64.b64encode(b"plain text, no pixels").decode()})
run("empty_bytes", {"inputs": b""})
run("empty_string", {"inputs": ""})
run("empty_list", {"inputs": []})
run("none", {"inputs": None})
run("number", {"inputs": 42})
run("dict", {"inputs": {"image": base64.b64encode(png).decode()}})
run("nested_list", {"inputs": [[image]]})
run("list_with_a_bad_image", {"inputs": [image, b"junk"]})
run("zero_size_image", {"inputs": Image.new("RGB", (0, 0))})
run("zero_width_image", {"inputs": Image.new("RGB", (0, 10))})
run("no_inputs_field", {"image": png})
run("not_a_dict", "just a string")
for name, top_k in (("zero", 0), ("negative", -1), ("bool", True), ("text", "five"), ("float", 2.5)):
    run(f"top_k_{name}", {"inputs": image, "parameters": {"top_k": top_k}})

# Huge images: how far above the memory in use before the call does the peak go during it?
for name in ("png_bomb", "png_header_too_large", "png_header_above_limit", "huge_jpeg"):
    data = (inputs_dir / name).read_bytes()
    reset_peak_rss()
    before = memory_mib("VmRSS")
    run(name, {"inputs": data})
    results[name]["peak_rss_growth_mib"] = before and memory_mib("VmHWM") - before
results["huge_jpeg_working_size"] = list(load_image((inputs_dir / "huge_jpeg").read_bytes()).size)
run("still_serving", {"inputs": png})
print(json.dumps(results))
'''


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def solid_png(width: int, height: int, rows: int, rgb=None) -> bytes:
    """A PNG whose header says width x height, with `rows` rows of pixel data in one colour: black 8-bit grayscale,
    or `rgb` (red, green, blue) in 8-bit RGB.

    The rows are compressed one at a time, each after the first as PNG's "up" filter (no change from the row above:
    zeros), run-length coded: a full 10,000 x 10,000 image is a 100 KB file that decodes to 100 MB, and this process
    never holds the decoded image.
    """
    channels = 1 if rgb is None else 3
    # The first row: black, or PNG's "sub" filter (the first pixel, then no change from the pixel to the left).
    first = bytes(width + 1) if rgb is None else b"\x01" + bytes(rgb) + bytes(channels * (width - 1))
    up = b"\x02" + bytes(channels * width)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    pixels = compressor.compress(first) + b"".join(compressor.compress(up) for _ in range(rows - 1))
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if rgb is None else 2, 0, 0, 0)
    idat = pixels + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    """Run the driver once in a model folder holding handler.py; return its JSON report."""
    model_dir = tmp_path_factory.mktemp("endpoint-model")
    save_tiny_model(model_dir)
    shutil.copy(REPO_ROOT / "endpoint" / "handler.py", model_dir / "handler.py")
    (model_dir / "driver.py").write_text(DRIVER)

    inputs_dir = tmp_path_factory.mktemp("endpoint-inputs")
    import numpy as np

    np.save(inputs_dir / "image.npy", class_images([3], image_size=40)[0])
    (inputs_dir / "png_bomb").write_bytes(solid_png(10_000, 10_000, rows=10_000))
    (inputs_dir / "png_header_too_large").write_bytes(solid_png(20_000, 20_000, rows=1))
    (inputs_dir / "png_header_above_limit").write_bytes(solid_png(30_000, 30_000, rows=1))
    huge = Image.new("RGB", (10_000, 10_000), (120, 30, 200))
    huge.paste((20, 200, 90), (2_000, 3_000, 8_000, 9_000))
    huge.save(inputs_dir / "huge_jpeg", "JPEG", quality=90)
    del huge

    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    completed = subprocess.run(
        [sys.executable, "driver.py", str(inputs_dir)],
        cwd=model_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def labels_and_scores(output):
    return [prediction["label"] for prediction in output], [prediction["score"] for prediction in output]


def assert_same_predictions(output, expected):
    labels, scores = labels_and_scores(output)
    expected_labels, expected_scores = labels_and_scores(expected)
    assert labels == expected_labels
    assert scores == pytest.approx(expected_scores, abs=1e-6)


def test_the_handler_runs_the_remote_code_without_this_repository(endpoint):
    assert endpoint["model_module"].startswith("transformers_modules.")


def test_a_pil_image_gets_the_pipelines_top_5(endpoint):
    output = endpoint["pil"]["output"]
    assert len(output) == 5 and all(set(prediction) == {"label", "score"} for prediction in output)
    assert_same_predictions(output, endpoint["pipeline"])
    scores = labels_and_scores(output)[1]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    "name", ["png_bytes", "bytearray", "base64", "base64_with_line_breaks", "data_url", "top_k_above_num_labels"]
)
def test_bytes_and_base64_inputs_decode_to_the_same_image(endpoint, name):
    assert_same_predictions(endpoint[name]["output"][:5], endpoint["pil"]["output"])


def test_jpeg_bytes_are_classified(endpoint):
    assert len(endpoint["jpeg_bytes"]["output"]) == 5


def test_top_k_is_honoured_and_capped_at_the_number_of_labels(endpoint):
    assert len(endpoint["top_k_3"]["output"]) == 3
    assert len(endpoint["top_k_query_string"]["output"]) == 2
    assert len(endpoint["top_k_above_num_labels"]["output"]) == 100
    assert len(endpoint["parameters_null"]["output"]) == 5


def test_a_list_returns_one_list_per_image_in_order(endpoint):
    outputs = endpoint["list"]["output"]
    assert len(outputs) == 3
    for output in outputs:
        assert_same_predictions(output, endpoint["pil"]["output"])


def test_16_bit_images_are_scaled_not_clipped(endpoint):
    for name in ("gray_16bit_png", "gray_16bit_pil"):
        assert_same_predictions(endpoint[name]["output"], endpoint["gray_8bit"]["output"])


@pytest.mark.parametrize(("name", "same_as"), [("palette", "palette_as_rgb"), ("rgba", "rgba_alpha_dropped")])
def test_palette_and_transparent_images_are_converted_to_rgb(endpoint, name, same_as):
    assert_same_predictions(endpoint[name]["output"], endpoint[same_as]["output"])


@pytest.mark.parametrize("name", ["palette_transparent", "cmyk"])
def test_other_modes_are_classified(endpoint, name):
    assert len(endpoint[name]["output"]) == 5


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("not_an_image", "not in any image format"),
        ("corrupt_png", "could not be decoded"),
        ("not_base64", "must be a base64-encoded image"),
        ("base64_of_text", "not in any image format"),
        ("empty_bytes", "the image is empty"),
        ("empty_string", "the image is empty"),
        ("empty_list", '"inputs" is an empty list'),
        ("none", "unsupported input type NoneType"),
        ("number", "unsupported input type int"),
        ("dict", "unsupported input type dict"),
        ("nested_list", "inputs[0]: unsupported input type list"),
        ("list_with_a_bad_image", "inputs[1]: the bytes are not in any image format"),
        ("zero_size_image", "no pixels (0x0)"),
        ("zero_width_image", "no pixels (0x10)"),
        ("no_inputs_field", 'an "inputs" field'),
        ("not_a_dict", 'an "inputs" field'),
        ("parameters_not_an_object", '"parameters" must be a JSON object such as {"top_k": 5}, got [5]'),
        ("top_k_zero", "top_k must be a positive integer, got 0"),
        ("top_k_negative", "top_k must be a positive integer, got -1"),
        ("top_k_bool", "top_k must be a positive integer, got True"),
        ("top_k_text", "top_k must be a positive integer, got 'five'"),
        ("top_k_float", "top_k must be a positive integer, got 2.5"),
        ("png_bomb", "is decoded at full size"),
        ("png_header_too_large", "more than the 268,435,456 pixels accepted"),
        ("png_header_above_limit", "the image is too large"),
    ],
)
def test_bad_input_raises_a_clear_value_error(endpoint, name, message):
    assert "output" not in endpoint[name], endpoint[name]
    assert message in endpoint[name]["error"]


def test_the_endpoint_keeps_serving_after_bad_input(endpoint):
    assert_same_predictions(endpoint["still_serving"]["output"], endpoint["png_bytes"]["output"])


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux's /proc/self"
)


@needs_proc
def test_a_huge_jpeg_is_decoded_at_reduced_scale_in_bounded_memory(endpoint):
    # Decoding 10,000 x 10,000 RGB at full size takes 286 MiB; at 1/8 scale, 4.5 MiB.
    assert len(endpoint["huge_jpeg"]["output"]) == 5
    assert endpoint["huge_jpeg"]["peak_rss_growth_mib"] < 100
    assert max(endpoint["huge_jpeg_working_size"]) <= 512


@needs_proc
@pytest.mark.parametrize("name", ["png_bomb", "png_header_too_large", "png_header_above_limit"])
def test_decompression_bombs_are_refused_before_decoding(endpoint, name):
    assert endpoint[name]["peak_rss_growth_mib"] < 50  # the 10,000 x 10,000 bomb decodes to 95 MiB
