"""The shipped code runs under the user's transformers: a saved folder gives identical logits under 4.57 and 5.x.

transformers 4.57 (the last 4.x) is installed from PyPI into a folder of its own, once per machine, and put in front
of this environment's packages in a subprocess that cannot import `modeling`.
"""

import json
import subprocess
import sys

import pytest
import torch
from conftest import run_without_modeling, save_tiny_model

LEGACY_REQUIREMENTS = ["transformers==4.57.*", "huggingface_hub>=0.34,<1.0", "tokenizers>=0.22,<=0.23"]

LOAD_AND_PREDICT = """
import json, sys
import torch, transformers
from PIL import Image
from transformers import AutoModel, AutoModelForImageClassification, pipeline

folder, pixels_file = sys.argv[1], sys.argv[2]
pixels = torch.load(pixels_file)
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits, pooled = model(pixels).logits, base(pixels).pooler_output
top = pipeline("image-classification", model=folder, trust_remote_code=True)(Image.new("RGB", (40, 20)), top_k=2)
print("RESULT" + json.dumps({
    "version": transformers.__version__, "logits": logits.tolist(), "pooled": pooled.tolist(), "top": top
}))
"""


@pytest.fixture(scope="session")
def legacy_transformers(pytestconfig):
    """A folder holding transformers 4.57 and the hub client it needs, installed with pip on first use."""
    target = pytestconfig.cache.mkdir("transformers-4.57")
    if not (target / "transformers").is_dir():
        install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
        subprocess.run(install + LEGACY_REQUIREMENTS, check=True, capture_output=True, timeout=600)
    return target


def test_saved_folder_gives_identical_logits_under_transformers_4_57(tmp_path, legacy_transformers):
    model = save_tiny_model(tmp_path / "model")
    pixels = torch.randn(2, 3, 32, 32)
    torch.save(pixels, tmp_path / "pixels.pt")

    run = run_without_modeling(
        LOAD_AND_PREDICT, tmp_path / "model", tmp_path / "pixels.pt", cwd=tmp_path, python_path=legacy_transformers
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT", 1)[1])
    assert result["version"].startswith("4.57.")
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(result["logits"]), model(pixels).logits, atol=0, rtol=0)
        torch.testing.assert_close(torch.tensor(result["pooled"]), model.vtlm(pixels).pooler_output, atol=0, rtol=0)
    assert all(prediction["label"] in model.config.label2id for prediction in result["top"])
