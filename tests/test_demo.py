"""The demo (`space/app.py`, `scripts/demo.py`, the published Space): the attention picture of each layout, the
Space's pins, the script's errors, and the app itself driven from a real headless Chromium."""

import importlib.metadata
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _BLOCK_MODELING, TINY_CONFIG, free_port, load_script, make_run_folder
from PIL import Image

from vtlm.space.app import Classifier, overlay
from vtlm.space.folder import pinned_requirements
from vtlm.training.export import export_model

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_PATCH = 21  # row 2, column 5 of the tiny models' 8 x 8 patches
LAYOUTS = {
    "CLS token": TINY_CONFIG,
    "DHVT (head tokens)": {
        **TINY_CONFIG,
        "patch_embedding_type": "sope",
        "use_position_embeddings": False,
        "feed_forward_type": "daff",
        "use_head_tokens": True,
    },
    "mean pooling": {**TINY_CONFIG, "pooling": "mean"},
    "sequence pooling": {
        **TINY_CONFIG,
        "patch_embedding_type": "conv",
        "num_conv_layers": 2,
        "conv_hidden_size": 16,
        "use_cls_token": False,
        "pooling": "sequence",
    },
}


def forced_attention(target):
    """An attention function whose every query attends to token `target` only."""

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        weights = torch.zeros(*query.shape[:-1], key.shape[-2], dtype=query.dtype)
        weights[..., target] = 1.0
        return torch.matmul(weights, value).transpose(1, 2), weights

    return attend


class ForcedScore(torch.nn.Module):
    """A sequence-pooling score that puts all the weight on token `target`."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, tokens):
        scores = torch.full((*tokens.shape[:2], 1), -30.0)
        scores[:, self.target] = 30.0
        return scores


def save_model(folder, fields):
    from vtlm.modeling import VTLMConfig, VTLMForImageClassification, build_image_processor

    torch.manual_seed(0)
    VTLMForImageClassification(VTLMConfig(**fields)).save_pretrained(folder)
    build_image_processor().save_pretrained(folder)
    return folder


def brightest_cell(picture: Image.Image, side: int) -> int:
    """The row-major index of the brightest of `side` x `side` equal cells of `picture`."""
    luminance = np.asarray(picture.convert("L"), dtype=np.float64)
    cell = luminance.shape[0] // side
    means = luminance[: cell * side, : cell * side].reshape(side, cell, side, cell).mean(axis=(1, 3))
    return int(means.argmax())


@pytest.mark.parametrize("layout", [*LAYOUTS, "built-in ViT export"])
def test_the_attention_picture_is_brightest_where_the_attention_is_forced(layout, tmp_path, monkeypatch):
    if layout == "built-in ViT export":
        export_model(save_model(tmp_path / "vtlm", TINY_CONFIG), tmp_path / "vit", ("vit",))
        classifier = Classifier(str(tmp_path / "vit"))
        assert classifier.model.config.model_type == "vit"
    else:
        classifier = Classifier(str(save_model(tmp_path / "model", LAYOUTS[layout])))
    if classifier.pooling == "sequence":
        monkeypatch.setattr(classifier.model.base_model.sequence_pooling, "score", ForcedScore(TARGET_PATCH))
        expected_method = "Sequence-pooling weights"
    else:  # the attention function of whichever module the model's class came from (ours, remote code or ViT's)
        model_module = sys.modules[type(classifier.model).__module__]
        monkeypatch.setattr(model_module, "eager_attention_forward", forced_attention(1 + TARGET_PATCH))
        expected_method = "Attention rollout"
    assert classifier.attention_description.startswith(expected_method)

    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    probabilities, grid = classifier(grey)
    assert grid.shape == (8, 8) and grid.sum() == pytest.approx(1.0)
    assert int(grid.argmax()) == TARGET_PATCH
    assert sum(probabilities.values()) == pytest.approx(1.0) and len(probabilities) == 100
    picture = overlay(grey, grid)
    assert picture.size == (256, 256)  # small inputs are enlarged to stay visible
    assert brightest_cell(picture, 8) == TARGET_PATCH


@pytest.mark.parametrize("layout", ["DHVT (head tokens)", "sequence pooling"])
def test_a_model_saved_before_it_said_where_its_patches_sit_is_drawn_the_same(layout, tmp_path, monkeypatch):
    """A run folder whose own modeling_vtlm.py predates `num_prefix_tokens`, `num_head_tokens` and `pooling_weights`
    (its code is what loads): the app reads its config instead, and draws the same picture."""
    folder = str(save_model(tmp_path / "model", LAYOUTS[layout]))
    image = Image.new("RGB", (40, 40), (30, 160, 90))
    expected_probabilities, expected_grid = Classifier(folder)(image)
    base_class = type(Classifier(folder).model.base_model)  # the folder's own code, as loaded
    for name in ("num_head_tokens", "pooling_weights"):  # its forward still needs `num_prefix_tokens`
        monkeypatch.delattr(base_class, name)
    classifier = Classifier(folder)
    assert not classifier.model_says
    probabilities, grid = classifier(image)
    np.testing.assert_allclose(grid, expected_grid, atol=1e-6)
    assert list(probabilities) == list(expected_probabilities)


def test_the_attention_picture_follows_the_patch_that_draws_the_attention(tmp_path, monkeypatch):
    """The same model, forced to another patch: the picture moves with it (it is not a fixed pattern)."""
    classifier = Classifier(str(save_model(tmp_path / "model", TINY_CONFIG)))
    model_module = sys.modules[type(classifier.model).__module__]
    for patch in (0, 63):
        monkeypatch.setattr(model_module, "eager_attention_forward", forced_attention(1 + patch))
        _, grid = classifier(Image.new("RGB", (32, 32), (90, 40, 200)))
        assert brightest_cell(overlay(Image.new("RGB", (32, 32), (128, 128, 128)), grid), 8) == patch


def test_the_space_pins_are_the_versions_tested_here():
    """The Space installs exactly these; the README's test command and .ci/run install them here as constraints."""
    if importlib.util.find_spec("gradio") is None:  # found, not imported: the versions are read from metadata
        pytest.skip("the demo extra is not installed: pip install -e '.[demo]'")
    installed = {package: importlib.metadata.version(package).split("+")[0] for package in pinned_requirements()}
    assert installed == pinned_requirements()


def test_demo_errors_are_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    demo = load_script("demo")
    assert demo.run_cli(demo.main, [str(tmp_path / "no-such-run")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert demo.run_cli(demo.main, ["runs/x", "--prot", "8080"]) == 2
    assert "--port" in capsys.readouterr().err
    run_dir = make_run_folder(tmp_path / "run")
    capsys.readouterr()
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    assert demo.run_cli(demo.main, [str(run_dir)]) == 2
    assert capsys.readouterr().err == "error: the demo needs Gradio: pip install -e '.[demo]'\n"


def test_a_bad_port_is_one_line_naming_the_flag(tmp_path, capsys):
    demo, run_dir = load_script("demo"), make_run_folder(tmp_path / "run")
    capsys.readouterr()  # what saving the run printed
    status = demo.run_cli(demo.main, [str(run_dir), "--port", "99999"])
    assert (status, capsys.readouterr().err) == (2, "error: --port must be between 1 and 65535, got 99999\n")


@pytest.mark.slow  # the script in a fresh interpreter, as a user runs it: gradio meets the port
def test_a_busy_port_is_one_line_naming_the_flag(tmp_path):
    demo = [sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), str(make_run_folder(tmp_path / "run"))]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([*demo, "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert (
        result.stderr.startswith(f"error: --port {port}: cannot serve there")
        and "GRADIO_SERVER_PORT" not in result.stderr
    )


def serve(command, cwd, log_path, timeout=180):
    """Start `command` (which serves the app on the port it names) and return (process, URL) once it answers."""
    port = command[command.index("--port") + 1]
    environment = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    environment.pop("PYTHONPATH", None)
    log = open(log_path, "w")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{Path(log_path).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail(f"the app did not answer within {timeout} s:\n{Path(log_path).read_text()[-3000:]}")


def answer(driver, previous=None, timeout=60):
    """The probability table's rows as (label, probability), or its message, once it differs from `previous`."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    element(driver, "#probabilities")

    def read(_):  # a new message, or a new table once its rows are drawn (its text may come first); the page may
        # redraw the table while it is read, so it is found again at each try
        table = driver.find_element(By.CSS_SELECTOR, "#probabilities")
        text = table.text.strip()
        if not text or table.text == previous:
            return False
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
        if not rows:
            return False if text.startswith("rank") else table.text
        cells = [row.find_elements(By.TAG_NAME, "td") for row in rows]
        return [(row[1].text, float(row[2].text)) for row in cells]

    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(read)


def element(driver, css, timeout=60):
    """The element `css` selects, once the page has rendered it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def classify(driver, path=None, previous=None):
    """Upload `path` (or keep the image already there) and click Classify; return the answer."""
    if path is not None:
        element(driver, "#image input[type=file]").send_keys(str(path))
    element(driver, "#classify").click()
    return answer(driver, previous)


def predicted(model, path):
    """`scripts/predict.py`'s top-1 label and probability for the image file `path`."""
    top = load_script("predict").main([str(model), str(path), "--top_k", "1"])[0][0]
    return top["label"], top["score"]


def photo(path, seed, size=(57, 43)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.browser
@pytest.mark.slow
def test_the_demo_in_a_real_browser(browser, tmp_path):
    """Upload, classify, compare with predict.py; click an example; a broken file gets a message and the next upload
    works. `VTLM_DEMO_MODEL` runs it on another saved model (a trained one, for the README's screenshot), and
    `VTLM_DEMO_SCREENSHOT` saves the page, as it shows the first example's answer, there too."""
    model = Path(os.environ.get("VTLM_DEMO_MODEL") or make_run_folder(tmp_path / "run"))
    process, url = serve(
        [sys.executable, "scripts/demo.py", str(model), "--port", str(free_port())], REPO_ROOT, tmp_path / "app.log"
    )
    try:
        browser.get(url)
        image = photo(tmp_path / "photo.png", seed=1)
        first = classify(browser, image)
        label, probability = predicted(model, image)
        assert first[0][0] == label and first[0][1] == pytest.approx(probability, abs=1e-4)
        assert len(first) == 5 and [p for _, p in first] == sorted((p for _, p in first), reverse=True)

        from selenium.webdriver.common.by import By

        examples = browser.find_elements(By.CSS_SELECTOR, "button.gallery-item")
        assert len(examples) == len(list((model / "examples").glob("*.png"))) > 0
        thumbnail = examples[0].find_element(By.TAG_NAME, "img").size
        assert thumbnail["width"] >= 96 and thumbnail["height"] >= 96  # not the images' own 32 px
        examples[0].click()  # classifies it at once: no Classify press
        from_example = answer(browser, previous=browser.find_element(By.ID, "probabilities").text)
        label, probability = predicted(model, sorted((model / "examples").glob("*.png"))[0])
        assert from_example[0][0] == label and from_example[0][1] == pytest.approx(probability, abs=1e-4)
        assert element(browser, "#attention img").get_attribute("src")
        browser.save_screenshot(str(tmp_path / "demo.png"))
        if screenshot := os.environ.get("VTLM_DEMO_SCREENSHOT"):
            shutil.copyfile(tmp_path / "demo.png", screenshot)

        broken = tmp_path / "broken.png"
        broken.write_bytes(photo(tmp_path / "whole.png", seed=2).read_bytes()[:150])
        message = classify(browser, broken)
        assert message == "Could not classify this file: the image could not be decoded (image file is truncated)"
        again = classify(browser, image, previous=message)
        assert again == first
        not_an_image = tmp_path / "notes.png"  # a file named as an image, which the page uploads
        not_an_image.write_text("not an image")
        message = classify(browser, not_an_image, previous=browser.find_element(By.ID, "probabilities").text)
        assert message == "Could not classify this file: the bytes are not in any image format PIL can read"
        assert process.poll() is None  # still serving
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.browser
@pytest.mark.slow
def test_the_published_space_runs_on_its_own(browser, hub, tmp_path):
    """The Space folder that publishing uploads, started alone in a process where the project's packages cannot be
    imported, with a local model folder standing in for the repo id: the same answer as predict.py."""
    from vtlm.training.hub import publish_run

    run_dir = make_run_folder(tmp_path / "run")
    publish_run(run_dir, hub_model_id="someone/vtlm-tiny", token="hf_fake", space_id="someone/vtlm-demo")
    space_dir = tmp_path / "space"
    for path, data in hub.files[("someone/vtlm-demo", "main")].items():
        (space_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (space_dir / path).write_bytes(data)
    launcher = space_dir / "launch_without_vtlm.py"  # blocks every package of the project, then runs app.py
    launcher.write_text(
        _BLOCK_MODELING
        + "sys.modules['endpoint'] = sys.modules['space'] = sys.modules['scripts'] = None\nimport runpy\n"
        + "runpy.run_path('app.py', run_name='__main__')\n"
    )
    process, url = serve(
        [sys.executable, launcher.name, str(run_dir), "--port", str(free_port())], space_dir, tmp_path / "space.log"
    )
    try:
        browser.get(url)
        image = photo(tmp_path / "photo.png", seed=3)
        top = classify(browser, image)[0]
        label, probability = predicted(run_dir, image)
        assert top[0] == label and top[1] == pytest.approx(probability, abs=1e-4)
    finally:
        process.terminate()
        process.wait(timeout=30)
