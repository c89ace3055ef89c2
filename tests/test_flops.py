"""training/flops.py: the FLOP counter against a formula derived by hand."""

import pytest
from conftest import TINY_CONFIG

from vtlm.modeling import VTLMConfig
from vtlm.training.flops import flops_per_image

# A conv tokenizer of two blocks, 3 -> 8 -> 32 channels.
TINY_CONV = {**TINY_CONFIG, "patch_embedding_type": "conv", "num_conv_layers": 2, "conv_hidden_size": 8}
# DHVT's parts: SOPE (two convs at patch 4, 3 -> 16 -> 32 channels), DAFF, head tokens.
TINY_DHVT = {
    **TINY_CONFIG,
    "patch_embedding_type": "sope",
    "use_position_embeddings": False,
    "feed_forward_type": "daff",
    "use_head_tokens": True,
}


def hand_derived_flops(config):
    """FLOPs of one image, 2 per multiply-add, counting only matrix products (as `torch.utils.flop_counter` does).

    Pixels become tokens of width H in one of three ways. Patchify: a convolution that maps each patch's C p^2 pixels
    to H. The conv tokenizer: blocks of a k x k convolution at stride 1 (every pixel of the input side s, c_in k^2 ->
    c_out) and a 3x3 max-pool at stride 2 (side ceil(s / 2); a comparison, not a product). SOPE: 3x3 convolutions at
    stride 2, each at every pixel of the halved side (c_in 9 -> c_out; C -> H for patch 2, C -> H/2 -> H for 4); its
    affines and BatchNorms are elementwise. T = tokens, plus 1 for the CLS token. Per block: the fused qkv projection
    (T' x H -> 3H), attention scores (heads x T' x T' x head_dim = T'^2 H MACs) and the weighted sum of values (the
    same again), the output projection (T' x H -> H), where T' = T, plus one head token per head with head tokens,
    which also cost their projection (heads x head_dim -> H = H^2 MACs). Then the MLP (T x (H -> I -> H)) or DAFF on
    the P patches: 1x1 convolutions H -> I and I -> H, a 3x3 depthwise convolution (I x 9 per pixel), and the
    squeeze-and-excitation of the CLS token (H -> H/4 -> H). Pooling: the CLS token and the mean cost no product;
    sequence pooling scores each patch token (H -> 1) and sums the tokens with those weights (another patches x H).
    The head maps the pooled token to the labels (H -> labels).

    Backward: each product that has weights costs 2x its forward (the input gradient and the weight gradient), and
    the products of two activations also 2x (a gradient for each operand). The first convolution is the exception
    when it reads the pixels: they need no gradient, so only its weight gradient is computed, 1x. SOPE's first
    convolution reads the output of its learned pixel affine instead, which needs the gradient: 2x. So training =
    forward + backward = 3 x forward - first convolution (3 x forward with SOPE).
    """
    hidden, intermediate, side = config.hidden_size, config.intermediate_size, config.image_size
    if config.patch_embedding_type == "patchify":
        side //= config.patch_size
        convs = [2 * side**2 * hidden * config.num_channels * config.patch_size**2]
    elif config.patch_embedding_type == "sope":
        widths = [config.num_channels] + ([hidden] if config.patch_size == 2 else [hidden // 2, hidden])
        convs = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            side //= 2
            convs.append(2 * side**2 * width_out * width_in * 9)
    else:
        widths = [config.num_channels] + [config.conv_hidden_size] * (config.num_conv_layers - 1) + [hidden]
        convs = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            convs.append(2 * side**2 * width_out * width_in * config.conv_kernel_size**2)
            side = (side + 1) // 2
    patches = side**2
    tokens = patches + (1 if config.use_cls_token else 0)
    attended = tokens + (config.num_attention_heads if config.use_head_tokens else 0)
    block = (
        2 * attended * hidden * 3 * hidden  # qkv
        + 2 * attended * attended * hidden  # q k^T over all heads
        + 2 * attended * attended * hidden  # attention probabilities x v
        + 2 * attended * hidden * hidden  # output projection
    )
    if config.use_head_tokens:
        block += 2 * hidden * hidden  # heads x (head_dim -> hidden)
    if config.feed_forward_type == "daff":
        block += 2 * 2 * patches * hidden * intermediate  # the two 1x1 convolutions
        block += 2 * patches * intermediate * 9  # the depthwise 3x3 convolution
        block += 2 * 2 * hidden * (hidden // 4)  # squeeze and excitation
    else:
        block += 2 * 2 * tokens * hidden * intermediate  # fc1 and fc2
    pooling = 2 * patches * hidden + 2 * patches * hidden if config.pooling == "sequence" else 0
    head = 2 * hidden * config.num_labels
    forward = sum(convs) + config.num_hidden_layers * block + pooling + head
    pixels_gradient_free = config.patch_embedding_type != "sope"  # SOPE's first conv reads its learned affine
    backward = 2 * forward - (convs[0] if pixels_gradient_free else 0)
    return forward, backward


@pytest.mark.parametrize(
    "fields",
    [
        TINY_CONFIG,
        # Every term moves: another patch size (fewer tokens), more layers, odd widths, 10 labels, mean pooling.
        {**TINY_CONFIG, "patch_size": 8, "num_hidden_layers": 3, "intermediate_size": 53, "num_labels": 10},
        {**TINY_CONFIG, "image_size": 24, "num_channels": 1, "hidden_size": 48, "pooling": "mean"},
        # No CLS token: one token fewer everywhere.
        {**TINY_CONFIG, "use_cls_token": False, "pooling": "mean"},
        # The conv tokenizer: two blocks, one block with a 5x5 kernel, a side that halves to odd sizes (30 -> 15 -> 8).
        {**TINY_CONV, "use_cls_token": False, "pooling": "sequence", "layer_norm_layout": "cct"},
        {**TINY_CONV, "num_conv_layers": 1, "conv_kernel_size": 5, "pooling": "cls"},
        {**TINY_CONV, "image_size": 30, "conv_hidden_size": 5, "pooling": "sequence"},
        # DHVT: all three parts at patch 4 and 2, and each part alone beside the original model's others.
        TINY_DHVT,
        {**TINY_DHVT, "patch_size": 2, "intermediate_size": 53, "num_attention_heads": 2, "num_labels": 10},
        {**TINY_CONFIG, "patch_embedding_type": "sope", "patch_size": 2},
        {**TINY_CONFIG, "feed_forward_type": "daff", "hidden_size": 48},
        {**TINY_CONFIG, "use_head_tokens": True, "num_attention_heads": 8},
    ],
)
def test_flop_counter_matches_the_hand_derived_formula(fields):
    config = VTLMConfig(**fields)
    forward, backward = hand_derived_flops(config)
    flops = flops_per_image(config)
    assert (flops.forward, flops.backward) == (forward, backward)
    assert flops.training == forward + backward


def test_flops_do_not_depend_on_attention_implementation_and_leave_the_config_alone():
    config = VTLMConfig(**TINY_CONFIG, attn_implementation="sdpa")
    assert flops_per_image(config) == flops_per_image(VTLMConfig(**TINY_CONFIG, attn_implementation="eager"))
    assert config._attn_implementation == "sdpa"
