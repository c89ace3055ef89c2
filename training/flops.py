"""FLOPs per image of a VTLM model, counted by running it under `torch.utils.flop_counter.FlopCounterMode`."""

import copy
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop
from transformers import AutoModelForImageClassification

from vtlm.modeling import VTLMForImageClassification  # noqa: F401  (loading it registers VTLM with the Auto classes)


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


def count_parameters(config) -> int:
    """The parameters of the image classifier for `config`, counted on the meta device (nothing allocated): the
    saved model's, without what exists only in training (a teacher's feature guidance projections)."""
    with torch.device("meta"):
        return AutoModelForImageClassification.from_config(copy.deepcopy(config)).num_parameters()


def forward_flops(model, pixel_values) -> int:
    """The FLOPs of `model`'s forward pass (eval mode, no gradients) on `pixel_values`, as it is: any image classifier,
    such as a teacher, whose config `flops_per_image` cannot build."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=pixel_values)
    return counter.get_total_flops()


def describe_compute(flops: ImageFlops, num_parameters: int, total_flos: float, teacher_forward_per_image=None) -> dict:
    """What a run cost, for `run_info.json`: the trained model's parameters and FLOPs per image (`flops`), the images
    its steps processed (from the Trainer's `total_flos`, which counts `flops.training` per image), their training
    FLOPs, and for a taught run its teacher's forward FLOPs on those images; `total_flops` adds them up. Not counted:
    norms, activations and the like (see `flops_per_image`), and a teacher's feature guidance projections (a Linear
    per guided block)."""
    images = round(total_flos / flops.training)
    compute = {
        "num_parameters": num_parameters,
        "forward_flops_per_image": flops.forward,
        "training_flops_per_image": flops.training,
        "training_images": images,
        "training_flops": images * flops.training,
    }
    if teacher_forward_per_image is not None:
        compute["teacher_forward_flops_per_image"] = teacher_forward_per_image
        compute["teacher_forward_flops"] = images * teacher_forward_per_image
    compute["total_flops"] = compute["training_flops"] + compute.get("teacher_forward_flops", 0)
    return compute
