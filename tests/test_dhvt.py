"""What only DHVT's parts (SOPE, DAFF, head tokens) do, on tiny configs: the parameter count, BatchNorm's running
statistics through saving, eval, activation checkpointing and gradient accumulation, what each part computes, init,
weight decay, validation, the presets. The contract every layout keeps (shapes, gradients, attention backends, eval
determinism, saving) is test_modeling.py's, whose table of layouts holds DHVT's.
"""

import pytest
import torch
from conftest import TINY_DHVT
from transformers import AutoModelForImageClassification

from vtlm.modeling import VTLMConfig, VTLMForImageClassification, VTLMModel

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0}


def tiny_model(fields=TINY_DHVT, **overrides):
    torch.manual_seed(0)
    return VTLMForImageClassification(VTLMConfig(**{**fields, **overrides}))


def pixels(batch_size=3, seed=0):
    return torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def batch_norm_buffers(model):
    """Every BatchNorm statistic of `model` (running mean, variance, batches seen), by name, copied."""
    return {name: buffer.clone() for name, buffer in model.named_buffers() if "batch_norm" in name}


def warm_up_statistics(model, steps=3):
    """Move the running statistics away from their init (mean 0, variance 1), as training would."""
    model.train()
    with torch.no_grad():
        for step in range(steps):
            model(2 + 3 * pixels(8, seed=100 + step))
    return model.eval()


# --- parameter counts ---


def test_parameter_count_matches_layout_formula():
    """The tiny DHVT config's count derived by hand, so a missing or extra part of SOPE, DAFF or HI-MHSA is caught."""
    d, layers, mlp, heads, labels = 32, 2, 37, 4, 100
    sope = 2 * 3 + (3 * (d // 2) * 9 + 2 * (d // 2)) + ((d // 2) * d * 9 + 2 * d) + 2 * d  # affines, convs + BN
    head_tokens = (d // heads) * d + d + 2 * (d // heads) + heads * d  # projection, norm, positions
    attention = d * 3 * d + 3 * d + d * d + d + head_tokens
    daff = (d * mlp + mlp + 2 * mlp) + (9 * mlp + mlp + 2 * mlp) + (mlp * d + d + 2 * d)  # convs (bias) + BN
    daff += d * (d // 4) + d // 4 + (d // 4) * d + d  # squeeze and excitation
    block = 2 * 2 * d + attention + daff
    expected = sope + d + layers * block + 2 * d + d * labels + labels  # no positions; CLS token
    assert tiny_model().num_parameters() == expected


def test_batch_norm_statistics_are_buffers_not_parameters():
    model = tiny_model()
    buffers = batch_norm_buffers(model)
    # SOPE's two convs and DAFF's three per block, each with a running mean, variance and batch count.
    assert len(buffers) == 3 * (2 + 3 * 2)
    assert not any("running" in name for name, _ in model.named_parameters())


# --- what each part computes ---


def test_sope_tokens_overlap_their_neighbours():
    """Pixel (3, 3) lies in the first 4x4 patch; SOPE's overlapping 3x3 windows carry it into the 2x2 first tokens."""
    embedding = warm_up_statistics(tiny_model()).vtlm.embeddings.patch_embeddings
    changed = pixels()
    changed[:, :, 3, 3] += 5.0
    moved = (embedding(changed) - embedding(pixels())).abs().amax(dim=(0, 1)) > 0  # (side, side)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:2, :2] = True
    assert torch.equal(moved, expected)


def test_daff_scales_the_cls_token_by_the_patch_map_alone():
    daff = warm_up_statistics(tiny_model()).vtlm.encoder.layer[0].mlp
    hidden_states = torch.randn(2, 65, 32, generator=torch.Generator().manual_seed(0))
    output = daff(hidden_states)
    doubled_cls = hidden_states.clone()
    doubled_cls[:, 0] *= 2
    doubled = daff(doubled_cls)
    torch.testing.assert_close(doubled[:, 1:], output[:, 1:])  # the patch tokens never see the CLS token
    torch.testing.assert_close(doubled[:, 0], 2 * output[:, 0])  # the CLS token is only rescaled


def test_each_head_token_summarises_its_own_channel_group():
    head_tokens = tiny_model().vtlm.encoder.layer[0].attention.head_tokens
    hidden_states = torch.randn(2, 65, 32, generator=torch.Generator().manual_seed(0))
    tokens = head_tokens(hidden_states)  # (B, heads, hidden)
    assert tokens.shape == (2, 4, 32)
    torch.testing.assert_close(head_tokens(hidden_states.flip(1)), tokens)  # a mean over the tokens: order-free
    changed = hidden_states.clone()
    changed[:, :, :8] += 1.0  # head 0's channels
    moved = (head_tokens(changed) - tokens).abs().amax(dim=(0, 2)) > 0
    assert moved.tolist() == [True, False, False, False]


# --- BatchNorm's running statistics ---


def test_eval_predictions_do_not_depend_on_the_rest_of_the_batch():
    model = warm_up_statistics(tiny_model())
    batch = pixels(4)
    together = model(batch).logits
    alone = torch.cat([model(image[None]).logits for image in batch])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=0)
    model.train()  # training normalises with the batch's own statistics: there the batch matters
    assert not torch.allclose(model(batch[:2]).logits, model(batch).logits[:2], atol=1e-3)


def test_training_moves_the_running_statistics_and_eval_leaves_them():
    model = tiny_model()
    fresh = batch_norm_buffers(model)
    warm_up_statistics(model, steps=2)
    trained = batch_norm_buffers(model)
    assert all(not torch.equal(trained[name], fresh[name]) for name in fresh)
    assert all(trained[name].item() == 2 for name in trained if name.endswith("num_batches_tracked"))
    model(pixels())
    assert all(torch.equal(batch_norm_buffers(model)[name], trained[name]) for name in trained)


def test_save_load_round_trip_keeps_running_statistics(tmp_path):
    model = warm_up_statistics(tiny_model())
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    expected, got = batch_norm_buffers(model), batch_norm_buffers(loaded)
    assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)
    # Warmed-up statistics differ from their init, so logits equal only if the statistics came back.
    torch.testing.assert_close(loaded(pixels()).logits, model(pixels()).logits, atol=0, rtol=0)


def train_micro_batches(model, micro_batches):
    """Forward and backward each micro-batch, accumulating gradients, as one optimizer step of the Trainer does."""
    model.train()
    for step, batch in enumerate(micro_batches):
        labels = torch.arange(len(batch)) + step
        (model(batch, labels=labels).loss / len(micro_batches)).backward()
    return batch_norm_buffers(model), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_activation_checkpointing_leaves_running_statistics_as_a_plain_run(use_reentrant, accumulation_steps):
    """Checkpointing recomputes each block in the backward pass: the running statistics must take each batch in once,
    under gradient accumulation too, and the gradients must match the plain run's."""
    micro_batches = [pixels(4, seed=step) for step in range(accumulation_steps)]
    plain = tiny_model(**NO_DROPOUT)
    plain_buffers, plain_grads = train_micro_batches(plain, micro_batches)
    checkpointed = tiny_model(**NO_DROPOUT)
    checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert checkpointed.vtlm.encoder.layer[0].gradient_checkpointing
    buffers, grads = train_micro_batches(checkpointed, micro_batches)
    assert buffers.keys() == plain_buffers.keys()
    for name, buffer in buffers.items():
        torch.testing.assert_close(buffer, plain_buffers[name], msg=name)
    counts = {buffer.item() for name, buffer in buffers.items() if name.endswith("num_batches_tracked")}
    assert counts == {accumulation_steps}
    torch.testing.assert_close(grads, plain_grads)


# --- init, weight decay ---


def test_init_follows_the_reference():
    model = tiny_model()
    sope = model.vtlm.embeddings.patch_embeddings
    daff = model.vtlm.encoder.layer[0].mlp
    for conv in (*sope.convs, daff.expand, daff.depthwise, daff.reduce):
        # PyTorch's default: uniform in +-1/sqrt(fan_in), so std 1/sqrt(3 fan_in).
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max().item() <= fan_in**-0.5
        assert conv.weight.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.2)
        assert torch.all(conv.batch_norm.weight == 1) and torch.all(conv.batch_norm.bias == 0)
        assert torch.all(conv.batch_norm.running_mean == 0) and torch.all(conv.batch_norm.running_var == 1)
    for conv in (daff.expand, daff.depthwise, daff.reduce):
        assert 0 < conv.bias.abs().max().item() <= conv.weight[0].numel() ** -0.5  # uniform too, not zero
    for affine in (sope.pixel_affine, sope.feature_affine):
        assert torch.all(affine.weight == 1) and torch.all(affine.bias == 0)
    assert model.vtlm.embeddings.position_embeddings is None
    head_tokens = model.vtlm.encoder.layer[0].attention.head_tokens
    assert head_tokens.position_embeddings.std().item() == pytest.approx(0.02, rel=0.3)
    assert head_tokens.projection.weight.std().item() == pytest.approx(0.02, rel=0.3)
    assert daff.squeeze.weight.std().item() == pytest.approx(0.02, rel=0.3) and torch.all(daff.squeeze.bias == 0)


def test_no_weight_decay_on_batch_norm_affines_biases_or_head_token_positions():
    model = tiny_model()
    names = set(model.no_weight_decay_parameter_names())
    exempt = {
        "vtlm.embeddings.patch_embeddings.pixel_affine.weight",
        "vtlm.embeddings.patch_embeddings.feature_affine.bias",
        "vtlm.embeddings.patch_embeddings.convs.0.batch_norm.weight",
        "vtlm.embeddings.patch_embeddings.convs.1.batch_norm.bias",
        "vtlm.encoder.layer.0.mlp.expand.bias",
        "vtlm.encoder.layer.0.mlp.depthwise.batch_norm.weight",
        "vtlm.encoder.layer.1.mlp.reduce.batch_norm.bias",
        "vtlm.encoder.layer.0.attention.head_tokens.position_embeddings",
        "vtlm.encoder.layer.0.attention.head_tokens.norm.weight",
    }
    decayed = {
        "vtlm.embeddings.patch_embeddings.convs.0.weight",
        "vtlm.encoder.layer.0.mlp.expand.weight",
        "vtlm.encoder.layer.0.mlp.depthwise.weight",
        "vtlm.encoder.layer.0.mlp.squeeze.weight",
        "vtlm.encoder.layer.0.attention.head_tokens.projection.weight",
    }
    assert (exempt | decayed) <= dict(model.named_parameters()).keys()
    assert exempt <= names and not decayed & names
    assert all(name in names for name, _ in model.named_parameters() if "batch_norm" in name)


# --- config ---


@pytest.mark.parametrize(
    ("overrides", "field", "value"),
    [
        ({"patch_size": 8}, "patch_size", "8"),  # SOPE has one conv per halving: 2 or 4
        ({"hidden_size": 33, "num_attention_heads": 3}, "hidden_size", "33"),  # halved between SOPE's two convs
        ({"use_cls_token": False, "pooling": "mean", "use_head_tokens": False}, "use_cls_token", "False"),  # DAFF
        ({"use_cls_token": False, "pooling": "mean", "feed_forward_type": "mlp"}, "use_cls_token", "False"),  # heads
        ({"feed_forward_type": "conv"}, "feed_forward_type", "'conv'"),
        ({"use_head_tokens": 1}, "use_head_tokens", "1"),
        ({"use_position_embeddings": "no"}, "use_position_embeddings", "'no'"),
        ({"image_size": 30, "patch_size": 4}, "image_size", "30"),
    ],
)
def test_config_validation_names_field_and_value(overrides, field, value):
    with pytest.raises(ValueError, match=field) as error:
        VTLMConfig(**{**TINY_DHVT, **overrides})
    assert value in str(error.value)


# --- the presets, and the training side's SyncBatchNorm ---


@pytest.mark.parametrize(
    ("preset", "widths", "tokens"), [("vtlm-dhvt-t2", [3, 192], 256), ("vtlm-dhvt-s4", [3, 192, 384], 64)]
)
def test_presets_are_the_reference_layouts(preset, widths, tokens):
    config = VTLMConfig.from_preset(preset)
    assert (config.num_patches, config.sequence_length, config.intermediate_size) == (
        tokens, tokens + 1, 4 * config.hidden_size
    )  # fmt: skip
    with torch.device("meta"):
        model = VTLMModel(config)
    convs = model.embeddings.patch_embeddings.convs
    assert [conv.in_channels for conv in convs] + [convs[-1].out_channels] == widths
    assert all(conv.stride == (2, 2) and conv.kernel_size == (3, 3) and conv.bias is None for conv in convs)
    assert model.embeddings.position_embeddings is None and config.qkv_bias


def test_sync_batch_norm_conversion_keeps_the_logits_and_the_checkpointing_guard():
    """What the training side does for DDP: `convert_sync_batchnorm` swaps each BatchNorm2d in place; one process
    here, so SyncBatchNorm normalises like BatchNorm2d and the statistics must still take each batch once."""
    model = warm_up_statistics(tiny_model(**NO_DROPOUT))
    expected = model(pixels()).logits
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
    assert isinstance(converted.vtlm.encoder.layer[0].mlp.depthwise.batch_norm, torch.nn.SyncBatchNorm)
    torch.testing.assert_close(converted(pixels()).logits, expected, atol=0, rtol=0)
    plain_buffers, _ = train_micro_batches(
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(tiny_model(**NO_DROPOUT)), [pixels(4)]
    )
    checkpointed = torch.nn.SyncBatchNorm.convert_sync_batchnorm(tiny_model(**NO_DROPOUT))
    checkpointed.activation_checkpointing_enable()
    buffers, _ = train_micro_batches(checkpointed, [pixels(4)])
    for name, buffer in buffers.items():
        torch.testing.assert_close(buffer, plain_buffers[name], msg=name)


@pytest.mark.parametrize(
    "world_size, device, synced", [(2, "cuda", True), (1, "cuda", False), (2, "cpu", False)], ids=["ddp", "one", "gloo"]
)
def test_training_syncs_every_batch_norm_under_multi_gpu_ddp_only(world_size, device, synced):
    from types import SimpleNamespace

    from vtlm.training.build import sync_batch_norm

    model = sync_batch_norm(tiny_model(), SimpleNamespace(world_size=world_size, device=torch.device(device)))
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(norm, torch.nn.SyncBatchNorm) == synced for norm in norms)
