"""The Inference Toolkit (the server inside Inference Endpoints' PyTorch containers) serves a published folder.

It starts as the container starts it (`../shared/clients/README.md`): the toolkit with its container's pins in an
environment of its own (`VTLM_TOOLKIT_PYTHON`, which `.ci/run` makes), then `pip install -r requirements.txt` from the
model folder, then uvicorn with `HF_MODEL_DIR`. Both folders a user publishes are served: the custom-code model and
its export to the built-in ViT, each with the endpoint files that publishing adds. Answers over HTTP are compared with
`scripts/predict.py`'s on the same images.
"""

import base64
import io
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import REPO_ROOT, free_port, predict_top, save_tiny_model
from PIL import Image

from vtlm.training.export import export_model
from vtlm.training.hub import add_endpoint_files

TOOLKIT_PYTHON = os.environ.get("VTLM_TOOLKIT_PYTHON")
if not (TOOLKIT_PYTHON and os.path.isfile(TOOLKIT_PYTHON)):
    reason = "no Inference Toolkit environment: VTLM_TOOLKIT_PYTHON (made by .ci/run from ../shared/clients/)"
    if os.environ.get("VTLM_REQUIRE_TOOLKIT"):
        pytest.fail(reason, pytrace=False)
    pytestmark = pytest.mark.skip(reason=reason)

START_TIMEOUT_S = 180
# What the container image has before it installs a model's requirements, as .ci/run installed it.
CONTAINER_PINS = ["-r", str(REPO_ROOT / "tests" / "toolkit-requirements.txt")]


def post(port, body, content_type):
    """The server's status and decoded JSON answer to a POST of `body` to `/`."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def png_bytes(seed):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The two folders a user publishes (`publish_run`, `publish_vit_export`): a tiny custom-code model and its exact
    built-in ViT export, each with the endpoint's handler and requirements, and the container's environment with
    those requirements installed."""
    root = tmp_path_factory.mktemp("published")
    save_tiny_model(root / "custom")
    export_model(root / "custom", root / "vit", ("vit",))
    for folder in (root / "custom", root / "vit"):
        add_endpoint_files(folder)
    # Both folders ship the same requirements.txt, so one fresh container serves for both: its pins first (a
    # previous run of this module moved them), then the folder's requirements, as the entrypoint installs them.
    requirements = {(root / layout / "requirements.txt").read_text() for layout in ("custom", "vit")}
    assert len(requirements) == 1, "the folders' requirements differ: each needs a container of its own"
    for arguments in (CONTAINER_PINS, ["-r", str(root / "custom" / "requirements.txt")]):
        install = subprocess.run(
            [TOOLKIT_PYTHON, "-m", "pip", "install", "--quiet", *arguments],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert install.returncode == 0, install.stderr[-3000:]
    return root


def serve(folder, log_path):
    """Start the toolkit on `folder` as the container's entrypoint does (after the installs of `published`), and
    return the process and its port once it answers."""
    port = free_port()
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(folder.parent),
        "HF_HOME": str(folder.parent / "hf-home"),
        "HF_MODEL_DIR": str(folder),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    log = open(log_path, "w")  # noqa: SIM115 (closed with the process, by the caller)
    command = ["-m", "uvicorn", "huggingface_inference_toolkit.webservice_starlette:app", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [TOOLKIT_PYTHON, *command, "--port", str(port)], env=environment, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise AssertionError(f"the toolkit exited with {server.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, port, log
        except OSError:
            assert time.monotonic() < deadline, f"no answer within {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.5)


@pytest.mark.slow  # installs requirements and starts a server in another environment
@pytest.mark.parametrize("layout", ["custom", "vit"])
def test_the_toolkit_serves_the_published_folder_as_predict_does(published, layout, tmp_path):
    folder = published / layout
    images = [png_bytes(seed) for seed in range(3)]
    paths = []
    for index, image in enumerate(images):
        paths.append(tmp_path / f"{index}.png")
        paths[-1].write_bytes(image)
    expected = predict_top(folder, paths)

    server, port, log = serve(folder, tmp_path / "server.log")
    try:
        encoded = [base64.b64encode(image).decode() for image in images]
        status, one = post(
            port, json.dumps({"inputs": encoded[0], "parameters": {"top_k": 3}}).encode(), "application/json"
        )
        assert status == 200, one
        status, many = post(
            port, json.dumps({"inputs": encoded, "parameters": {"top_k": 3}}).encode(), "application/json"
        )
        assert status == 200, many
        status, raw = post(port, images[1], "image/png")
        assert status == 200, raw
        answers = [one, *many, raw[:3]]
        for answer, reference in zip(answers, [expected[0], *expected, expected[1]], strict=True):
            assert [item["label"] for item in answer] == [label for label, _ in reference]
            np.testing.assert_allclose([item["score"] for item in answer], [score for _, score in reference], atol=1e-4)

        status, error = post(port, json.dumps({"inputs": "not an image"}).encode(), "application/json")
        assert status == 400 and "base64" in json.dumps(error).lower()
        status, _ = post(
            port, json.dumps({"inputs": encoded[2], "parameters": {"top_k": 3}}).encode(), "application/json"
        )
        assert status == 200  # still serving after a bad request
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    started = (tmp_path / "server.log").read_text()
    assert "Found custom pipeline at" in started and "handler.py" in started
