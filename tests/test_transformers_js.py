"""transformers.js, in a real browser, runs the exported ONNX graph of any layout with its default options.

A page served on the loopback interface imports transformers.js from its npm package (installed by `.ci/run` into the
folder `VTLM_TRANSFORMERS_JS_DIR`; no CDN), builds `pipeline("image-classification", MODEL)` with no options, and
classifies 32x32 PNGs; Debian's Chromium runs it (the `browser` fixture). The answers are compared with
`scripts/predict.py`'s on the custom-code source.
"""

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from conftest import (
    NODE_MODULES,
    TINY_CONFIG,
    TRANSFORMERS_JS,
    class_images,
    free_port,
    predict_top,
    require_transformers_js,
)
from PIL import Image

from vtlm.modeling import VTLMConfig, VTLMForImageClassification, build_image_processor
from vtlm.training.export import ONNX_FILE, export_model

pytestmark = require_transformers_js()

PAGE = """<!doctype html>
<script type="module">
import { env, pipeline } from "/transformers/dist/transformers.js";
env.allowRemoteModels = false;  // the exported folders, served here; nothing from the Hub
env.allowLocalModels = true;  // in a browser, "local" is this site
env.localModelPath = "/models/";
env.useBrowserCache = false;
env.backends.onnx.wasm.wasmPaths = "/onnxruntime-web/dist/";
window.classify = async (model, images) => {
  const classifier = await pipeline("image-classification", model);  // the defaults: device, dtype, file
  const answers = [];
  for (const image of images) answers.push(await classifier(image, { top_k: 3 }));
  return answers;
};
window.ready = true;
</script>
"""
LAYOUTS = {
    "plain": {},  # exports exactly to the built-in ViT
    "conv": {"patch_embedding_type": "conv", "num_conv_layers": 2, "use_cls_token": False, "pooling": "sequence"},
}


class Files(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args):  # quiet: the test reports what matters
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder served over HTTP on 127.0.0.1: the page, transformers.js and ONNX Runtime Web from their npm packages,
    each layout's ONNX export under `models/`, and test images under `images/`; yields (URL, root)."""
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").write_text(PAGE)
    (root / "transformers").symlink_to(NODE_MODULES / TRANSFORMERS_JS)
    (root / "onnxruntime-web").symlink_to(NODE_MODULES / "onnxruntime-web")
    for name, fields in LAYOUTS.items():
        source = root / "sources" / name
        torch.manual_seed(0)
        VTLMForImageClassification(VTLMConfig(**TINY_CONFIG, num_labels=10, **fields)).save_pretrained(source)
        build_image_processor().save_pretrained(source)
        export_model(source, root / "models" / name, ("onnx",))
    (root / "images").mkdir()
    for index, image in enumerate(class_images(list(range(4)), seed=3)):
        Image.fromarray(image).save(root / "images" / f"{index}.png")
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Files, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", root
    server.shutdown()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_transformers_js_classifies_the_export_with_its_defaults(browser, site, layout):
    url, root = site
    paths = sorted((root / "images").glob("*.png"))
    expected = predict_top(root / "sources" / layout, paths)

    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{url}/index.html")
    WebDriverWait(browser, 60).until(lambda driver: driver.execute_script("return window.ready === true"))
    browser.set_script_timeout(120)
    answer = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.classify(arguments[0], arguments[1]).then((r) => done(JSON.stringify(r)), (e) => done('ERROR ' + e));",
        layout,
        [f"{url}/images/{path.name}" for path in paths],
    )
    assert not answer.startswith("ERROR"), answer
    answers = json.loads(answer)
    for got, reference in zip(answers, expected, strict=True):
        assert [item["label"] for item in got] == [label for label, _ in reference]
        np.testing.assert_allclose([item["score"] for item in got], [score for _, score in reference], atol=1e-4)
    assert (root / "models" / layout / ONNX_FILE).is_file()
