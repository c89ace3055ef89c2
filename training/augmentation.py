"""Batch augmentation for training: whole uint8 batches in, normalised pixels and soft targets out, on any device.

A ViT of tens of millions of parameters on an H100 takes tens of thousands of 32x32 images a second, far more than
per-image PIL transforms in data-loader workers deliver. So the loader hands over uint8 batches that are already on
the training device, and every step below is a batched torch op on that device:

    crop (pad-and-crop or RandomResizedCrop) -> horizontal flip -> RandAugment or AutoAugment -> normalise
        -> random erasing -> Mixup / CutMix

which is timm's order (erasing inside the loader, mixing on the batch). Every random choice is per sample.
RandAugment follows timm's `rand-m9-mstd0.5-inc1` (each round's op applied with probability 0.5, at a magnitude drawn
per image); AutoAugment is torchvision's, with its CIFAR-10 policy (the original model's recipe). Evaluation only
normalises (`training.image_ops.Normalize`).

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
draw from the global RNG (they take no generator). Ours (`training/image_ops.py` and the draws below) are short, per
sample, and take a generator.
"""

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from .arguments import AugmentationArguments
from .image_ops import (
    IDENTITY_INDEX,
    RANDAUGMENT_OP_INDEX,
    RANDAUGMENT_OPS,
    Normalize,
    apply_ops,
    auto_augment_table,
    resized_crop,
    to_device,
)


def augmentation_seed(seed: int, global_step: int, rank: int, micro_step: int, stream: str = "augmentation") -> int:
    """The seed of one micro-batch's augmentation: a hash of the run seed, the optimizer step, the process rank and
    the micro-step within gradient accumulation, so that no two micro-batches of a run share their random choices.
    Another `stream` (pre-training's "mask") gives the same micro-batch independent draws of its own."""
    key = f"vtlm-{stream}/{int(seed)}/{int(global_step)}/{int(rank)}/{int(micro_step)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1  # 63 bits: any manual_seed


class BatchAugmentation:
    """Augments a training batch on its own device and returns `(pixel_values, targets)`.

    Args:
        args: the recipe.
        num_labels: the number of classes, the width of the targets.
        label_smoothing: the targets are `one_hot * (1 - label_smoothing) + label_smoothing / num_labels` before
            mixing. The loss must then take these soft targets as they are, with no smoothing of its own.

    Example:
        >>> augment = BatchAugmentation(AugmentationArguments(), 100, 0.1)
        >>> normalize = Normalize(CIFAR100_MEAN, CIFAR100_STD)
        >>> seed = augmentation_seed(42, step, rank, micro_step)
        >>> pixel_values, targets = augment(images_uint8, labels, seed, normalize)
        >>> loss = torch.sum(-targets * model(pixel_values).logits.log_softmax(-1), -1).mean()
    """

    crop_attempts = 10  # as torchvision's RandomResizedCrop, then the centre crop
    crop_aspect_ratio = (3 / 4, 4 / 3)  # width / height
    erasing_attempts = 10  # as timm: an image whose 10 drawn boxes all overflow it is not erased
    erasing_area = (0.02, 1 / 3)  # fraction of the image
    erasing_aspect_ratio = (0.3, 1 / 0.3)

    def __init__(self, args: AugmentationArguments, num_labels: int, label_smoothing: float = 0.0):
        if num_labels < 1:
            raise ValueError(f"`num_labels` must be >= 1, got {num_labels}.")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
        self.args = args
        self.num_labels = num_labels
        self.label_smoothing = label_smoothing

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, seed: int, normalize: Normalize
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B, 3, H, W) and int64 labels (B,) -> pixel_values float32 (B, 3, H, W) and targets float32
        (B, num_labels) whose rows sum to 1. `normalize` turns the augmented uint8 images into pixel values, between
        the ops on pixels and those on normalised values. The same seed and inputs give bit-identical outputs."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must be uint8 (B, 3, H, W), got {images.dtype} {tuple(images.shape)}.")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"`labels` must have shape ({len(images)},), got {tuple(labels.shape)}.")
        generator = torch.Generator().manual_seed(seed)
        args = self.args
        if args.crop_padding > 0 or args.random_resized_crop_scale is not None or args.horizontal_flip:
            images = self._crop_and_flip(images, generator)
        if args.randaugment_num_ops > 0:
            images = apply_ops(images, *self._randaugment_choices(len(images), generator))
        if args.auto_augment_policy is not None:
            images = apply_ops(images, *self._auto_augment_choices(images.shape, generator))
        pixel_values = normalize(images)
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
        p = 0.5 a round leaves 0.5 + 0.5 / 14 of the images alone rather than 0.5. Returns `apply_ops`' op indices
        and strengths, (rounds, N); an op not applied is identity."""
        args = self.args
        rounds = (args.randaugment_num_ops, n)
        choice = torch.randint(len(RANDAUGMENT_OPS), rounds, generator=generator)
        applied = torch.rand(rounds, generator=generator) < args.randaugment_prob
        noise = torch.randn(rounds, generator=generator)
        magnitude = (args.randaugment_magnitude + args.randaugment_magnitude_std * noise).clamp(0, 10)
        sign = 2 * torch.randint(2, rounds, generator=generator) - 1
        op_index = torch.where(applied, RANDAUGMENT_OP_INDEX[choice], IDENTITY_INDEX)
        return op_index, sign * magnitude / 10

    def _auto_augment_choices(self, shape, generator):
        """torchvision's AutoAugment, per image: a sub-policy drawn uniformly, each of its two ops applied with its
        own probability, at its magnitude with a random sign (used by the signed ops only). Returns `apply_ops`' op
        indices and strengths, (2, N); an op not applied is identity."""
        n, _, height, width = shape
        op_indices, probabilities, strengths = auto_augment_table(self.args.auto_augment_policy, height, width)
        sub_policy = torch.randint(len(op_indices), (n,), generator=generator)
        applied = torch.rand(n, 2, generator=generator) < probabilities[sub_policy]
        sign = 2 * torch.randint(2, (n, 2), generator=generator) - 1
        op_index = torch.where(applied, op_indices[sub_policy], IDENTITY_INDEX)
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
        box = [to_device(value[erased], device) for value in (top, left, box_height, box_width)]
        inside = _box_mask(*box, height, width)  # (E, H, W)
        noise_generator = torch.Generator(device).manual_seed(noise_seed)
        noise = torch.randn((len(erased), 3, height, width), generator=noise_generator, device=device)
        erased = to_device(erased, device)
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

        box = [to_device(value, device) for value in (top, left, box_height, box_width)]
        inside = _box_mask(*box, height, width)[:, None]  # (B, 1, H, W), empty for Mixup and unmixed images
        blend = to_device(torch.where(cutmix, 1.0, lam), device).view(-1, 1, 1, 1)
        partner = pixel_values.flip(0)
        # lerp(partner, own, 1) is exactly own: an unmixed image comes through bit for bit.
        pixel_values = torch.where(inside, partner, partner.lerp(pixel_values, blend))
        lam = to_device(lam, targets.device)[:, None]
        return pixel_values, lam * targets + (1 - lam) * targets.flip(0)


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


def _box_mask(top, left, box_height, box_width, height, width):
    """(N, H, W) bool, True inside each of the N boxes given by (N,) integer tensors."""
    rows = torch.arange(height, device=top.device).view(1, -1, 1)
    columns = torch.arange(width, device=top.device).view(1, 1, -1)
    top, left = top.view(-1, 1, 1), left.view(-1, 1, 1)
    inside_rows = (rows >= top) & (rows < top + box_height.view(-1, 1, 1))
    inside_columns = (columns >= left) & (columns < left + box_width.view(-1, 1, 1))
    return inside_rows & inside_columns
