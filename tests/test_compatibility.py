"""The shipped code runs under the user's transformers: a saved folder gives identical logits under 4.57 and 5.x.

Each folder is loaded with `trust_remote_code=True` in a subprocess that cannot import `modeling`, under this
environment's transformers and under 4.57 (the last 4.x), which is installed from PyPI into a folder of its own, once
per machine, and put in front of this environment's packages.
"""

import json

import pytest
import torch
import transformers
from conftest import TINY_CONFIG, run_without_modeling

from vtlm.modeling import VTLMConfig, VTLMForImageClassification, build_image_processor

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
    (tuple_logits,) = model(pixels, return_dict=False)
top = pipeline("image-classification", model=folder, trust_remote_code=True)(Image.new("RGB", (40, 20)), top_k=2)
try:  # an override that cannot build a model
    AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True, num_attention_heads=5)
    bad_override = None
except ValueError as error:
    bad_override = str(error)
print("RESULT" + json.dumps({
    "version": transformers.__version__, "logits": logits.tolist(), "pooled": pooled.tolist(),
    "tuple_logits": tuple_logits.tolist(), "top": top, "bad_override": bad_override,
}))
"""


# The original model's architecture; CCT's ideas together: a conv tokenizer, no CLS token, sequence pooling, CCT's
# blocks; and DHVT's: SOPE without positions, DAFF and head tokens, whose BatchNorm statistics must load with the
# weights.
ARCHITECTURES = {
    "original": {},
    "cct": {
        "patch_embedding_type": "conv",
        "num_conv_layers": 2,
        "conv_hidden_size": 8,
        "use_cls_token": False,
        "pooling": "sequence",
        "layer_norm_layout": "cct",
        "qkv_bias": False,
    },
    "dhvt": {
        "patch_embedding_type": "sope",
        "use_position_embeddings": False,
        "feed_forward_type": "daff",
        "use_head_tokens": True,
    },
}


@pytest.mark.slow  # pip-installs transformers 4.57 once per machine; subprocesses
@pytest.mark.parametrize("transformers_version", ["4.57", "installed"])
@pytest.mark.parametrize("overrides", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
def test_saved_folder_gives_identical_logits(tmp_path, request, overrides, transformers_version):
    torch.manual_seed(0)
    model = VTLMForImageClassification(VTLMConfig(**TINY_CONFIG, **overrides)).train()
    with torch.no_grad():  # move any BatchNorm statistics away from their init, so that a lost one would show
        model(2 + 3 * torch.randn(8, 3, 32, 32))
    model.eval()
    model.save_pretrained(tmp_path / "model")
    build_image_processor().save_pretrained(tmp_path / "model")
    # Built on PIL, saved by the name every client knows (transformers 4.57 has no `ViTImageProcessorPil`).
    processor_type = json.loads((tmp_path / "model" / "preprocessor_config.json").read_text())["image_processor_type"]
    assert processor_type == "ViTImageProcessor"
    pixels = torch.randn(2, 3, 32, 32)
    torch.save(pixels, tmp_path / "pixels.pt")

    legacy = request.getfixturevalue("legacy_transformers") if transformers_version == "4.57" else None
    run = run_without_modeling(
        LOAD_AND_PREDICT, tmp_path / "model", tmp_path / "pixels.pt", cwd=tmp_path, python_path=legacy
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT", 1)[1])
    expected_version = "4.57." if legacy else transformers.__version__
    assert result["version"].startswith(expected_version)
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(result["logits"]), model(pixels).logits, atol=0, rtol=0)
        torch.testing.assert_close(torch.tensor(result["pooled"]), model.vtlm(pixels).pooler_output, atol=0, rtol=0)
    assert result["tuple_logits"] == result["logits"]  # return_dict=False: the same logits, in a tuple
    assert all(prediction["label"] in model.config.label2id for prediction in result["top"])
    assert "num_attention_heads (5)" in result["bad_override"]
