"""FLOPs per image of a VTLM model, counted by running it under `torch.utils.flop_counter.FlopCounterMode`."""

import copy
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForImageClassification

from modeling import VTLMForImageClassification  # noqa: F401  (loading it registers VTLM with the Auto classes)


@dataclass(frozen=True)
class ImageFlops:
    """FLOPs for one image; a multiply-add counts as 2 FLOPs."""

    forward: int
    backward: int

    @property
    def training(self) -> int:
        """Forward plus backward: the cost of one image in a training step, before the optimizer update."""
        return self.forward + self.backward


def flops_per_image(config) -> ImageFlops:
    """Count the forward and backward FLOPs of the image classifier for `config` (a `VTLMConfig`) on one image.

    The model is built on the meta device, so no weights are allocated and any size counts in about a second.
    `FlopCounterMode` counts matrix multiplications (sequence pooling's included), convolutions (the patchify
    embedding or every conv of the conv tokenizer) and attention, which are all but a few percent of the work;
    norms, activations, max-pooling, softmax, means, dropout and the loss are not counted. The backward pass
    computes no gradient for the input pixels, as in training: the first convolution costs only its weight gradient.
    """
    # Eager attention is plain matmuls, which the counter sees on every device; a fused SDPA kernel may be missed.
    # `from_config` writes the implementation into the config it gets: give it a copy.
    with torch.device("meta"):
        model = AutoModelForImageClassification.from_config(copy.deepcopy(config), attn_implementation="eager")
    model.train()
    pixel_values = torch.zeros(1, config.num_channels, config.image_size, config.image_size, device="meta")

    with FlopCounterMode(display=False) as forward_counter:
        logits = model(pixel_values).logits
    with FlopCounterMode(display=False) as backward_counter:
        logits.sum().backward()
    return ImageFlops(forward=forward_counter.get_total_flops(), backward=backward_counter.get_total_flops())
