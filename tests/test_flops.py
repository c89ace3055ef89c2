"""training/flops.py: the FLOP counter against a formula derived by hand."""

import pytest
from conftest import TINY_CONFIG

from modeling import VTLMConfig
from training.flops import flops_per_image


def hand_derived_flops(config):
    """FLOPs of one image, 2 per multiply-add, counting only matrix products (as `torch.utils.flop_counter` does).

    T = patches + 1 (CLS) tokens of width H; per block: the fused qkv projection (T x H -> 3H), attention scores
    (heads x T x T x head_dim = T^2 H MACs) and the weighted sum of values (the same again), the output projection
    (H -> H), and the MLP (H -> I -> H); around the blocks, the patch convolution (each patch's C p^2 pixels -> H) and
    the head on the pooled token (H -> labels).

    Backward: each product that has weights costs 2x its forward (the input gradient and the weight gradient), and
    attention's two products also 2x (a gradient for each operand). The patch convolution is the exception: the
    pixels need no gradient, so only its weight gradient is computed, 1x. So training = forward + backward
    = 3 x forward - patch convolution.
    """
    patches = (config.image_size // config.patch_size) ** 2
    tokens, hidden, intermediate = patches + 1, config.hidden_size, config.intermediate_size
    patch_conv = 2 * patches * hidden * config.num_channels * config.patch_size**2
    block = (
        2 * tokens * hidden * 3 * hidden  # qkv
        + 2 * tokens * tokens * hidden  # q k^T over all heads
        + 2 * tokens * tokens * hidden  # attention probabilities x v
        + 2 * tokens * hidden * hidden  # output projection
        + 2 * 2 * tokens * hidden * intermediate  # fc1 and fc2
    )
    head = 2 * hidden * config.num_labels
    forward = patch_conv + config.num_hidden_layers * block + head
    backward = 2 * (forward - patch_conv) + patch_conv
    return forward, backward


@pytest.mark.parametrize(
    "fields",
    [
        TINY_CONFIG,
        # Every term moves: another patch size (fewer tokens), more layers, odd widths, 10 labels, mean pooling.
        {**TINY_CONFIG, "patch_size": 8, "num_hidden_layers": 3, "intermediate_size": 53, "num_labels": 10},
        {**TINY_CONFIG, "image_size": 24, "num_channels": 1, "hidden_size": 48, "pooling": "mean"},
    ],
)
def test_flop_counter_matches_the_hand_derived_formula(fields):
    config = VTLMConfig(**fields)
    forward, backward = hand_derived_flops(config)
    flops = flops_per_image(config)
    assert (flops.forward, flops.backward) == (forward, backward)
    assert flops.training == forward + backward
    # The rule of thumb "training = 3 x forward" holds for every product but the patch convolution.
    patch_conv = 2 * config.num_patches * config.hidden_size * config.num_channels * config.patch_size**2
    assert flops.training == 3 * flops.forward - patch_conv
