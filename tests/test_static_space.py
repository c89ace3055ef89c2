"""The static Space (`--static_space_id`): published to the recording Hub stand-in, served from loopback, and run in
Debian's Chromium with transformers.js from its npm package, offline.

Three servers stand in for the three hosts the published page may reach: the Space itself, the CDN that serves the
pinned transformers.js (and the ONNX Runtime Web it pins), and the Hub, which serves the model repository's files as
`/{repo}/resolve/main/{file}`. The page's `space.json` is the published one with those two hosts swapped for the
loopback ones; the browser's network log must show no request to any other host.
"""

import functools
import json
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from conftest import (
    NODE_MODULES,
    TINY_CONFIG,
    TRANSFORMERS_JS,
    free_port,
    make_run_folder,
    predict_top,
    require_transformers_js,
)

from vtlm.modeling import VTLMConfig, VTLMForImageClassification
from vtlm.space.folder import TRANSFORMERS_JS_URL
from vtlm.training.hub import publish_run

pytestmark = [pytest.mark.browser, pytest.mark.slow, *require_transformers_js()]
# For the docs' screenshot: VTLM_STATIC_SPACE_MODEL=RUN (a trained plain run folder, published in place of the tiny
# random one) VTLM_STATIC_SPACE_SCREENSHOT=docs/static-space.png python -m pytest tests/test_static_space.py -k plain
MODEL, SCREENSHOT = "VTLM_STATIC_SPACE_MODEL", "VTLM_STATIC_SPACE_SCREENSHOT"

LAYOUTS = {
    "plain": {},  # exports exactly to the built-in ViT: the repository has its weights and its graph
    "conv": {"patch_embedding_type": "conv", "num_conv_layers": 2, "use_cls_token": False, "pooling": "sequence"},
}


class Files(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")  # the page fetches the model and the CDN cross-origin
        super().end_headers()

    def log_message(self, *args):
        pass


def serve(root):
    """Serve the folder `root` on a loopback port; returns (base URL, server)."""
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Files, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}", server


def write_files(root, files):
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


@pytest.fixture(scope="module", params=list(LAYOUTS))
def published(request, tmp_path_factory, browser):
    """A run of the layout, published with its ONNX repository and a static Space to the recording Hub, and the three
    hosts serving them; yields what the test needs."""
    layout = request.param
    monkeypatch = pytest.MonkeyPatch()
    from conftest import FakeHub

    hub = FakeHub(monkeypatch)
    root = tmp_path_factory.mktemp(f"static-{layout}")
    if layout == "plain" and os.environ.get(MODEL):
        run_dir = shutil.copytree(os.environ[MODEL], root / "run", ignore=shutil.ignore_patterns("checkpoint-*"))
    else:
        run_dir = make_run_folder(root / "run")
        torch.manual_seed(0)  # the layout's own model in place of the tiny plain one make_run_folder saves
        VTLMForImageClassification(VTLMConfig(**TINY_CONFIG, **LAYOUTS[layout])).save_pretrained(run_dir)
    publish_run(run_dir, hub_model_id="someone/vtlm-tiny", hub_vit_model_id="someone/vtlm-tiny-onnx",
                static_space_id="someone/vtlm-static", token="hf_fake")  # fmt: skip
    space_files = hub.files[("someone/vtlm-static", "main")]
    write_files(root / "space", space_files)
    model_files = hub.files[("someone/vtlm-tiny-onnx", "main")]
    write_files(root / "hub" / "someone" / "vtlm-tiny-onnx" / "resolve" / "main", model_files)
    (root / "cdn").mkdir()
    (root / "cdn" / "transformers").symlink_to(NODE_MODULES / TRANSFORMERS_JS)
    (root / "cdn" / "onnxruntime-web").symlink_to(NODE_MODULES / "onnxruntime-web")
    servers = {name: serve(root / name) for name in ("space", "hub", "cdn")}
    settings = json.loads(space_files["space.json"])
    settings.update(
        transformers_js=f"{servers['cdn'][0]}/transformers/dist/transformers.js",
        hub=f"{servers['hub'][0]}/",
        onnxruntime_wasm=f"{servers['cdn'][0]}/onnxruntime-web/dist/",
    )
    (root / "space" / "space.json").write_text(json.dumps(settings))
    yield {"layout": layout, "root": root, "run": run_dir, "urls": {k: v[0] for k, v in servers.items()},
           "published": space_files, "hub": hub}  # fmt: skip
    for _, server in servers.values():
        server.shutdown()
    monkeypatch.undo()


def open_page(browser, url):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{url}/index.html")
    WebDriverWait(browser, 120).until(lambda driver: driver.execute_script("return window.ready === true"))
    browser.set_script_timeout(120)


def classify(browser, url, name):
    return browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.classify(arguments[0], arguments[1]).then(() => done(JSON.stringify(window.lastAnswer)));",
        url,
        name,
    )


def test_the_published_space_is_a_static_page_pinned_to_transformers_js(published):
    files = published["published"]
    readme = files["README.md"].decode()
    assert "sdk: static" in readme and "app_file: index.html" in readme and "someone/vtlm-tiny-onnx" in readme
    settings = json.loads(files["space.json"])
    assert settings["transformers_js"] == TRANSFORMERS_JS_URL and "@4.3.2" in TRANSFORMERS_JS_URL
    assert settings["model_id"] == "someone/vtlm-tiny-onnx" and settings["hub"] == "https://huggingface.co/"
    assert {"index.html", "app.js", "style.css"} <= set(files)
    assert sorted(path for path in files if path.startswith("examples/")) == [
        f"examples/{example['file'].split('/')[-1]}" for example in settings["examples"]
    ]


def test_the_page_answers_as_predict_py_and_loads_nothing_from_other_hosts(browser, published):
    urls = published["urls"]
    open_page(browser, urls["space"])
    settings = json.loads((published["root"] / "space" / "space.json").read_text())
    paths = [published["root"] / "space" / example["file"] for example in settings["examples"]]
    expected = predict_top(published["run"], paths, top_k=5)
    for path, reference in zip(paths, expected, strict=True):
        answer = json.loads(classify(browser, f"{urls['space']}/{path.relative_to(published['root'] / 'space')}",
                                     path.name))  # fmt: skip
        assert "error" not in answer, answer
        assert [item["label"] for item in answer["top"]] == [label for label, _ in reference]
        np.testing.assert_allclose([item["score"] for item in answer["top"]], [s for _, s in reference], atol=1e-4)
    page = browser.find_element("id", "runtime").text
    assert "transformers.js 4.3.2" in page and "WebAssembly" in page and "fp32" in page
    title = browser.find_element("id", "title").text
    assert title and browser.find_element("id", "summary").text.startswith(settings["accuracy"])
    if published["layout"] == "plain" and os.environ.get(SCREENSHOT):
        browser.save_screenshot(os.environ[SCREENSHOT])
    # Every resource the page fetched (the module, the graph, ONNX Runtime's files, the images), by the browser's
    # own record of them.
    requested = browser.execute_script("return performance.getEntriesByType('resource').map((entry) => entry.name)")
    assert any(url.endswith(".onnx") for url in requested) and any("transformers" in url for url in requested)
    assert not [url for url in requested if not url.startswith((*urls.values(), "blob:", "data:"))], requested


def test_a_file_that_is_not_an_image_gets_a_message(browser, published):
    urls = published["urls"]
    open_page(browser, urls["space"])
    (published["root"] / "space" / "notes.txt").write_text("not an image")
    answer = json.loads(classify(browser, f"{urls['space']}/notes.txt", "notes.txt"))
    assert answer == {"error": "not an image", "name": "notes.txt"}
    status = browser.find_element("id", "status")
    assert "notes.txt is not an image" in status.text and "error" in status.get_attribute("class")
    assert not browser.find_element("id", "top5").is_displayed()
