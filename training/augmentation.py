"""Batch augmentation for training: whole uint8 batches in, normalised pixels and soft targets out, on any device.

A ViT of tens of millions of parameters on an H100 takes tens of thousands of 32x32 images a second, far more than
per-image PIL transforms in data-loader workers deliver. So the loader hands over uint8 batches that are already on
the training device, and every step below is a batched torch op on that device:

    pad-and-crop -> horizontal flip -> RandAugment -> normalise -> random erasing -> Mixup / CutMix

which is timm's order (erasing inside the loader, mixing on the batch). Every random choice is per sample.

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
    (DeiT's ingredients with CIFAR's pad-and-crop); 0 (or False) turns an ingredient off."""

    crop_padding: int = field(
        default=4,
        metadata={
            "help": "Zero-pad each side by this many pixels, then crop a random image-sized window (0: no crop). "
            "Pad-and-crop is the CIFAR standard: it shifts pixels without resampling them, where a RandomResizedCrop "
            "would blur 32x32 images for a zoom range that RandAugment's shear and translate already cover."
        },
    )
    horizontal_flip: bool = field(default=True, metadata={"help": "Flip each image left-right with probability 0.5."})
    randaugment_num_ops: int = field(
        default=2, metadata={"help": "RandAugment ops applied to each image, chosen per image (0: no RandAugment)."}
    )
    randaugment_magnitude: float = field(
        default=9.0,
        metadata={"help": "RandAugment magnitude on the 0-10 scale of the paper and timm (10: strongest)."},
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
        for name in ("crop_padding", "randaugment_num_ops"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if not 0 <= self.randaugment_magnitude <= 10:
            raise ValueError(f"`randaugment_magnitude` must be in [0, 10], got {self.randaugment_magnitude}.")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        for name in ("mixup_prob", "mixup_switch_prob", "random_erasing_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")


def augmentation_seed(seed: int, global_step: int, rank: int, micro_step: int) -> int:
    """The seed of one micro-batch's augmentation: a hash of the run seed, the optimizer step, the process rank and
    the micro-step within gradient accumulation, so that no two micro-batches of a run share their random choices."""
    key = f"vtlm-augmentation/{int(seed)}/{int(global_step)}/{int(rank)}/{int(micro_step)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1  # 63 bits: any manual_seed


# RandAugment ops. Each takes images (N, 3, H, W), float32 holding integers in [0, 255], and a strength (N,) in
# [-1, 1]: the magnitude / 10 with a random sign. Signed ops (geometry, colour factors) use the sign; the others use
# |strength|. The caller clamps and truncates the result to integers, as an op on a PIL uint8 image would. Ranges at
# strength 1 are timm's: 30 degrees, shear 0.3, a translation of 0.45 of the side, enhance factors 1 +- 0.9; solarize
# and posterize grow stronger with the magnitude (as in timm's "increasing" ops and torchvision). Colour ops follow
# Pillow's definitions (ImageOps / ImageEnhance), which the tests compare against.
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


class BatchAugmentation:
    """Augments a training batch on its own device and returns `(pixel_values, targets)`.

    Args:
        args: the recipe.
        num_labels: the number of classes, the width of the targets.
        mean, std: per-channel normalisation on the 0-1 scale (`modeling.CIFAR100_MEAN`, `modeling.CIFAR100_STD`).
        label_smoothing: the targets are `one_hot * (1 - label_smoothing) + label_smoothing / num_labels` before
            mixing. The loss must then take these soft targets as they are, with no smoothing of its own.

    Example:
        >>> augment = BatchAugmentation(AugmentationArguments(), 100, CIFAR100_MEAN, CIFAR100_STD, 0.1)
        >>> pixel_values, targets = augment(images_uint8, labels, augmentation_seed(42, step, rank, micro_step))
        >>> loss = torch.sum(-targets * model(pixel_values).logits.log_softmax(-1), -1).mean()
    """

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
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"`mean` and `std` need 3 values each and `std` > 0, got mean={mean}, std={std}.")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
        self.args = args
        self.num_labels = num_labels
        self.mean = tuple(float(value) for value in mean)
        self.std = tuple(float(value) for value in std)
        self.label_smoothing = label_smoothing

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float32 (B, 3, H, W), `(images / 255 - mean) / std`: the evaluation transform."""
        mean, std = self._normalization(images.device)
        return (images.float() / 255 - mean) / std

    @functools.cache  # noqa: B019  (one entry per device, for the life of the augmentation)
    def _normalization(self, device):
        """mean and std as (1, 3, 1, 1) tensors on `device`, made once rather than every batch."""
        mean = _to_device(torch.tensor(self.mean), device).view(1, 3, 1, 1)
        std = _to_device(torch.tensor(self.std), device).view(1, 3, 1, 1)
        return mean, std

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
        if args.crop_padding > 0 or args.horizontal_flip:
            images = self._crop_and_flip(images, generator)
        if args.randaugment_num_ops > 0:
            images = self._randaugment(images.float(), generator).to(torch.uint8)
        pixel_values = self.normalize(images)
        if args.random_erasing_prob > 0:
            pixel_values = self._random_erasing(pixel_values, generator)
        targets = F.one_hot(labels, self.num_labels).float() * (1 - self.label_smoothing)
        targets = targets + self.label_smoothing / self.num_labels
        if args.mixup_prob > 0 and (args.mixup_alpha > 0 or args.cutmix_alpha > 0):
            pixel_values, targets = self._mix(pixel_values, targets, generator)
        return pixel_values, targets

    def _crop_and_flip(self, images, generator):
        """Pad-and-crop, then a left-right flip, as one gather: output pixel (i, j) of a crop at (top, left) is padded
        pixel (top + i, left + j), or (top + i, left + W - 1 - j) when the crop is flipped."""
        n, _, height, width = images.shape
        padding = self.args.crop_padding
        padded = F.pad(images, (padding, padding, padding, padding))
        top, left = torch.randint(2 * padding + 1, (2, n), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        if not self.args.horizontal_flip:
            flip[:] = False
        rows = top[:, None] + torch.arange(height)  # (B, H)
        columns = torch.arange(width).expand(n, width)
        columns = left[:, None] + torch.where(flip[:, None], columns.flip(1), columns)  # (B, W)
        rows = _to_device(rows, images.device).view(n, 1, height, 1).expand(n, 3, height, width + 2 * padding)
        columns = _to_device(columns, images.device).view(n, 1, 1, width).expand(n, 3, height, width)
        return padded.gather(2, rows).gather(3, columns)

    def _randaugment(self, images, generator):
        """Each of `randaugment_num_ops` rounds gives every image its own op (uniform over the 14) and sign."""
        n = len(images)
        magnitude = self.args.randaugment_magnitude / 10
        for _ in range(self.args.randaugment_num_ops):
            choice = torch.randint(len(RANDAUGMENT_OPS), (n,), generator=generator)
            strength = magnitude * (2 * torch.randint(2, (n,), generator=generator) - 1).float()
            # Samples grouped by op, counted on the CPU: picking each op's samples never waits for the device.
            by_op = _to_device(torch.argsort(choice, stable=True), images.device)
            counts = torch.bincount(choice, minlength=len(RANDAUGMENT_OPS)).tolist()
            strength = _to_device(strength, images.device)
            for op, chosen in zip(RANDAUGMENT_OPS.values(), by_op.split(counts), strict=True):
                if len(chosen) > 0 and op is not identity:
                    images[chosen] = op(images[chosen], strength[chosen]).clamp(0, 255).floor()
        return images

    def _random_erasing(self, pixel_values, generator):
        """timm's RandomErasing ("pixel" mode): with probability `random_erasing_prob`, a box of random area and
        aspect ratio is filled with standard normal noise (in normalised units)."""
        n, _, height, width = pixel_values.shape
        device = pixel_values.device
        erase = torch.rand(n, generator=generator) < self.args.random_erasing_prob
        attempts = (n, self.erasing_attempts)
        area = height * width * torch.empty(attempts).uniform_(*self.erasing_area, generator=generator)
        aspect_ratio = torch.exp(
            torch.empty(attempts).uniform_(*map(math.log, self.erasing_aspect_ratio), generator=generator)
        )
        box_heights = torch.round(torch.sqrt(area * aspect_ratio)).long()
        box_widths = torch.round(torch.sqrt(area / aspect_ratio)).long()
        fits = (box_heights < height) & (box_widths < width)
        first_fit = fits.int().argmax(1, keepdim=True)
        box_height, box_width = box_heights.gather(1, first_fit)[:, 0], box_widths.gather(1, first_fit)[:, 0]
        top = torch.floor(torch.rand(n, generator=generator) * (height - box_height + 1)).long()
        left = torch.floor(torch.rand(n, generator=generator) * (width - box_width + 1)).long()
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
