"""The annealed neighbourhood attention bias (`--locality_bias`, `training/locality.py`): what it adds, when, and that
the trained model never carries it."""

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import TINY_CONFIG, TINY_DHVT, TINY_RUN, load_script
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

from vtlm.modeling import VTLMConfig, VTLMForImageClassification, modeling_vtlm
from vtlm.training.arguments import ModelArguments
from vtlm.training.export import to_vit
from vtlm.training.locality import LocalityBias

TINY_CONV = {"patch_embedding_type": "conv", "num_conv_layers": 2, "conv_hidden_size": 8, "use_cls_token": False,
             "pooling": "sequence"}  # fmt: skip
LAYOUTS = {"patchify": {}, "conv": TINY_CONV, "dhvt": TINY_DHVT}


def tiny_model(attn_implementation="sdpa", **overrides):
    torch.manual_seed(0)
    config = VTLMConfig(**{**TINY_CONFIG, **overrides})
    return AutoModelForImageClassification.from_config(config, attn_implementation=attn_implementation).eval()


def pixels(batch_size=4):
    return torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_the_bias_falls_linearly_to_exactly_zero_at_its_fraction_and_stays_there():
    bias = LocalityBias(tiny_model(), strength=5.0, fraction=0.3)
    assert bias.scale(0, 1000) == 5.0
    assert bias.scale(150, 1000) == pytest.approx(2.5)
    assert [bias.scale(step, 1000) for step in (300, 301, 999)] == [0.0, 0.0, 0.0]
    scales = [bias.scale(step, 1000) for step in range(300)]
    assert scales == sorted(scales, reverse=True) and min(scales) > 0


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_the_bias_exists_only_inside_its_block_and_sdpa_and_eager_agree(layout):
    """In every layout with a token grid (the conv tokenizer's without CLS, DHVT's with head tokens), both attention
    paths add the same bias; outside the block the model is exactly itself."""
    images = pixels()
    models = {name: tiny_model(name, **layout) for name in ("sdpa", "eager")}
    plain = {name: model(images).logits for name, model in models.items()}
    biased = {}
    for name, model in models.items():
        with LocalityBias(model, strength=5.0, fraction=0.3).applied(step=0, max_steps=10):
            biased[name] = model(images).logits
        assert all(module.attention_bias is None for module in model.modules() if hasattr(module, "attention_bias"))
        assert torch.equal(model(images).logits, plain[name])
    torch.testing.assert_close(biased["sdpa"], biased["eager"], atol=1e-5, rtol=1e-5)
    # It changed the model while it lasted (little: a fresh model's output hardly depends on its attention).
    assert (biased["sdpa"] - plain["sdpa"]).abs().max() > 1e-6
    with LocalityBias(models["sdpa"], strength=5.0, fraction=0.3).applied(step=3, max_steps=10):  # 0 from step 3
        assert torch.equal(models["sdpa"](images).logits, plain["sdpa"])


def test_a_strong_bias_points_each_head_at_its_neighbour():
    """The bias sits where impulse initialisation's map puts its peaks: patch tokens, not the CLS token."""
    model = tiny_model("eager")
    plain = model(pixels(), output_attentions=True).attentions[0]
    with LocalityBias(model, strength=30.0, fraction=1.0).applied(step=0, max_steps=1):
        attention = model(pixels(), output_attentions=True).attentions[0]  # (B, heads, 65, 65)
    maps = modeling_vtlm.neighbour_map(8, TINY_CONFIG["num_attention_heads"])
    on_neighbour = (attention[:, :, 1:, 1:] * maps).sum(dim=-1)  # (B, heads, 64)
    has_neighbour = maps.sum(dim=-1) > 0
    assert on_neighbour[:, has_neighbour].min() > 0.99
    torch.testing.assert_close(attention[:, :, 0], plain[:, :, 0])  # the CLS token's row has no bias


def test_the_trained_model_is_a_plain_vit_that_saves_loads_and_exports_exactly(tmp_path):
    """Train a few steps under the bias; the model afterwards is the same with or without it, after from_pretrained,
    and as transformers' built-in ViT (logit difference 0)."""
    model = tiny_model()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    bias = LocalityBias(model, strength=5.0, fraction=1.0)
    for step in range(3):
        with bias.applied(step, max_steps=4):
            loss = model(pixels(), labels=torch.arange(4)).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(tmp_path)
    images = pixels(8)
    with torch.no_grad():
        logits = model(images).logits
        loaded = VTLMForImageClassification.from_pretrained(tmp_path).eval()
        assert torch.equal(loaded(images).logits, logits)
        assert torch.equal(to_vit(loaded).eval()(images).logits, logits)
    assert "locality" not in (tmp_path / "config.json").read_text()


def test_flash_attention_which_takes_no_bias_is_refused():
    model = tiny_model()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="cannot take: train with 'sdpa' or 'eager'"):
        LocalityBias(model, strength=5.0, fraction=0.3)


@pytest.mark.parametrize(
    "flags, message",
    [({"locality_bias": -1.0}, "--locality_bias must be >= 0"), ({"locality_bias_fraction": 0.0}, "in \\(0, 1\\]")],
)
def test_bad_values_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        ModelArguments(**flags)


@pytest.mark.slow  # a training run of its own
def test_train_py_applies_the_bias_to_its_training_steps_and_records_it(cifar100_dir, tmp_path):
    """Wired through scripts/train.py: every training step enters the bias with its own step, the run's record and
    card show it, and the saved config and code are those of a run without it."""
    output_dir = tmp_path / "run"
    entered = []
    applied = LocalityBias.applied

    def spy(self, step, max_steps):
        entered.append((step, max_steps, self.scale(step, max_steps)))
        return applied(self, step, max_steps)

    with mock.patch.object(LocalityBias, "applied", spy):
        load_script("train").main(
            [f"--dataset_name={cifar100_dir}", "--validation_split_size=100", "--num_train_epochs=1"]
            + TINY_RUN
            + ["--locality_bias=5", "--locality_bias_fraction=0.5", f"--output_dir={output_dir}"]
        )
    max_steps = entered[0][1]
    assert [step for step, _, _ in entered] == list(range(max_steps))
    assert entered[0][2] == 5.0 and entered[-1][2] == 0.0
    recorded = json.loads((output_dir / "run_info.json").read_text())["model_arguments"]
    assert (recorded["locality_bias"], recorded["locality_bias_fraction"]) == (5.0, 0.5)
    assert "| `locality_bias` | 5.0 |" in (output_dir / "README.md").read_text()
    assert "locality" not in (output_dir / "config.json").read_text()
    assert (output_dir / "modeling_vtlm.py").read_text() == Path(modeling_vtlm.__file__).read_text()
    assert set(load_file(output_dir / "model.safetensors")) == set(tiny_model().state_dict())
