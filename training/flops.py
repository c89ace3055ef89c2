"""FLOPs per image of a VTLM model, counted by running it under `torch.utils.flop_counter.FlopCounterMode`."""

import copy
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop
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


def grouped_conv_backward_flop(grad_out_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's count for a convolution's backward, with a grouped convolution's weight gradient divided by its groups.

    torch counts that gradient as if the convolution were not grouped: `groups` times too many, which for DAFF's
    depthwise convolution (`intermediate_size` groups) would outweigh the rest of the model.
    """
    *conv_args, groups, output_mask = args  # bias, stride, padding, dilation, transposed, output_padding, groups, mask
    shapes = (grad_out_shape, x_shape, w_shape, *conv_args, groups)  # torch's formula takes its output as out_val
    input_gradient = conv_backward_flop(*shapes, [output_mask[0], False, False], out_val=out_shape)
    weight_gradient = conv_backward_flop(*shapes, [False, output_mask[1], False], out_val=out_shape)
    return input_gradient + weight_gradient // groups


def flops_per_image(config) -> ImageFlops:
    """Count the forward and backward FLOPs of the image classifier for `config` (a `VTLMConfig`) on one image.

    The model is built on the meta device, so no weights are allocated and any size counts in about a second.
    `FlopCounterMode` counts matrix multiplications (sequence pooling's included), convolutions (the patchify
    embedding, every conv of the conv tokenizer or SOPE, DAFF's convs) and attention, which are all but a few percent
    of the work; norms (BatchNorm included), affines, activations, max-pooling, softmax, means, dropout and the loss
    are not counted. The backward pass computes no gradient for the input pixels, as in training: a first
    convolution that reads them costs only its weight gradient. A grouped convolution's weight gradient is counted
    per group (`grouped_conv_backward_flop`).
    """
    # Eager attention is plain matmuls, which the counter sees on every device; a fused SDPA kernel may be missed.
    # `from_config` writes the implementation into the config it gets: give it a copy.
    with torch.device("meta"):
        model = AutoModelForImageClassification.from_config(copy.deepcopy(config), attn_implementation="eager")
    pixel_values = torch.zeros(1, config.num_channels, config.image_size, config.image_size, device="meta")
    return count_training_flops(model, lambda: model(pixel_values).logits.sum())


def count_training_flops(model, loss) -> ImageFlops:
    """The FLOPs of `loss()`, a scalar that `model` computes in training mode, and of its backward pass: what
    `flops_per_image` counts, for any model and objective (`training.pretraining` counts masked image modelling)."""
    model.train()
    with FlopCounterMode(display=False) as forward_counter:
        value = loss()
    custom_mapping = {torch.ops.aten.convolution_backward: grouped_conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=custom_mapping) as backward_counter:
        value.backward()
    return ImageFlops(forward=forward_counter.get_total_flops(), backward=backward_counter.get_total_flops())
