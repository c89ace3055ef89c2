"""Model tests in the style of transformers' model tests, on a tiny config (hidden 32, 2 layers, 4 heads, MLP 37)."""

import json
import os
import textwrap

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, TINY_DHVT, run_without_modeling, save_tiny_model
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, pipeline

from vtlm.modeling import (
    CIFAR100_LABELS,
    PRESETS,
    VTLMConfig,
    VTLMForImageClassification,
    VTLMModel,
    build_image_processor,
    configuration_vtlm,
    modeling_vtlm,
)

# A conv tokenizer of two blocks, 3 -> 8 -> 32 channels and 32 -> 16 -> 8 pixels: 64 tokens, as patchify gives.
TINY_CONV = {"patch_embedding_type": "conv", "num_conv_layers": 2, "conv_hidden_size": 8}
# Tiny versions of every tokenizer, CLS token, pooling, attention, feed-forward and block layout (DHVT's parts alone
# and together), with the sequence length each must give. test_dhvt.py tests what only DHVT's parts do.
VARIANTS = {
    "original": ({}, 65),
    "mean": ({"pooling": "mean"}, 65),
    "no-cls-mean": ({"use_cls_token": False, "pooling": "mean"}, 64),
    "cls-sequence": ({"pooling": "sequence"}, 65),
    "conv-cls": (TINY_CONV, 65),
    "vtlm-37m-conv": ({**PRESETS["vtlm-37m-conv"], **TINY_CONFIG, "conv_hidden_size": 8}, 64),
    "vtlm-cct-7-3x1": ({**PRESETS["vtlm-cct-7-3x1"], **TINY_CONFIG}, 256),  # one conv block: 32 -> 16 pixels
    "sope": ({"patch_embedding_type": "sope"}, 65),
    "daff": ({"feed_forward_type": "daff"}, 65),
    "head-tokens": ({"use_head_tokens": True}, 65),
    "dhvt-patch4": (TINY_DHVT, 65),
    "dhvt-patch2": ({**TINY_DHVT, "patch_size": 2}, 257),  # 16 x 16 patches
    "dhvt-cct-layout": ({**TINY_DHVT, "layer_norm_layout": "cct", "qkv_bias": False}, 65),
}
variants = pytest.mark.parametrize(("overrides", "sequence_length"), VARIANTS.values(), ids=VARIANTS.keys())


def tiny_model(**overrides):
    torch.manual_seed(0)
    return VTLMForImageClassification(VTLMConfig(**{**TINY_CONFIG, **overrides}))


def pixels(batch_size=3, seed=0):
    return torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny classifier saved with its image processor, as training leaves it."""
    folder = tmp_path_factory.mktemp("tiny-vtlm")
    return folder, save_tiny_model(folder)


# --- parameter counts: the original model's architecture, exactly ---


@pytest.mark.parametrize(
    ("preset", "expected"),
    # 37,939,812 and 14,279,140 are the original model's own counts; 4,794,212 is the same layout at 256/6/8.
    # 3,783,269 is the count of `cct_7_3x1_32_c100` in CCT's reference code (SHI-Labs/Compact-Transformers).
    # 38,210,853 is derived below. 5,845,162 and 23,425,450 are the counts of `dhvt_tiny_cifar_patch2` and
    # `dhvt_small_cifar_patch4` in DHVT's reference code (ArieSeirack/DHVT), 100 labels, BatchNorm's running
    # statistics not counted (buffers).
    [
        ("vtlm-37m", 37_939_812),
        ("vtlm-14m", 14_279_140),
        ("vtlm-5m", 4_794_212),
        ("vtlm-cct-7-3x1", 3_783_269),
        ("vtlm-37m-conv", 38_210_853),
        ("vtlm-dhvt-t2", 5_845_162),
        ("vtlm-dhvt-s4", 23_425_450),
    ],
)
def test_preset_parameter_counts(preset, expected):
    with torch.device("meta"):
        model = VTLMForImageClassification(VTLMConfig.from_preset(preset))
    assert model.num_parameters() == expected


def test_parameter_count_matches_layout_formula(tiny_config):
    """Derive the count from the original layout by hand, so a missing or extra layer on any config is caught."""
    d, layers, mlp, labels = 32, 2, 37, 100
    patch = 3 * 4 * 4 * d + d
    tokens = d + 65 * d  # CLS token and positions for 64 patches + CLS
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    expected = patch + tokens + layers * block + 2 * d + d * labels + labels
    assert VTLMForImageClassification(tiny_config).num_parameters() == expected


def test_conv_preset_parameter_count_matches_layout_formula():
    """vtlm-37m-conv: the original model's blocks, a two-block conv tokenizer, no CLS token, sequence pooling."""
    d, layers, mlp, labels = 512, 12, 2048, 100
    tokenizer = 3 * 64 * 3 * 3 + 64 * d * 3 * 3  # two 3x3 convs without bias: 3 -> 64 -> d channels
    positions = 8 * 8 * d  # 32 -> 16 -> 8 pixels: 64 tokens and no CLS token
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    sequence_pooling = d + 1
    expected = tokenizer + positions + layers * block + 2 * d + sequence_pooling + d * labels + labels
    with torch.device("meta"):
        model = VTLMForImageClassification(VTLMConfig.from_preset("vtlm-37m-conv"))
    assert model.num_parameters() == expected == 38_210_853


def test_cct_preset_is_the_reference_architecture():
    config = VTLMConfig.from_preset("vtlm-cct-7-3x1")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (256, 7, 4)
    assert (config.intermediate_size, config.num_patches, config.sequence_length) == (512, 256, 256)
    model = VTLMForImageClassification(config)
    (conv,) = model.vtlm.embeddings.patch_embeddings.convs
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
        3, 256, (3, 3), (1, 1), (1, 1)
    )  # fmt: skip
    assert conv.bias is None and model.vtlm.embeddings.cls_token is None
    layer = model.vtlm.encoder.layer[0]
    assert layer.attention.qkv.bias is None and layer.norm1.eps == 1e-5
    assert model.vtlm.sequence_pooling is not None


# --- config ---


def test_default_labels_are_cifar100_with_crab():
    config = VTLMConfig()
    assert config.num_labels == 100
    assert config.id2label[26] == "crab"
    assert [config.id2label[i] for i in range(100)] == list(CIFAR100_LABELS)
    assert config.label2id["worm"] == 99


def test_from_preset_applies_overrides():
    config = VTLMConfig.from_preset("vtlm-14m", drop_path_rate=0.1, num_labels=10)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 8, 12)
    assert config.drop_path_rate == 0.1
    assert config.num_labels == 10


@pytest.mark.parametrize(
    ("table", "field", "values"),
    [
        (modeling_vtlm.PATCH_EMBEDDING_CLASSES, "patch_embedding_type", configuration_vtlm.PATCH_EMBEDDING_TYPES),
        (modeling_vtlm.ATTENTION_CLASSES, "use_head_tokens", (False, True)),
        (modeling_vtlm.FEED_FORWARD_CLASSES, "feed_forward_type", configuration_vtlm.FEED_FORWARD_TYPES),
        (modeling_vtlm.LAYER_CLASSES, "layer_norm_layout", configuration_vtlm.LAYER_NORM_LAYOUTS),
    ],
)
def test_each_part_table_has_a_class_for_every_value_the_config_allows(table, field, values):
    assert set(table) == set(values)
    for value, part_class in table.items():
        model = tiny_model(**{**VARIANTS["dhvt-patch4"][0], field: value})
        assert any(type(module) is part_class for module in model.modules()), (field, value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
        ({"image_size": 30}, "image_size"),
        ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob"),
        ({"attention_probs_dropout_prob": -0.1}, "attention_probs_dropout_prob"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"pooling": "max"}, "pooling"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_hidden_layers": -1}, "num_hidden_layers"),
        ({"intermediate_size": 2.5}, "intermediate_size"),
        ({"patch_size": 0}, "patch_size"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
        ({"hidden_act": "swishy"}, "hidden_act"),
        ({"qkv_bias": "yes"}, "qkv_bias"),
        ({"pooling": "attention"}, "pooling"),
        ({"patch_embedding_type": "hybrid"}, "patch_embedding_type"),
        ({"num_conv_layers": 0}, "num_conv_layers"),
        ({"conv_kernel_size": 4}, "conv_kernel_size"),
        ({"conv_hidden_size": -8}, "conv_hidden_size"),
        ({"use_cls_token": 0}, "use_cls_token"),
        ({"use_cls_token": False}, "use_cls_token"),  # pooling "cls" needs the CLS token
        ({"layer_norm_layout": "post_norm"}, "layer_norm_layout"),
        ({"position_initializer_range": 0.0}, "position_initializer_range"),
    ],
)
def test_config_validation_names_field_and_value(overrides, field):
    with pytest.raises(ValueError, match=field) as error:
        VTLMConfig(**{**TINY_CONFIG, **overrides})
    assert repr(next(iter(overrides.values())))[:3] in str(error.value)


def test_patch_size_need_not_divide_the_image_for_the_conv_tokenizer():
    assert VTLMConfig(**TINY_CONFIG, **TINY_CONV, image_size=30).num_patches == 8 * 8  # 30 -> 15 -> 8


@pytest.mark.parametrize(
    "overrides",
    [{}, {"patch_size": 8, "use_cls_token": False, "pooling": "mean"}, TINY_CONV, {**TINY_CONV, "image_size": 30}],
)
def test_num_patches_and_sequence_length_count_the_tokens_the_model_makes(overrides):
    config = VTLMConfig(**{**TINY_CONFIG, **overrides})
    model = VTLMModel(config)
    pixels = torch.zeros(1, 3, config.image_size, config.image_size)
    side = model.embeddings.patch_embeddings(pixels).shape[-1]
    assert config.num_patches == side**2
    assert config.sequence_length == model(pixels).last_hidden_state.shape[1]


def test_invalid_fields_are_caught_wherever_a_model_is_built(saved_model):
    folder, _ = saved_model
    with pytest.raises(ValueError, match="num_attention_heads"):
        AutoModelForImageClassification.from_pretrained(folder, num_attention_heads=5)
    with pytest.raises(ValueError, match="hidden_size"):
        AutoConfig.from_pretrained(folder, hidden_size=-1)
    with pytest.raises(ValueError, match="pooling"):
        AutoModel.from_pretrained(folder, pooling="max")
    config = VTLMConfig(**TINY_CONFIG)
    config.use_cls_token = False  # an edit after construction, which pooling "cls" cannot read
    with pytest.raises(ValueError, match="use_cls_token"):
        VTLMForImageClassification(config)


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="vtlm-37m"):
        VTLMConfig.from_preset("vtlm-1b")


# --- forward, loss, gradients ---


@variants
def test_output_shapes_with_and_without_labels(overrides, sequence_length):
    model = tiny_model(**overrides).eval()  # attention dropout would rescale the probabilities
    outputs = model(pixels(), output_hidden_states=True, output_attentions=True)
    assert outputs.loss is None
    assert outputs.logits.shape == (3, 100)
    assert len(outputs.hidden_states) == 3  # embeddings + 2 blocks
    assert outputs.hidden_states[0].shape == (3, sequence_length, 32)
    assert len(outputs.attentions) == 2
    attended = sequence_length + model.vtlm.num_head_tokens  # a head token per head joins them, after the sequence
    assert model.vtlm.num_head_tokens == (4 if overrides.get("use_head_tokens") else 0)
    assert outputs.attentions[0].shape == (3, 4, attended, attended)
    torch.testing.assert_close(outputs.attentions[0].sum(-1), torch.ones(3, 4, attended))

    outputs = model(pixels(), labels=torch.tensor([0, 5, 99]))
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    # An untrained model is near uniform: the loss is close to ln(100).
    assert abs(outputs.loss.item() - np.log(100)) < 0.5


def test_soft_labels_give_the_same_loss_as_one_hot():
    model = tiny_model().eval()
    labels = torch.tensor([0, 5, 99])
    hard = model(pixels(), labels=labels).loss
    soft = model(pixels(), labels=torch.nn.functional.one_hot(labels, 100).float()).loss
    torch.testing.assert_close(hard, soft)


@variants
def test_base_model_pooling(overrides, sequence_length):
    torch.manual_seed(0)
    config = VTLMConfig(**{**TINY_CONFIG, **overrides})
    model = VTLMModel(config).eval()
    tokens = model(pixels()).last_hidden_state  # (B, T, hidden)
    assert tokens.shape == (3, sequence_length, 32)
    patch_tokens = tokens[:, 1:] if config.use_cls_token else tokens  # (B, patches, hidden)
    if config.pooling == "cls":
        expected = tokens[:, 0]
    elif config.pooling == "mean":
        expected = patch_tokens.mean(1)
    else:  # a softmax over the patch tokens of a learned score, then the weighted sum
        score = model.sequence_pooling.score
        weights = torch.softmax(patch_tokens @ score.weight[0] + score.bias, dim=1)  # (B, patches)
        expected = torch.einsum("bt,bth->bh", weights, patch_tokens)
    torch.testing.assert_close(model(pixels()).pooler_output, expected)
    # What the model says each patch weighs in its pooled output (the demo draws it), and where the patches start.
    assert model.num_prefix_tokens == tokens.shape[1] - config.num_patches
    pooling_weights = model.pooling_weights(tokens)
    if config.pooling == "cls":
        assert pooling_weights is None
    else:
        torch.testing.assert_close(pooling_weights.sum(dim=1), torch.ones(3))
        torch.testing.assert_close(torch.einsum("bt,bth->bh", pooling_weights, patch_tokens), expected)


@pytest.mark.parametrize("layer_norm_layout", ["pre_norm", "cct"])
def test_only_the_cct_layout_normalises_the_residual_stream(layer_norm_layout):
    """With the MLP's output zeroed, a CCT block returns the normalised stream; a pre-norm block returns it as is."""
    model = tiny_model(layer_norm_layout=layer_norm_layout, hidden_dropout_prob=0.0).eval()
    layer = model.vtlm.encoder.layer[0]
    torch.nn.init.zeros_(layer.mlp.fc2.weight)
    torch.nn.init.zeros_(layer.mlp.fc2.bias)
    hidden_states = 3 + 2 * torch.randn(2, 65, 32, generator=torch.Generator().manual_seed(0))
    output, _ = layer(hidden_states)
    after_attention = hidden_states + layer.attention(layer.norm1(hidden_states))[0]
    if layer_norm_layout == "cct":
        torch.testing.assert_close(output, torch.nn.functional.layer_norm(after_attention, (32,), eps=1e-6))
    else:
        torch.testing.assert_close(output, after_attention)


def test_wrong_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match="32x32"):
        tiny_model()(torch.randn(1, 3, 64, 64))


@variants
def test_every_parameter_gets_a_gradient(overrides, sequence_length):
    model = tiny_model(**{**overrides, "drop_path_rate": 0.1})
    model.train()
    model(pixels(), labels=torch.tensor([1, 2, 3])).loss.backward()
    # The pooling score's bias shifts every token's score alike, which the softmax ignores: its gradient is zero up to
    # rounding (kept for CCT's parameter count; see VTLMSequencePooling).
    shift_invariant = {"vtlm.sequence_pooling.score.bias"}
    gradients = {name: p.grad for name, p in model.named_parameters()}
    missing = [
        name
        for name, grad in gradients.items()
        if name not in shift_invariant and (grad is None or not grad.abs().sum() > 0)
    ]
    assert missing == []
    for name in shift_invariant & gradients.keys():
        torch.testing.assert_close(gradients[name], torch.zeros_like(gradients[name]))


@variants
def test_gradient_checkpointing_gives_the_same_gradients(overrides, sequence_length):
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(**{**overrides, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        model(pixels(), labels=torch.tensor([1, 2, 3])).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert model.vtlm.encoder.layer[0].gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1])


def test_stochastic_depth_rates_rise_linearly_and_only_act_in_training():
    model = tiny_model(num_hidden_layers=3, drop_path_rate=0.2, hidden_dropout_prob=0.0)
    rates = [layer.drop_path.drop_prob for layer in model.vtlm.encoder.layer]
    assert rates == pytest.approx([0.0, 0.1, 0.2])
    model.eval()
    torch.testing.assert_close(model(pixels()).logits, model(pixels()).logits)


def test_init_follows_seed_and_vit():
    model = tiny_model()
    embeddings = model.vtlm.embeddings
    tensors = (embeddings.cls_token, embeddings.position_embeddings, embeddings.patch_embeddings.weight)
    for tensor in (*tensors, model.classifier.weight):
        assert 0.01 < tensor.std().item() < 0.03 and abs(tensor.mean().item()) < 0.01
    assert torch.all(model.classifier.bias == 0)
    norm = model.vtlm.encoder.layer[0].norm1
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


@variants
def test_init_starts_every_module_that_holds_weights(overrides, sequence_length):
    """`_init_weights` knows every kind of module with parameters or buffers of its own, in every layout."""
    model = tiny_model(**overrides)
    for name, module in model.named_modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        with torch.no_grad():
            for tensor in tensors:
                tensor.fill_(-7)
        model._init_weights(module)
        assert not any(torch.any(tensor == -7) for tensor in tensors), (
            f"{name} ({type(module).__name__}) was not initialised"
        )


def test_conv_tokenizer_and_positions_follow_cct_init():
    model = tiny_model(**TINY_CONV, position_initializer_range=0.2)
    first, second = model.vtlm.embeddings.patch_embeddings.convs
    for conv in (first, second):
        fan_in = conv.in_channels * 3 * 3
        assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.15)  # Kaiming normal, for ReLU
    assert model.vtlm.embeddings.position_embeddings.std().item() == pytest.approx(0.2, rel=0.05)
    assert model.vtlm.embeddings.cls_token.std().item() == pytest.approx(0.02, rel=0.5)  # initializer_range


def test_no_weight_decay_parameters():
    names = set(tiny_model().no_weight_decay_parameter_names())
    assert "vtlm.embeddings.cls_token" in names
    assert "vtlm.embeddings.position_embeddings" in names
    assert "vtlm.encoder.layer.0.norm1.weight" in names
    assert "vtlm.encoder.layer.0.attention.qkv.bias" in names
    assert "vtlm.encoder.layer.0.attention.qkv.weight" not in names
    assert "vtlm.embeddings.patch_embeddings.weight" not in names


def test_no_weight_decay_parameters_of_the_conv_tokenizer_and_sequence_pooling():
    model = tiny_model(**VARIANTS["vtlm-37m-conv"][0])
    names = set(model.no_weight_decay_parameter_names())
    assert {"vtlm.embeddings.position_embeddings", "vtlm.sequence_pooling.score.bias"} <= names
    # Matrices are decayed: the tokenizer's convs and the pooling score's (1, hidden) weight, like the classifier.
    matrices = {"vtlm.embeddings.patch_embeddings.convs.0.weight", "vtlm.sequence_pooling.score.weight"}
    assert matrices <= dict(model.named_parameters()).keys()
    assert not matrices & names


# --- attention backends, determinism ---


@variants
def test_eager_and_sdpa_agree_and_attention_is_not_causal(overrides, sequence_length):
    model = tiny_model(**overrides).eval()
    model.set_attn_implementation("sdpa")
    sdpa = model(pixels()).logits
    model.set_attn_implementation("eager")
    eager = model(pixels()).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=0)

    # The pooled token attends to the last patch: changing only that patch changes the logits.
    changed = pixels().clone()
    changed[:, :, -4:, -4:] += 1.0
    assert not torch.allclose(model(changed).logits, eager)


@variants
def test_eval_is_deterministic(overrides, sequence_length):
    model = tiny_model(**overrides).eval()
    torch.testing.assert_close(model(pixels()).logits, model(pixels()).logits, atol=0, rtol=0)


def test_return_dict_false_gives_tuples():
    model = tiny_model().eval()
    outputs = model(pixels(), labels=torch.tensor([0, 5, 99]))
    loss, logits = model(pixels(), labels=torch.tensor([0, 5, 99]), return_dict=False)
    torch.testing.assert_close((loss, logits), (outputs.loss, outputs.logits))
    model.config.return_dict = False
    (logits,) = model(pixels())  # no labels: the None loss is left out
    torch.testing.assert_close(logits, outputs.logits)
    last_hidden_state, pooled = model.vtlm(pixels())
    torch.testing.assert_close(pooled, model.vtlm(pixels(), return_dict=True).pooler_output)


# --- saving and loading ---


def test_save_writes_full_auto_map_and_code(saved_model):
    folder, _ = saved_model
    files = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "configuration_vtlm.py", "modeling_vtlm.py"} <= files
    assert "preprocessor_config.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vtlm.VTLMConfig",
        "AutoModel": "modeling_vtlm.VTLMModel",
        "AutoModelForImageClassification": "modeling_vtlm.VTLMForImageClassification",
    }
    assert config["model_type"] == "vtlm"


@variants
def test_save_load_round_trip_gives_identical_logits(overrides, sequence_length, tmp_path):
    model = tiny_model(**overrides).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, VTLMForImageClassification)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, VTLMConfig)
    assert {name: getattr(config, name) for name in overrides} == overrides
    torch.testing.assert_close(loaded(pixels()).logits, model(pixels()).logits, atol=0, rtol=0)
    base = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(base(pixels()).pooler_output, model.vtlm(pixels()).pooler_output, atol=0, rtol=0)


REMOTE_CODE_CHECK = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModel, AutoModelForImageClassification, pipeline
    from PIL import Image

    folder, pixels_file = sys.argv[1], sys.argv[2]
    try:
        import vtlm.modeling
    except ImportError:
        pass
    else:
        sys.exit("modeling must not be importable here")
    pixels = torch.load(pixels_file)
    classifier = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        result = {
            "classifier_module": type(classifier).__module__,
            "logits": classifier(pixels).logits.tolist(),
            "pooled": base(pixels).pooler_output.tolist(),
        }
    classify = pipeline("image-classification", model=folder, trust_remote_code=True)
    images = [Image.new("L", (32, 32), 128), Image.new("RGBA", (50, 40), (200, 9, 9, 99)), Image.new("RGB", (7, 300))]
    result["pipeline"] = classify(images, top_k=3)
    print("RESULT" + json.dumps(result))
    """
)


@pytest.mark.slow  # a fresh interpreter
def test_trust_remote_code_load_where_modeling_is_not_importable(saved_model, tmp_path):
    folder, model = saved_model
    pixels_file = tmp_path / "pixels.pt"
    torch.save(pixels(), pixels_file)
    run = run_without_modeling(REMOTE_CODE_CHECK, folder, pixels_file, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT", 1)[1])
    assert result["classifier_module"].startswith("transformers_modules")
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(result["logits"]), model(pixels()).logits, atol=1e-6, rtol=0)
        pooled = model.vtlm(pixels()).pooler_output
        torch.testing.assert_close(torch.tensor(result["pooled"]), pooled, atol=1e-6, rtol=0)
    assert len(result["pipeline"]) == 3
    for predictions in result["pipeline"]:
        assert len(predictions) == 3
        assert {p["label"] for p in predictions} <= set(CIFAR100_LABELS)
        assert all(0 <= p["score"] <= 1 for p in predictions)


def test_pipeline_in_process_matches_model(saved_model):
    folder, model = saved_model
    classify = pipeline("image-classification", model=str(folder), trust_remote_code=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    top = classify(image, top_k=1)[0]
    inputs = build_image_processor()(image, return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**inputs).logits.softmax(-1)[0]
    assert top["label"] == model.config.id2label[int(probabilities.argmax())]
    assert top["score"] == pytest.approx(probabilities.max().item(), abs=1e-5)


def attention_products(model, layer=0):
    """Of one attention layer, in the paper's notation (q = x W_q): each head's W_q W_k^T, and the layer's W_v W_o."""
    attention = model.vtlm.encoder.layer[layer].attention
    query, key, value = attention.qkv.weight.detach().chunk(3)  # each (hidden, hidden), rows are outputs
    head_dim = attention.head_dim
    heads = [query[h : h + head_dim].T @ key[h : h + head_dim] for h in range(0, len(query), head_dim)]
    return heads, value.T @ attention.proj.weight.detach().T


def diagonal_and_off_diagonal(matrix):
    off_diagonal = matrix[~torch.eye(len(matrix), dtype=torch.bool)]
    return matrix.diagonal().mean().item(), off_diagonal.std().item()


@pytest.mark.parametrize("overrides", [{}, {"use_head_tokens": True}])  # every attention class
def test_mimetic_init_makes_attention_look_trained(overrides):
    """Trockman & Kolter: W_q W_k^T ~ alpha1 Z + beta1 I (a head's best rank-head_dim part of it) and
    W_v W_o ~ alpha2 Z - beta2 I, Z ~ N(0, 1/hidden). With one head, W_q W_k^T is all of it."""
    hidden = 64
    constants = {"mimetic_alpha1": 0.6, "mimetic_beta1": 0.8, "mimetic_alpha2": 0.3, "mimetic_beta2": 0.5}
    config = {**TINY_CONFIG, "hidden_size": hidden, **overrides}
    for num_heads in (1, 4):
        torch.manual_seed(0)
        model = tiny_model(**{**config, "num_attention_heads": num_heads}, attention_initializer="mimetic", **constants)
        for layer in range(config["num_hidden_layers"]):
            heads, value_output = attention_products(model, layer)
            diagonal, off_diagonal = diagonal_and_off_diagonal(value_output)
            assert diagonal == pytest.approx(-constants["mimetic_beta2"], abs=0.05)
            assert off_diagonal == pytest.approx(constants["mimetic_alpha2"] / hidden**0.5, rel=0.15)
            for product in heads:
                diagonal, off_diagonal = diagonal_and_off_diagonal(product)
                if num_heads == 1:
                    assert diagonal == pytest.approx(constants["mimetic_beta1"], abs=0.05)
                    assert off_diagonal == pytest.approx(constants["mimetic_alpha1"] / hidden**0.5, rel=0.15)
                else:  # a rank-16 part of the 64-wide target: the identity's share of it dominates the diagonal
                    assert diagonal > 0.2 and diagonal > 2 * off_diagonal
    torch.manual_seed(0)
    heads, value_output = attention_products(tiny_model(**{**config, "num_attention_heads": 1}))  # "normal": none
    for product in (*heads, value_output):
        diagonal, off_diagonal = diagonal_and_off_diagonal(product)
        assert abs(diagonal) < 0.01 and off_diagonal < 0.01


def patch_attention_peaks(model, images):
    """Of layer 0, per head: the share of patch tokens whose attention peaks on that head's neighbour in the impulse
    map (`modeling_vtlm.neighbour_map`), over the tokens that have one on the grid."""
    config = model.config
    with torch.no_grad():
        attention = model(images, output_attentions=True).attentions[0]  # (B, heads, T, T)
    prefix = int(config.use_cls_token)
    peaks = attention[:, :, prefix:, prefix:].argmax(dim=-1)  # (B, heads, N)
    maps = modeling_vtlm.neighbour_map(round(config.num_patches**0.5), config.num_attention_heads)
    has_neighbour = maps.sum(dim=-1) > 0  # (heads, N)
    hits = (peaks == maps.argmax(dim=-1)) & has_neighbour
    return (hits.sum(dim=(0, 2)) / (has_neighbour.sum(dim=1) * len(images))).tolist()


def test_neighbour_map_gives_each_head_one_cell_of_the_3x3_window():
    maps = modeling_vtlm.neighbour_map(4, 10)
    assert torch.equal(maps[0], torch.eye(16))  # head 0: the token itself
    assert torch.equal(maps[9], maps[0])  # the tenth head starts the order again
    token = 5  # row 1, column 1: every neighbour is on the grid
    # head 1 the token above, head 2 the one to the right, head 3 to the left, head 4 below, head 5 above-left
    assert [maps[head, token].argmax().item() for head in range(1, 6)] == [1, 6, 4, 9, 0]
    assert maps[1, :4].sum() == 0 and maps[1, 4:].sum(dim=-1).eq(1).all()  # the top row has no token above


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # Full rank: head_dim 16 >= 16 patch tokens (16x16 images), so every head's map is fitted exactly.
        ({"image_size": 16, "hidden_size": 64, "num_attention_heads": 4}, [1.0, 1.0, 1.0, 1.0]),
        # The proxy's width (64, 4 heads of 16) on 64 tokens: measured 0.998 for the centre head and 0.33-0.41 for
        # the other three at seed 0 (a rank-16 fit of a 64x64 map); the bounds leave room for other seeds.
        ({"hidden_size": 64, "num_attention_heads": 4}, [0.99, 0.25, 0.25, 0.25]),
        # The conv tokenizer's grid (4x4 here), without a CLS token, at full rank: its He-initialised features are
        # about as large as the scaled positions, so the pattern shows fainter (measured 0.68, 0.26, 0.24, 0.15).
        (
            {**TINY_CONV, "image_size": 16, "hidden_size": 64, "use_cls_token": False, "pooling": "mean"},
            [0.5, 0.12, 0.12, 0.1],
        ),
    ],
    ids=["full-rank", "proxy", "conv"],
)
def test_impulse_init_points_each_head_at_its_neighbour(overrides, expected):
    """Zheng et al.: at init, layer 0 of each head attends from a patch to its own neighbour of the 3x3 window."""
    size = overrides.get("image_size", 32)
    images = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(0))
    model = tiny_model(**overrides, attention_initializer="impulse").eval()
    rates = patch_attention_peaks(model, images)
    assert all(rate >= bound for rate, bound in zip(rates, expected, strict=True)), rates
    positions = model.vtlm.embeddings.position_embeddings
    assert positions.std().item() == pytest.approx(0.02 * 18, rel=0.1)  # scaled once, not once per post_init
    normal = patch_attention_peaks(tiny_model(**overrides).eval(), images)
    assert max(normal) < 0.2  # a normal init attends nearly uniformly: about 1 / 64 (or 1 / 16) on any token


@pytest.mark.parametrize("initializer", ["mimetic", "impulse"])
def test_from_pretrained_keeps_the_saved_weights_of_a_structured_init(tmp_path, initializer):
    model = tiny_model(attention_initializer=initializer)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)  # weights no initialisation draws
    model.save_pretrained(tmp_path)
    for loaded in (
        VTLMForImageClassification.from_pretrained(tmp_path),
        AutoModelForImageClassification.from_pretrained(tmp_path, trust_remote_code=True),
    ):
        assert loaded.config.attention_initializer == initializer
        for (name, saved), value in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
            assert torch.equal(saved, value), name


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"attention_initializer": "orthogonal"}, "attention_initializer"),
        ({"mimetic_beta2": -1}, "mimetic_beta2"),
        ({"impulse_position_scale": 0}, "impulse_position_scale"),
        ({"impulse_query_key_norm": True}, "impulse_query_key_norm"),
        ({"attention_initializer": "impulse", "use_position_embeddings": False}, "use_position_embeddings is False"),
    ],
)
def test_initializer_fields_are_validated(overrides, field):
    with pytest.raises(ValueError, match=field):
        VTLMConfig(**TINY_CONFIG, **overrides)
