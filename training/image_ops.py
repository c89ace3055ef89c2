"""Batched image ops on uint8-valued tensors, on any device: RandAugment's and AutoAugment's ops and policy tables,
the crop-and-flip resampling, and the normalisation to the model's `pixel_values`.

Pure functions of their inputs (no random draws): `training/augmentation.py` draws which op, crop or strength each
image gets and calls these, as timm keeps its ops (`auto_augment.py`) apart from its loader and mixing.
"""

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# RandAugment's and AutoAugment's ops. Each takes images (N, 3, H, W), float32 holding integers in [0, 255], and a
# strength (N,) in [-1, 1]: RandAugment's magnitude / 10 with a random sign (AutoAugment's: `auto_augment_strength`).
# Signed ops (geometry, colour factors) use the sign; the others use |strength|. The caller clamps and truncates the
# result to integers, as an op on a PIL uint8 image would. Ranges at strength 1 are timm's and torchvision's: 30
# degrees, shear 0.3, a translation of 0.45 of the side, enhance factors 1 +- 0.9; solarize and posterize grow
# stronger with the magnitude (posterize keeps 8 down to 4 bits, as torchvision's does). Geometry pivots on the image
# centre, with the nearest pixel and a zero fill. Colour ops follow Pillow's definitions (ImageOps / ImageEnhance),
# which the tests compare against.
MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.45
MAX_ENHANCE = 0.9
MAX_POSTERIZE_BITS_REMOVED = 4


def _per_sample(values, images):
    return values.view(-1, 1, 1, 1).to(images.dtype)


def _grayscale(images):
    """Pillow's "L" conversion, (N, 1, H, W): an integer in float32 (exact: every partial sum is below 2**24)."""
    red, green, blue = images.unbind(1)
    return torch.floor((19595 * red + 38470 * green + 7471 * blue + 32768) * 2**-16).unsqueeze(1)


def _blend(degenerate, images, factor):
    """Pillow's ImageEnhance: factor 0 gives `degenerate`, 1 the image, above 1 extrapolates away from degenerate."""
    return degenerate + _per_sample(factor, images) * (images - degenerate)


def _affine(images, matrix, translation):
    """Warp about the image centre, nearest pixel, zero fill. matrix (N, 2, 2) and translation (N, 2) in pixels map
    output coordinates (x, y) to input coordinates."""
    n, _, height, width = images.shape
    # grid_sample's coordinates run from -1 to 1 across each side: convert pixels to them per axis.
    half_size = torch.tensor([width / 2, height / 2], dtype=images.dtype, device=images.device)
    theta = torch.cat(
        [matrix * half_size[None, None, :] / half_size[None, :, None], (translation / half_size)[..., None]], 2
    )
    grid = F.affine_grid(theta, [n, 3, height, width], align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def identity(images, strength):
    return images


def auto_contrast(images, strength):
    """Stretch each channel to span 0-255 (channels of one value are left alone)."""
    low = images.amin((2, 3), keepdim=True)
    high = images.amax((2, 3), keepdim=True)
    stretched = (images - low) * 255 / (high - low).clamp(min=1)
    return torch.where(high > low, stretched, images)


def equalize(images, strength):
    """Pillow's histogram equalisation of each channel."""
    n, channels, height, width = images.shape
    values = images.reshape(n * channels, height * width).long()
    histogram = torch.zeros(n * channels, 256, dtype=torch.long, device=images.device)
    histogram.scatter_add_(1, values, torch.ones_like(values))
    # Pillow spreads every pixel but those of the brightest value evenly over 255 levels.
    brightest_count = histogram.gather(1, values.amax(1, keepdim=True))
    step = (height * width - brightest_count) // 255
    darker = histogram.cumsum(1) - histogram  # pixels darker than each value
    lut = ((darker + step // 2) // step.clamp(min=1)).clamp(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=images.device))  # a flat channel stays as it is
    return lut.gather(1, values).reshape(images.shape).to(images.dtype)


def rotate(images, strength):
    angle = torch.deg2rad(MAX_ROTATE_DEGREES * strength)
    cos, sin = torch.cos(angle), torch.sin(angle)
    matrix = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    return _affine(images, matrix, torch.zeros_like(matrix[:, 0]))


def invert(images, strength):
    return 255 - images


def solarize(images, strength):
    """Invert every value at or above a threshold that falls from 256 (nothing) to 0 (everything)."""
    threshold = _per_sample(256 * (1 - strength.abs()), images)
    return torch.where(images >= threshold, 255 - images, images)


def color(images, strength):
    return _blend(_grayscale(images), images, 1 + MAX_ENHANCE * strength)


def posterize(images, strength):
    """Keep the top 8 - round(4 |strength|) bits of each value."""
    step = _per_sample(2 ** torch.round(MAX_POSTERIZE_BITS_REMOVED * strength.abs()), images)
    return torch.floor(images / step) * step


def contrast(images, strength):
    mean = torch.floor(_grayscale(images).mean((1, 2, 3), keepdim=True) + 0.5)
    return _blend(mean, images, 1 + MAX_ENHANCE * strength)


def brightness(images, strength):
    return _blend(torch.zeros_like(images), images, 1 + MAX_ENHANCE * strength)


def sharpness(images, strength):
    """Blend with Pillow's SMOOTH filter, [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, which leaves the border alone.

    The 3x3 sum is a sum pool, not a convolution: its result cannot depend on a cuDNN algorithm choice."""
    neighbourhood = F.avg_pool2d(images, 3, stride=1, divisor_override=1)  # (N, 3, H - 2, W - 2)
    smooth = images.clone()
    smooth[..., 1:-1, 1:-1] = torch.round((neighbourhood + 4 * images[..., 1:-1, 1:-1]) / 13)
    return _blend(smooth, images, 1 + MAX_ENHANCE * strength)


def shear_x(images, strength):
    ones, zeros = torch.ones_like(strength), torch.zeros_like(strength)
    matrix = torch.stack([torch.stack([ones, MAX_SHEAR * strength], 1), torch.stack([zeros, ones], 1)], 1)
    return _affine(images, matrix, torch.zeros_like(matrix[:, 0]))


def shear_y(images, strength):
    ones, zeros = torch.ones_like(strength), torch.zeros_like(strength)
    matrix = torch.stack([torch.stack([ones, zeros], 1), torch.stack([MAX_SHEAR * strength, ones], 1)], 1)
    return _affine(images, matrix, torch.zeros_like(matrix[:, 0]))


def translate_x(images, strength):
    matrix = torch.eye(2, dtype=images.dtype, device=images.device).expand(len(strength), 2, 2)
    shift = MAX_TRANSLATE * images.shape[-1] * strength
    return _affine(images, matrix, torch.stack([shift, torch.zeros_like(shift)], 1))


def translate_y(images, strength):
    matrix = torch.eye(2, dtype=images.dtype, device=images.device).expand(len(strength), 2, 2)
    shift = MAX_TRANSLATE * images.shape[-2] * strength
    return _affine(images, matrix, torch.stack([torch.zeros_like(shift), shift], 1))


# The 14 ops of the RandAugment paper (Cubuk et al. 2020, identity included), as in torchvision.
RANDAUGMENT_OPS = {
    op.__name__: op
    for op in (
        identity, auto_contrast, equalize, rotate, solarize, color, posterize,
        contrast, brightness, sharpness, shear_x, shear_y, translate_x, translate_y,
    )
}  # fmt: skip

# Every op by name: RandAugment's and Invert, which AutoAugment's policies use as well.
OPS = {**RANDAUGMENT_OPS, "invert": invert}
OP_NAMES = list(OPS)
IDENTITY_INDEX = OP_NAMES.index("identity")  # what an op drawn but not applied becomes
RANDAUGMENT_OP_INDEX = torch.tensor([OP_NAMES.index(name) for name in RANDAUGMENT_OPS])  # into OPS

# AutoAugment's policies, each a tuple of sub-policies of two (op, probability, magnitude bin) each; the bin, 0-9,
# is None for the ops without a magnitude. CIFAR-10's is the policy learned on reduced CIFAR-10 (Cubuk et al. 2019,
# its appendix), as torchvision's `AutoAugmentPolicy.CIFAR10` spells it.
AUTO_AUGMENT_POLICIES = {
    "cifar10": (
        (("invert", 0.1, None), ("contrast", 0.2, 6)),
        (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
        (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
        (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
        (("auto_contrast", 0.5, None), ("equalize", 0.9, None)),
        (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
        (("color", 0.4, 3), ("brightness", 0.6, 7)),
        (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
        (("equalize", 0.6, None), ("equalize", 0.5, None)),
        (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
        (("color", 0.7, 7), ("translate_x", 0.5, 8)),
        (("equalize", 0.3, None), ("auto_contrast", 0.4, None)),
        (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
        (("brightness", 0.9, 6), ("color", 0.2, 8)),
        (("solarize", 0.5, 2), ("invert", 0.0, None)),
        (("equalize", 0.2, None), ("auto_contrast", 0.6, None)),
        (("equalize", 0.2, None), ("equalize", 0.6, None)),
        (("color", 0.9, 9), ("equalize", 0.6, None)),
        (("auto_contrast", 0.8, None), ("solarize", 0.2, 8)),
        (("brightness", 0.1, 3), ("color", 0.7, 0)),
        (("solarize", 0.4, 5), ("auto_contrast", 0.9, None)),
        (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
        (("auto_contrast", 0.9, None), ("solarize", 0.8, 3)),
        (("equalize", 0.8, None), ("invert", 0.1, None)),
        (("translate_y", 0.7, 9), ("auto_contrast", 0.9, None)),
    ),
}


def auto_augment_strength(name, magnitude_bin, height, width):
    """torchvision's AutoAugment magnitude of op `name` at `magnitude_bin` on (height, width) images, as the strength
    the op here takes.

    torchvision spreads 10 bins evenly over [0, its maximum], so bin b is b / 9 of it. Its maxima for rotate, shear
    and the enhance factors are the ones here, and its posterize keeps 8 - round(4 b / 9) bits, as posterize here does
    at strength b / 9. Solarize and translate need converting."""
    if magnitude_bin is None:
        return 0.0
    if name == "solarize":  # torchvision's threshold falls from 255 at bin 0, the one here from 256
        threshold = 255 * (9 - magnitude_bin) / 9  # a whole threshold stays whole: 1 - threshold / 256 is exact
        return 1 - threshold / 256
    if name in ("translate_x", "translate_y"):  # a whole number of pixels, up to 150/331 of the side
        side = width if name == "translate_x" else height
        return int(150 * side * magnitude_bin / (331 * 9)) / (MAX_TRANSLATE * side)
    return magnitude_bin / 9


@functools.cache
def auto_augment_table(policy, height, width):
    """A policy as three (P, 2) tensors, read only: op indices into OPS, probabilities and unsigned strengths."""
    sub_policies = AUTO_AUGMENT_POLICIES[policy]
    op_index = torch.tensor([[OP_NAMES.index(name) for name, _, _ in pair] for pair in sub_policies])
    probability = torch.tensor([[prob for _, prob, _ in pair] for pair in sub_policies])
    strength = torch.tensor(
        [[auto_augment_strength(name, magnitude_bin, height, width) for name, _, magnitude_bin in pair]
         for pair in sub_policies]
    )  # fmt: skip
    return op_index, probability, strength


def apply_ops(images, op_index, strength):
    """uint8 images (N, 3, H, W) -> uint8 images after rounds of per-image ops: op_index (rounds, N), indices into
    OPS, and strength (rounds, N), both on the CPU."""
    images = images.float()
    for round_ops, round_strength in zip(op_index, strength, strict=True):
        # Samples grouped by op, counted on the CPU: picking each op's samples never waits for the device.
        by_op = to_device(torch.argsort(round_ops, stable=True), images.device)
        counts = torch.bincount(round_ops, minlength=len(OPS)).tolist()
        round_strength = to_device(round_strength, images.device)
        for op, chosen in zip(OPS.values(), by_op.split(counts), strict=True):
            if len(chosen) > 0 and op is not identity:
                images[chosen] = op(images[chosen], round_strength[chosen]).clamp(0, 255).floor()
    return images.to(torch.uint8)


# Crops. A crop is a box per image, resampled bilinearly to the output size: a RandomResizedCrop's boxes are smaller
# than the image; pad-and-crop's are image-sized boxes of the padded image, whose resampling is an exact shift.


def resized_crop(images, top, left, box_height, box_width, size, flip):
    """uint8 images (N, 3, H_in, W_in) -> uint8 (N, 3, *size): each image's box (top, left, box_height, box_width)
    resized bilinearly to `size` and, where `flip`, mirrored left-right. Box values (N,) int64 and `flip` (N,) bool
    are on the CPU. This is torchvision's `resized_crop`, the box cut out and then resized (by `F.interpolate` with
    `align_corners=False`, or by Pillow): samples beyond the box's edge take the edge's value, and the result is
    rounded. No antialiasing: a box is at most `size` (a crop), and upsampling needs none."""
    height, width = size
    rows = _bilinear_taps(top, box_height, height)
    columns = _bilinear_taps(left, box_width, width)
    columns = [torch.where(flip[:, None], taps.flip(1), taps) for taps in columns]  # a flip reads columns backwards
    rows, columns = ([to_device(taps, images.device) for taps in axis] for axis in (rows, columns))
    return torch.round(_resample(_resample(images, 2, *rows), 3, *columns)).to(torch.uint8)


def _resample(images, dim, low, high, weight):
    """Along `dim` (2: rows, 3: columns) of images (N, C, H, W), output position i of image n blends its source
    positions low[n, i] and high[n, i] by weight[n, i]; the three are (N, size). Returns float32."""
    shape, view = list(images.shape), [len(images), 1, 1, 1]
    shape[dim] = view[dim] = low.shape[1]
    low, high = (images.gather(dim, index.view(view).expand(shape)).float() for index in (low, high))
    return low.lerp(high, weight.view(view))


def _bilinear_taps(start, length, size):
    """Where each of `size` output pixels samples a box [start, start + length) of one axis, for N boxes: the source
    pixel below, the one above and the weight of the one above, each (N, size)."""
    length = length[:, None].double()
    # The output pixel's centre in box pixels, held inside the outermost pixel centres.
    position = ((torch.arange(size) + 0.5) * (length / size) - 0.5).clamp(min=0)
    position = torch.minimum(position, length - 1)
    low = position.floor()
    high = torch.minimum(low + 1, length - 1)
    return start[:, None] + low.long(), start[:, None] + high.long(), (position - low).float()


class Normalize:
    """uint8 images (B, 3, H, W) -> float32 `(images / 255 - mean) / std`: what the image processor does at inference,
    on whole batches on the device. The trainer builds one from its image processor and uses it for evaluation and
    inside `BatchAugmentation`.

    Args:
        mean, std: per-channel values on the 0-1 scale (`modeling.CIFAR100_MEAN`, `modeling.CIFAR100_STD`).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"`mean` and `std` need 3 values each and `std` > 0, got mean={mean}, std={std}.")
        self.mean = tuple(float(value) for value in mean)
        self.std = tuple(float(value) for value in std)
        self._on_device = {}  # device -> (mean, std) as (1, 3, 1, 1) tensors, made once rather than every batch

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.device not in self._on_device:
            self._on_device[images.device] = tuple(
                to_device(torch.tensor(values), images.device).view(1, 3, 1, 1) for values in (self.mean, self.std)
            )
        mean, std = self._on_device[images.device]
        return (images.float() / 255 - mean) / std


def to_device(tensor, device):
    """A CPU tensor onto `device`. Onto a GPU through pinned memory and without blocking: a copy from pageable memory
    would first wait for all the work already queued on the GPU."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
