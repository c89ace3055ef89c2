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


def load_and_predict(folder, pixels):
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
    return {
        "logits": logits.tolist(), "pooled": pooled.tolist(), "tuple_logits": tuple_logits.tolist(), "top": top,
        "bad_override": bad_override,
    }


pixels = torch.load(sys.argv[1])
results = {folder: load_and_predict(folder, pixels) for folder in sys.argv[2:]}
print("RESULT" + json.dumps({"version": transformers.__version__, "folders": results}))
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


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each architecture as a tiny saved folder, with the model that saved it, and the pixels every test feeds."""
    root = tmp_path_factory.mktemp("saved")
    models = {}
    for name, overrides in ARCHITECTURES.items():
        torch.manual_seed(0)
        model = VTLMForImageClassification(VTLMConfig(**TINY_CONFIG, **overrides)).train()
        with torch.no_grad():  # move any BatchNorm statistics away from their init, so that a lost one would show
            model(2 + 3 * torch.randn(8, 3, 32, 32))
        models[name] = model.eval()
        model.save_pretrained(root / name)
        build_image_processor().save_pretrained(root / name)
    torch.save(torch.randn(2, 3, 32, 32), root / "pixels.pt")
    return root, models


@pytest.fixture(scope="module")
def loaded(saved, request):
    """What a fresh interpreter without this repository computes from every saved folder, under each transformers:
    one interpreter per version (each costs an import of torch and transformers), by the folder's name."""
    root, _ = saved
    results = {}

    def under(transformers_version):
        if transformers_version not in results:
            legacy = request.getfixturevalue("legacy_transformers") if transformers_version == "4.57" else None
            folders = [root / name for name in ARCHITECTURES]
            run = run_without_modeling(LOAD_AND_PREDICT, root / "pixels.pt", *folders, cwd=root, python_path=legacy)
            assert run.returncode == 0, run.stderr[-3000:]
            results[transformers_version] = json.loads(run.stdout.split("RESULT", 1)[1])
        return results[transformers_version]

    return under


@pytest.mark.slow  # pip-installs transformers 4.57 once per machine; subprocesses
@pytest.mark.parametrize("transformers_version", ["4.57", "installed"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_saved_folder_gives_identical_logits(saved, loaded, architecture, transformers_version):
    root, models = saved
    model, folder = models[architecture], root / architecture
    # Built on PIL, saved by the name every client knows (transformers 4.57 has no `ViTImageProcessorPil`).
    processor_type = json.loads((folder / "preprocessor_config.json").read_text())["image_processor_type"]
    assert processor_type == "ViTImageProcessor"
    run = loaded(transformers_version)
    assert run["version"].startswith("4.57." if transformers_version == "4.57" else transformers.__version__)
    result = run["folders"][str(folder)]
    pixels = torch.load(root / "pixels.pt")
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(result["logits"]), model(pixels).logits, atol=0, rtol=0)
        torch.testing.assert_close(torch.tensor(result["pooled"]), model.vtlm(pixels).pooler_output, atol=0, rtol=0)
    assert result["tuple_logits"] == result["logits"]  # return_dict=False: the same logits, in a tuple
    assert all(prediction["label"] in model.config.label2id for prediction in result["top"])
    assert "num_attention_heads (5)" in result["bad_override"]
