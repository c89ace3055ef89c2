"""Batch augmentation for training: whole uint8 batches in, normalised pixels and soft targets out, on any device.

A ViT of tens of millions of parameters on an H100 takes tens of thousands of 32x32 images a second, far more than
per-image PIL transforms in data-loader workers deliver. So the loader hands over uint8 batches that are already on
the training device, and every step below is a batched torch op on that device:

    crop (pad-and-crop or RandomResizedCrop) -> horizontal flip -> RandAugment or AutoAugment -> normalise
        -> random erasing -> Mixup / CutMix

which is timm's order (erasing inside the loader, mixing on the batch). Every random choice is per sample.
RandAugment follows timm's `rand-m9-mstd0.5-inc1` (each round's op applied with probability 0.5, at a magnitude drawn
per image); AutoAugment is torchvision's, with its CIFAR-10 policy (the seed model's recipe). Evaluation only
normalises, with `PixelNormalizer`.

Randomness. Every draw comes from a `torch.Generator` seeded with the `seed` passed to the call, never from the global
RNG, so a call neither reads nor moves the caller's RNG state, and a resumed run augments its batches exactly as the
first run did. The trainer derives that seed with `augmentation_seed(seed, global_step, rank, micro_step)`. The
per-sample parameters are drawn on the CPU and then copied to the images' device (asynchronously, from pinned
memory): the same seed makes the same choices on a CPU and on a GPU, and nothing waits for the GPU. Only the
random-erasing noise is drawn on the device itself, from a generator seeded by the CPU one.

Why not kornia. kornia 0.9's `kornia.augmentation.auto.RandAugment` draws its two ops once per call (`rand_selector`
is one `torch.randperm`), so every image in a batch gets the same two ops; its magnitude `m` is on a 0-30 scale
and moves the colour factors one way only (`0.1 + 1.8 * m / 30`, 0.64 at m=9: always darker, greyer, blurrier).
Its `RandomMixUpV2` draws lambda from a uniform range rather than Beta(alpha, alpha), and all of its augmentations
draw from the global RNG (they take no generator). The ops below are short, per sample, and take a generator.
"""

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentationArguments:
    """The training-time augmentation recipe. The defaults are the usual ViT-from-scratch recipe on CIFAR-100
    (DeiT's ingredients with CIFAR's pad-and-crop); 0 (or False, or None) turns an ingredient off."""

    crop_padding: int = field(
        default=4,
        metadata={
            "help": "Zero-pad each side by this many pixels, then crop a random image-sized window (0: no crop). "
            "Pad-and-crop is the CIFAR standard: it shifts pixels without resampling them, where a RandomResizedCrop "
            "blurs 32x32 images for a zoom range that RandAugment's shear and translate already cover."
        },
    )
    random_resized_crop_scale: float | None = field(
        default=None,
        metadata={
            "help": "RandomResizedCrop instead of pad-and-crop (needs --crop_padding 0): a box of a random share of "
            "the image's area, from this value to 1, and of aspect ratio 3/4 to 4/3, resized bilinearly back to the "
            "image's size (torchvision's algorithm; the seed model used 0.8). None: off."
        },
    )
    horizontal_flip: bool = field(default=True, metadata={"help": "Flip each image left-right with probability 0.5."})
    randaugment_num_ops: int = field(
        default=2,
        metadata={"help": "RandAugment rounds: in each, every image draws one of the 14 ops (0: no RandAugment)."},
    )
    randaugment_magnitude: float = field(
        default=9.0,
        metadata={
            "help": "RandAugment's mean magnitude on the 0-10 scale of the paper and timm (10: strongest); timm's `m`."
        },
    )
    randaugment_magnitude_std: float = field(
        default=0.5,
        metadata={
            "help": "Each applied op draws its magnitude from N(randaugment_magnitude, this), clipped to [0, 10]; "
            "timm's `mstd` (0: always randaugment_magnitude)."
        },
    )
    randaugment_prob: float = field(
        default=0.5,
        metadata={
            "help": "Probability that a round's op is applied to an image; timm's `p` (1: every round changes it)."
        },
    )
    auto_augment_policy: str | None = field(
        default=None,
        metadata={
            "help": "AutoAugment instead of RandAugment (needs --randaugment_num_ops 0): `cifar10`, the policy the "
            "paper learned on CIFAR-10, as torchvision's, with a sub-policy drawn per image. None: off."
        },
    )
    mixup_alpha: float = field(default=0.8, metadata={"help": "Mixup's lambda ~ Beta(alpha, alpha) (0: no Mixup)."})
    cutmix_alpha: float = field(default=1.0, metadata={"help": "CutMix's lambda ~ Beta(alpha, alpha) (0: no CutMix)."})
    mixup_prob: float = field(
        default=1.0, metadata={"help": "Probability that an image is mixed at all, by Mixup or CutMix (0: never)."}
    )
    mixup_switch_prob: float = field(
        default=0.5,
        metadata={"help": "When both Mixup and CutMix are on: probability that a mixed image uses CutMix."},
    )
    random_erasing_prob: float = field(
        default=0.25,
        metadata={"help": "Probability that a random box of each image is replaced by Gaussian noise (0: never)."},
    )

    def __post_init__(self):
        for name in ("crop_padding", "randaugment_num_ops", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if not 0 <= self.randaugment_magnitude <= 10:
            raise ValueError(f"`randaugment_magnitude` must be in [0, 10], got {self.randaugment_magnitude}.")
        if not 0 <= self.randaugment_magnitude_std < math.inf:  # timm's inf (uniform magnitudes) is not supported
            raise ValueError(
                f"`randaugment_magnitude_std` must be >= 0 and finite, got {self.randaugment_magnitude_std}."
            )
        for name in ("randaugment_prob", "mixup_prob", "mixup_switch_prob", "random_erasing_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        if self.random_resized_crop_scale is not None:
            if not 0 < self.random_resized_crop_scale <= 1:
                raise ValueError(
                    f"`random_resized_crop_scale` must be in (0, 1], got {self.random_resized_crop_scale}."
                )
            if self.crop_padding > 0:
                raise ValueError(
                    f"`random_resized_crop_scale` {self.random_resized_crop_scale} and `crop_padding` "
                    f"{self.crop_padding} are two crops: set `crop_padding` to 0 to use RandomResizedCrop."
                )
        if self.auto_augment_policy is not None:
            if self.auto_augment_policy not in AUTO_AUGMENT_POLICIES:
                raise ValueError(
                    f"`auto_augment_policy` must be one of {sorted(AUTO_AUGMENT_POLICIES)} or None, "
                    f"got {self.auto_augment_policy!r}."
                )
            if self.randaugment_num_ops > 0:
                raise ValueError(
                    f"`auto_augment_policy` {self.auto_augment_policy!r} and `randaugment_num_ops` "
                    f"{self.randaugment_num_ops} are two augmentation policies: set `randaugment_num_ops` to 0 to use "
                    "AutoAugment."
                )


def augmentation_seed(seed: int, global_step: int, rank: int, micro_step: int) -> int:
    """The seed of one micro-batch's augmentation: a hash of the run seed, the optimizer step, the process rank and
    the micro-step within gradient accumulation, so that no two micro-batches of a run share their random choices."""
    key = f"vtlm-augmentation/{int(seed)}/{int(global_step)}/{int(rank)}/{int(micro_step)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1  # 63 bits: any manual_seed


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
_OP_NAMES = list(OPS)
_IDENTITY = _OP_NAMES.index("identity")  # what an op drawn but not applied becomes
_RANDAUGMENT_OP_INDEX = torch.tensor([_OP_NAMES.index(name) for name in RANDAUGMENT_OPS])  # into OPS

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
def _auto_augment_table(policy, height, width):
    """A policy as three (P, 2) tensors, read only: op indices into OPS, probabilities and unsigned strengths."""
    sub_policies = AUTO_AUGMENT_POLICIES[policy]
    op_index = torch.tensor([[_OP_NAMES.index(name) for name, _, _ in pair] for pair in sub_policies])
    probability = torch.tensor([[prob for _, prob, _ in pair] for pair in sub_policies])
    strength = torch.tensor(
        [[auto_augment_strength(name, magnitude_bin, height, width) for name, _, magnitude_bin in pair]
         for pair in sub_policies]
    )  # fmt: skip
    return op_index, probability, strength


def _apply_ops(images, op_index, strength):
    """uint8 images (N, 3, H, W) -> uint8 images after rounds of per-image ops: op_index (rounds, N), indices into
    OPS, and strength (rounds, N), both on the CPU."""
    images = images.float()
    for round_ops, round_strength in zip(op_index, strength, strict=True):
        # Samples grouped by op, counted on the CPU: picking each op's samples never waits for the device.
        by_op = _to_device(torch.argsort(round_ops, stable=True), images.device)
        counts = torch.bincount(round_ops, minlength=len(OPS)).tolist()
        round_strength = _to_device(round_strength, images.device)
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
    rows, columns = ([_to_device(taps, images.device) for taps in axis] for axis in (rows, columns))
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


def _box_sides(n, attempts, image_area, area, aspect_ratio, generator):
    """`attempts` random boxes for each of n images, (N, attempts) integer heights and widths: the area a uniform
    fraction in `area` of `image_area`, width / height log-uniform in `aspect_ratio`."""
    box_area = image_area * torch.empty(n, attempts).uniform_(*area, generator=generator)
    ratio = torch.exp(torch.empty(n, attempts).uniform_(*map(math.log, aspect_ratio), generator=generator))
    return torch.round(torch.sqrt(box_area / ratio)).long(), torch.round(torch.sqrt(box_area * ratio)).long()


def _first_fit(box_height, box_width, fits):
    """Each image's first attempt whose box fits: (N,) height and width from (N, attempts) ones."""
    first = fits.int().argmax(1, keepdim=True)
    return box_height.gather(1, first)[:, 0], box_width.gather(1, first)[:, 0]


def _random_offset(room, generator):
    """A uniform integer in [0, room] for each (N,) entry of `room`."""
    offset = torch.floor(torch.rand(len(room), generator=generator) * (room + 1)).long()
    return torch.minimum(offset, room)  # rand * (room + 1) may round up to room + 1 in float32


class PixelNormalizer:
    """uint8 images (B, 3, H, W) -> float32 `(images / 255 - mean) / std`: the evaluation and inference transform, and
    the normalisation inside `BatchAugmentation`.

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
                _to_device(torch.tensor(values), images.device).view(1, 3, 1, 1) for values in (self.mean, self.std)
            )
        mean, std = self._on_device[images.device]
        return (images.float() / 255 - mean) / std


class BatchAugmentation:
    """Augments a training batch on its own device and returns `(pixel_values, targets)`.

    Args:
        args: the recipe.
        num_labels: the number of classes, the width of the targets.
        mean, std: per-channel normalisation on the 0-1 scale (`modeling.CIFAR100_MEAN`, `modeling.CIFAR100_STD`),
            done by `self.normalize`, a `PixelNormalizer`.
        label_smoothing: the targets are `one_hot * (1 - label_smoothing) + label_smoothing / num_labels` before
            mixing. The loss must then take these soft targets as they are, with no smoothing of its own.

    Example:
        >>> augment = BatchAugmentation(AugmentationArguments(), 100, CIFAR100_MEAN, CIFAR100_STD, 0.1)
        >>> pixel_values, targets = augment(images_uint8, labels, augmentation_seed(42, step, rank, micro_step))
        >>> loss = torch.sum(-targets * model(pixel_values).logits.log_softmax(-1), -1).mean()
    """

    crop_attempts = 10  # as torchvision's RandomResizedCrop, then the centre crop
    crop_aspect_ratio = (3 / 4, 4 / 3)  # width / height
    erasing_attempts = 10  # as timm: an image whose 10 drawn boxes all overflow it is not erased
    erasing_area = (0.02, 1 / 3)  # fraction of the image
    erasing_aspect_ratio = (0.3, 1 / 0.3)

    def __init__(
        self,
        args: AugmentationArguments,
        num_labels: int,
        mean: Sequence[float],
        std: Sequence[float],
        label_smoothing: float = 0.0,
    ):
        if num_labels < 1:
            raise ValueError(f"`num_labels` must be >= 1, got {num_labels}.")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
        self.args = args
        self.num_labels = num_labels
        self.normalize = PixelNormalizer(mean, std)
        self.label_smoothing = label_smoothing

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B, 3, H, W) and int64 labels (B,) -> pixel_values float32 (B, 3, H, W) and targets float32
        (B, num_labels) whose rows sum to 1. The same seed and inputs give bit-identical outputs."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must be uint8 (B, 3, H, W), got {images.dtype} {tuple(images.shape)}.")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"`labels` must have shape ({len(images)},), got {tuple(labels.shape)}.")
        generator = torch.Generator().manual_seed(seed)
        args = self.args
        if args.crop_padding > 0 or args.random_resized_crop_scale is not None or args.horizontal_flip:
            images = self._crop_and_flip(images, generator)
        if args.randaugment_num_ops > 0:
            images = _apply_ops(images, *self._randaugment_choices(len(images), generator))
        if args.auto_augment_policy is not None:
            images = _apply_ops(images, *self._auto_augment_choices(images.shape, generator))
        pixel_values = self.normalize(images)
        if args.random_erasing_prob > 0:
            pixel_values = self._random_erasing(pixel_values, generator)
        targets = F.one_hot(labels, self.num_labels).float() * (1 - self.label_smoothing)
        targets = targets + self.label_smoothing / self.num_labels
        if args.mixup_prob > 0 and (args.mixup_alpha > 0 or args.cutmix_alpha > 0):
            pixel_values, targets = self._mix(pixel_values, targets, generator)
        return pixel_values, targets

    def _crop_and_flip(self, images, generator):
        """Pad-and-crop or a RandomResizedCrop, then a left-right flip, as one resampling (`resized_crop`)."""
        n, _, height, width = images.shape
        if self.args.random_resized_crop_scale is not None:
            boxes = self._random_resized_crop_boxes(n, height, width, generator)
        else:  # an image-sized box of the zero-padded image, at most `crop_padding` off in each direction
            padding = self.args.crop_padding
            images = F.pad(images, (padding, padding, padding, padding))
            top, left = torch.randint(2 * padding + 1, (2, n), generator=generator)
            boxes = top, left, torch.full((n,), height), torch.full((n,), width)
        flip = torch.rand(n, generator=generator) < 0.5
        if not self.args.horizontal_flip:
            flip[:] = False
        return resized_crop(images, *boxes, (height, width), flip)

    def _random_resized_crop_boxes(self, n, height, width, generator):
        """torchvision's RandomResizedCrop boxes, per image: the first of `crop_attempts` boxes (area a uniform
        fraction in [random_resized_crop_scale, 1] of the image's, aspect ratio log-uniform in `crop_aspect_ratio`)
        that fits in the image, at a uniform position; an image that none fits gets the centre crop of the largest
        box within the ratio range. (top, left, box_height, box_width), each (N,) int64."""
        area = (self.args.random_resized_crop_scale, 1.0)
        box_heights, box_widths = _box_sides(
            n, self.crop_attempts, height * width, area, self.crop_aspect_ratio, generator
        )
        fits = (box_heights > 0) & (box_heights <= height) & (box_widths > 0) & (box_widths <= width)
        box_height, box_width = _first_fit(box_heights, box_widths, fits)
        top, left = _random_offset(height - box_height, generator), _random_offset(width - box_width, generator)

        min_ratio, max_ratio = self.crop_aspect_ratio
        fallback_height, fallback_width = height, width
        if width / height < min_ratio:
            fallback_height = round(width / min_ratio)
        elif width / height > max_ratio:
            fallback_width = round(height * max_ratio)
        fallback = ~fits.any(1)
        box_height = torch.where(fallback, fallback_height, box_height)
        box_width = torch.where(fallback, fallback_width, box_width)
        top = torch.where(fallback, (height - fallback_height) // 2, top)
        left = torch.where(fallback, (width - fallback_width) // 2, left)
        return top, left, box_height, box_width

    def _randaugment_choices(self, n, generator):
        """timm's RandAugment (`rand-m{magnitude}-mstd{std}-inc1`, with its `p`), per image: in each round, an op
        drawn uniformly (with replacement across rounds), applied with probability `randaugment_prob`, at a magnitude
        drawn from N(randaugment_magnitude, randaugment_magnitude_std) clipped to [0, 10], with a random sign. The ops
        are the paper's 14 (identity included), where timm's are 15 (no identity; Invert and SolarizeAdd), so at
        p = 0.5 a round leaves 0.5 + 0.5 / 14 of the images alone rather than 0.5. Returns `_apply_ops`' op indices
        and strengths, (rounds, N); an op not applied is identity."""
        args = self.args
        rounds = (args.randaugment_num_ops, n)
        choice = torch.randint(len(RANDAUGMENT_OPS), rounds, generator=generator)
        applied = torch.rand(rounds, generator=generator) < args.randaugment_prob
        noise = torch.randn(rounds, generator=generator)
        magnitude = (args.randaugment_magnitude + args.randaugment_magnitude_std * noise).clamp(0, 10)
        sign = 2 * torch.randint(2, rounds, generator=generator) - 1
        op_index = torch.where(applied, _RANDAUGMENT_OP_INDEX[choice], _IDENTITY)
        return op_index, sign * magnitude / 10

    def _auto_augment_choices(self, shape, generator):
        """torchvision's AutoAugment, per image: a sub-policy drawn uniformly, each of its two ops applied with its
        own probability, at its magnitude with a random sign (used by the signed ops only). Returns `_apply_ops`' op
        indices and strengths, (2, N); an op not applied is identity."""
        n, _, height, width = shape
        op_indices, probabilities, strengths = _auto_augment_table(self.args.auto_augment_policy, height, width)
        sub_policy = torch.randint(len(op_indices), (n,), generator=generator)
        applied = torch.rand(n, 2, generator=generator) < probabilities[sub_policy]
        sign = 2 * torch.randint(2, (n, 2), generator=generator) - 1
        op_index = torch.where(applied, op_indices[sub_policy], _IDENTITY)
        return op_index.T.contiguous(), (sign * strengths[sub_policy]).T.contiguous()

    def _random_erasing(self, pixel_values, generator):
        """timm's RandomErasing ("pixel" mode): with probability `random_erasing_prob`, a box of random area and
        aspect ratio is filled with standard normal noise (in normalised units)."""
        n, _, height, width = pixel_values.shape
        device = pixel_values.device
        erase = torch.rand(n, generator=generator) < self.args.random_erasing_prob
        box_heights, box_widths = _box_sides(
            n, self.erasing_attempts, height * width, self.erasing_area, self.erasing_aspect_ratio, generator
        )
        fits = (box_heights < height) & (box_widths < width)
        box_height, box_width = _first_fit(box_heights, box_widths, fits)
        top, left = _random_offset(height - box_height, generator), _random_offset(width - box_width, generator)
        noise_seed = int(torch.randint(2**62, (), generator=generator))

        erased = (erase & fits.any(1)).nonzero().squeeze(1)
        box = [_to_device(value[erased], device) for value in (top, left, box_height, box_width)]
        inside = _box_mask(*box, height, width)  # (E, H, W)
        noise_generator = torch.Generator(device).manual_seed(noise_seed)
        noise = torch.randn((len(erased), 3, height, width), generator=noise_generator, device=device)
        erased = _to_device(erased, device)
        pixel_values[erased] = torch.where(inside[:, None], noise, pixel_values[erased])
        return pixel_values

    def _mix(self, pixel_values, targets, generator):
        """timm's Mixup in its per-sample ("elem") mode: image i is mixed with image B-1-i with probability
        `mixup_prob`, by CutMix with probability `mixup_switch_prob` (when both are on) or else by Mixup. Its target
        becomes `lam * own + (1 - lam) * partner`, lam being the share of the image's own pixels (CutMix's lam is
        corrected to the clipped box, as timm's `correct_lam`)."""
        args = self.args
        n, _, height, width = pixel_values.shape
        device = pixel_values.device
        mixed = torch.rand(n, generator=generator) < args.mixup_prob
        if args.mixup_alpha > 0 and args.cutmix_alpha > 0:
            cutmix = torch.rand(n, generator=generator) < args.mixup_switch_prob
        else:
            cutmix = torch.full((n,), args.cutmix_alpha > 0)
        # torch.distributions.Beta takes no generator; NumPy's does, seeded from ours.
        beta_rng = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
        alpha = np.where(cutmix.numpy(), args.cutmix_alpha, args.mixup_alpha).clip(min=1e-3)  # unused where 0
        lam = torch.where(mixed, torch.from_numpy(beta_rng.beta(alpha, alpha)).float(), 1.0)

        # CutMix's box: area ~ (1 - lam), centred on a uniform pixel, clipped to the image (timm's rand_bbox).
        cut_height = (height * torch.sqrt(1 - lam)).long()
        cut_width = (width * torch.sqrt(1 - lam)).long()
        centre_y = torch.randint(height, (n,), generator=generator)
        centre_x = torch.randint(width, (n,), generator=generator)
        top, bottom = (centre_y - cut_height // 2).clamp(0, height), (centre_y + cut_height // 2).clamp(0, height)
        left, right = (centre_x - cut_width // 2).clamp(0, width), (centre_x + cut_width // 2).clamp(0, width)
        box_height, box_width = torch.where(cutmix, bottom - top, 0), torch.where(cutmix, right - left, 0)
        lam = torch.where(cutmix, 1 - box_height * box_width / (height * width), lam)

        box = [_to_device(value, device) for value in (top, left, box_height, box_width)]
        inside = _box_mask(*box, height, width)[:, None]  # (B, 1, H, W), empty for Mixup and unmixed images
        blend = _to_device(torch.where(cutmix, 1.0, lam), device).view(-1, 1, 1, 1)
        partner = pixel_values.flip(0)
        # lerp(partner, own, 1) is exactly own: an unmixed image comes through bit for bit.
        pixel_values = torch.where(inside, partner, partner.lerp(pixel_values, blend))
        lam = _to_device(lam, targets.device)[:, None]
        return pixel_values, lam * targets + (1 - lam) * targets.flip(0)


def _to_device(tensor, device):
    """A CPU tensor onto `device`. Onto a GPU through pinned memory and without blocking: a copy from pageable memory
    would first wait for all the work already queued on the GPU."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _box_mask(top, left, box_height, box_width, height, width):
    """(N, H, W) bool, True inside each of the N boxes given by (N,) integer tensors."""
    rows = torch.arange(height, device=top.device).view(1, -1, 1)
    columns = torch.arange(width, device=top.device).view(1, 1, -1)
    top, left = top.view(-1, 1, 1), left.view(-1, 1, 1)
    inside_rows = (rows >= top) & (rows < top + box_height.view(-1, 1, 1))
    inside_columns = (columns >= left) & (columns < left + box_width.view(-1, 1, 1))
    return inside_rows & inside_columns
