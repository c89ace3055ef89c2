"""The ONNX exports in a real browser: Debian's Chromium runs transformers.js (the npm package, served from this
machine) with its default pipeline options, and answers as scripts/predict.py does on the run's example images.

transformers.js comes from `ONNXRUNTIME_NODE_INSTALL=skip npm install @huggingface/transformers` in the folder
`VTLM_TRANSFORMERS_JS_DIR` (default `.node/` in the repository), as .ci/run installs it. Nothing reaches a CDN: the
page, the library, ONNX Runtime's wasm files and the models are served on 127.0.0.1.
"""

import functools
import http.server
import json
import os
import threading
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLE_CLASSES, REPO_ROOT, TINY_CONFIG, class_images, load_script

from modeling import CIFAR100_LABELS, VTLMConfig, VTLMForImageClassification, build_image_processor
from training.export import export_model
from training.model_card import save_example_images

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
NODE_MODULES = Path(os.environ.get("VTLM_TRANSFORMERS_JS_DIR", REPO_ROOT / ".node")) / "node_modules"
LIBRARY = "@huggingface/transformers/dist/transformers.js"  # the browser bundle, with onnxruntime-web inside
WASM_DIR = "onnxruntime-web/dist/"
# The plain layout as published (ViT weights and its graph), and the conv tokenizer's graph alone.
EXPORTS = {"plain": ({}, ("vit", "onnx")), "conv": ({"preset": "vtlm-37m-conv"}, ("onnx",))}
PAGE = """<!doctype html>
<script type="module">
import { pipeline, env } from "/node_modules/LIBRARY";
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = "/models/";
env.backends.onnx.wasm.wasmPaths = "/node_modules/WASM_DIR";
window.classify = async (model, images) => {
  const classifier = await pipeline("image-classification", model);  // the default options
  return await classifier(images, { top_k: 5 });
};
</script>
"""


def missing() -> str | None:
    """Why the test cannot run here, or None."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return "no Chromium here: apt-get install -y chromium chromium-driver"
    if not (NODE_MODULES / LIBRARY).is_file():
        return (
            f"no transformers.js in {NODE_MODULES}: ONNXRUNTIME_NODE_INSTALL=skip npm install @huggingface/transformers"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "no Selenium: pip install -e '.[demo]'"
    return None


def save_run(folder, preset=None):
    """A run folder with distinct weights (scores far apart) and the run's example images, 32x32 PNGs."""
    torch.manual_seed(0)
    config = VTLMConfig.from_preset(preset, **TINY_CONFIG) if preset else VTLMConfig(**TINY_CONFIG)
    model = VTLMForImageClassification(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    build_image_processor(config.image_size).save_pretrained(folder)
    records = save_example_images(
        folder, class_images(list(EXAMPLE_CLASSES)), [CIFAR100_LABELS[i] for i in EXAMPLE_CLASSES]
    )
    return [folder / record["file"] for record in records]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(URL, {layout: example image paths}, {layout: predict.py's answers}): the page, the library and the exports,
    served on 127.0.0.1 from one folder."""
    if reason := missing():
        if os.environ.get("VTLM_REQUIRE_BROWSER"):
            pytest.fail(f"VTLM_REQUIRE_BROWSER is set, but {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("site")
    (root / "node_modules").symlink_to(NODE_MODULES.resolve())
    (root / "index.html").write_text(PAGE.replace("LIBRARY", LIBRARY).replace("WASM_DIR", WASM_DIR))
    images, expected = {}, {}
    for layout, (options, formats) in EXPORTS.items():
        run = tmp_path_factory.mktemp(layout)
        paths = save_run(run, options.get("preset"))
        export_model(run, root / "models" / layout, formats)
        (root / "images").mkdir(exist_ok=True)
        for path in paths:
            (root / "images" / f"{layout}-{path.name}").write_bytes(path.read_bytes())
        images[layout] = [f"/images/{layout}-{path.name}" for path in paths]
        expected[layout] = load_script("predict").main([str(run), *map(str, paths)])

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", images, expected
    server.shutdown()


class Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves the folder with the types a browser demands of modules and wasm, and logs nothing."""

    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser(site):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(240)
    yield driver
    driver.quit()


CLASSIFY = """
const [model, images, done] = arguments;
const wait = () => window.classify ? window.classify(model, images).then(done, (e) => done({error: String(e)}))
                                   : setTimeout(wait, 50);
wait();
"""


@pytest.mark.parametrize("layout", list(EXPORTS))
def test_transformers_js_in_chromium_answers_as_predict_does(site, browser, layout):
    url, images, expected = site
    browser.get(url)
    answers = browser.execute_async_script(CLASSIFY, layout, [url.rstrip("/") + path for path in images[layout]])
    assert isinstance(answers, list), json.dumps(answers)
    assert len(answers) == len(expected[layout])
    for answer, prediction in zip(answers, expected[layout], strict=True):
        assert [row["label"] for row in answer] == [row["label"] for row in prediction]
        assert [row["score"] for row in answer] == pytest.approx([row["score"] for row in prediction], abs=1e-4)
