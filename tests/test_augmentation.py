"""Tests of the batch augmentation: each ingredient alone against what it must do, the recipe's outputs, the ops and
crops against Pillow, RandAugment's and AutoAugment's draws against timm's and torchvision's semantics, and the seeding
contract that exact resume relies on."""

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps
from transformers import HfArgumentParser

from vtlm.modeling import CIFAR100_MEAN, CIFAR100_STD
from vtlm.training.arguments import AugmentationArguments
from vtlm.training.augmentation import BatchAugmentation, augmentation_seed
from vtlm.training.image_ops import (
    AUTO_AUGMENT_POLICIES,
    MAX_ENHANCE,
    MAX_ROTATE_DEGREES,
    MAX_SHEAR,
    MAX_TRANSLATE,
    OPS,
    RANDAUGMENT_OPS,
    Normalize,
    auto_augment_strength,
    resized_crop,
)

NUM_LABELS = 100
ALL_OFF = {
    "crop_padding": 0,
    "horizontal_flip": False,
    "randaugment_num_ops": 0,
    "mixup_prob": 0.0,
    "random_erasing_prob": 0.0,
}


def make_images(n, height=32, width=32, seed=0):
    """uint8 (n, 3, H, W) with structure (smooth blobs) and noise, so that every op has something to change."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(30, 220, (n, 3, 4, 4), generator=generator).float()
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noise = torch.randint(-20, 21, (n, 3, height, width), generator=generator)
    return (smooth + noise).clamp(0, 255).to(torch.uint8)


# What the trainer builds from CIFAR-100's image processor and hands to every call.
normalize = Normalize(CIFAR100_MEAN, CIFAR100_STD)


def with_normalize(augment):
    """`augment` called as the trainer calls it, with the trainer's `normalize`."""
    return functools.partial(augment, normalize=normalize)


def augmentation(label_smoothing=0.0, **fields):
    args = AugmentationArguments(**{**ALL_OFF, **fields})
    return with_normalize(BatchAugmentation(args, NUM_LABELS, label_smoothing))


def smoothed_one_hot(labels, label_smoothing):
    return F.one_hot(labels, NUM_LABELS).float() * (1 - label_smoothing) + label_smoothing / NUM_LABELS


IDENTITY = list(OPS).index("identity")
# The original model's (Madras1/VTLM37m) recipe: RandomResizedCrop(scale=(0.8, 1)), flip, AutoAugment's CIFAR-10 policy.
ORIGINAL_RECIPE = {
    "crop_padding": 0,
    "random_resized_crop_scale": 0.8,
    "randaugment_num_ops": 0,
    "auto_augment_policy": "cifar10",
}


# Arguments and seeds


def test_arguments_parse_from_the_command_line():
    (args,) = HfArgumentParser(AugmentationArguments).parse_args_into_dataclasses(
        ["--mixup_alpha", "0.2", "--no_horizontal_flip", "--randaugment_num_ops", "3"]
    )
    assert (args.mixup_alpha, args.horizontal_flip, args.randaugment_num_ops) == (0.2, False, 3)
    assert args.cutmix_alpha == AugmentationArguments().cutmix_alpha


@pytest.mark.parametrize(
    "name, value",
    [
        ("crop_padding", -1),
        ("randaugment_num_ops", -1),
        ("randaugment_magnitude", 10.5),
        ("randaugment_magnitude", -1.0),
        ("mixup_alpha", -0.1),
        ("cutmix_alpha", -1.0),
        ("mixup_prob", 1.5),
        ("mixup_switch_prob", -0.5),
        ("random_erasing_prob", 2.0),
        ("randaugment_prob", 1.5),
        ("randaugment_prob", -0.1),
        ("randaugment_magnitude_std", -0.5),
        ("randaugment_magnitude_std", float("nan")),
        ("randaugment_magnitude_std", float("inf")),
    ],
)
def test_bad_arguments_raise_naming_the_field(name, value):
    with pytest.raises(ValueError, match=name):
        AugmentationArguments(**{name: value})


@pytest.mark.parametrize(
    "fields, name",
    [
        ({"crop_padding": 0, "random_resized_crop_scale": 0.0}, "random_resized_crop_scale"),
        ({"crop_padding": 0, "random_resized_crop_scale": 1.5}, "random_resized_crop_scale"),
        ({"randaugment_num_ops": 0, "auto_augment_policy": "imagenet"}, "auto_augment_policy"),
    ],
)
def test_bad_crop_and_policy_arguments_raise_naming_the_field(fields, name):
    with pytest.raises(ValueError, match=name):
        AugmentationArguments(**fields)


@pytest.mark.parametrize(
    "fields, names",
    [
        ({"random_resized_crop_scale": 0.8}, ("random_resized_crop_scale", "crop_padding")),
        ({"auto_augment_policy": "cifar10"}, ("auto_augment_policy", "randaugment_num_ops")),
    ],
)
def test_two_crops_or_two_policies_are_refused_naming_both(fields, names):
    with pytest.raises(ValueError) as error:
        AugmentationArguments(**fields)
    assert all(f"`{name}`" in str(error.value) for name in names), error.value


def test_randaugment_defaults_are_timms_rand_m9_mstd05_and_the_original_recipe_parses():
    args = AugmentationArguments()
    randaugment = (args.randaugment_num_ops, args.randaugment_magnitude, args.randaugment_magnitude_std)
    assert randaugment + (args.randaugment_prob,) == (2, 9.0, 0.5, 0.5)
    assert args.auto_augment_policy is None and args.random_resized_crop_scale is None
    command_line = [f"--{name}={value}" for name, value in ORIGINAL_RECIPE.items()]
    (args,) = HfArgumentParser(AugmentationArguments).parse_args_into_dataclasses(command_line)
    assert {name: getattr(args, name) for name in ORIGINAL_RECIPE} == ORIGINAL_RECIPE


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_labels": 0}, "num_labels"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_bad_constructor_values_raise(kwargs, match):
    values = {"num_labels": NUM_LABELS, "mean": CIFAR100_MEAN, "std": CIFAR100_STD, "label_smoothing": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        if match in ("mean", "std"):
            Normalize(values["mean"], values["std"])
        else:
            BatchAugmentation(AugmentationArguments(), values["num_labels"], values["label_smoothing"])


def test_bad_inputs_raise():
    augment = augmentation()
    images, labels = make_images(4), torch.arange(4)
    with pytest.raises(ValueError, match="images"):
        augment(images.float(), labels, seed=0)
    with pytest.raises(ValueError, match="images"):
        augment(images[:, :1], labels, seed=0)
    with pytest.raises(ValueError, match="labels"):
        augment(images, labels[:3], seed=0)


def test_augmentation_seed_is_stable_and_separates_every_component():
    seeds = [augmentation_seed(*key) for key in [(42, 7, 0, 0), (43, 7, 0, 0), (42, 8, 0, 0), (42, 7, 1, 0)]]
    seeds.append(augmentation_seed(42, 7, 0, 1))
    assert len(set(seeds)) == len(seeds)
    assert augmentation_seed(42, 7, 0, 0) == seeds[0]
    assert all(0 <= seed < 2**63 for seed in seeds)
    augment = with_normalize(BatchAugmentation(AugmentationArguments(), NUM_LABELS, 0.1))
    images, labels = make_images(8, 32, 32), torch.arange(8)
    batches = [augment(images, labels, seed=seed)[0] for seed in (seeds[0], seeds[0], seeds[1])]
    assert torch.equal(batches[0], batches[1])  # a seed is a batch: a resumed run sees the same pixels
    assert not torch.equal(batches[0], batches[2])


# The whole recipe


@pytest.mark.parametrize("height, width", [(32, 32), (24, 40)])
def test_full_recipe_outputs(height, width):
    augment = with_normalize(BatchAugmentation(AugmentationArguments(), NUM_LABELS, 0.1))
    images, labels = make_images(32, height, width), torch.arange(32) * 3
    before = images.clone()
    pixel_values, targets = augment(images, labels, seed=1)
    assert pixel_values.shape == (32, 3, height, width) and pixel_values.dtype == torch.float32
    assert targets.shape == (32, NUM_LABELS) and targets.dtype == torch.float32
    assert torch.isfinite(pixel_values).all() and (targets >= 0).all()
    torch.testing.assert_close(targets.sum(1), torch.ones(32))
    assert torch.equal(images, before), "the caller's batch must not be modified"
    assert not torch.equal(pixel_values, normalize(images))


def test_values_stay_in_the_normalised_range_without_erasing():
    augment = with_normalize(BatchAugmentation(AugmentationArguments(random_erasing_prob=0.0), NUM_LABELS))
    pixel_values, _ = augment(make_images(64), torch.arange(64), seed=2)
    mean, std = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    assert (pixel_values >= (0 - mean) / std - 1e-5).all() and (pixel_values <= (1 - mean) / std + 1e-5).all()


def test_normalize_and_all_off_is_normalize():
    images, labels = make_images(8), torch.arange(8)
    augment = augmentation(label_smoothing=0.1)
    expected = (
        images.double() / 255 - torch.tensor(CIFAR100_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    ) / torch.tensor(CIFAR100_STD, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(images), expected.float())
    pixel_values, targets = augment(images, labels, seed=3)
    assert torch.equal(pixel_values, normalize(images))
    torch.testing.assert_close(targets, smoothed_one_hot(labels, 0.1), rtol=0, atol=1e-7)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_targets_without_mixing_are_smoothed_one_hot(label_smoothing):
    args = AugmentationArguments(mixup_prob=0.0)
    augment = with_normalize(BatchAugmentation(args, NUM_LABELS, label_smoothing))
    labels = torch.randint(NUM_LABELS, (16,), generator=torch.Generator().manual_seed(0))
    _, targets = augment(make_images(16), labels, seed=4)
    torch.testing.assert_close(targets, smoothed_one_hot(labels, label_smoothing), rtol=0, atol=1e-7)


# One ingredient at a time


def coordinate_images(n, size=32):
    """Red holds each pixel's row and green its column (7 levels apart, from 10): a crop or flip can be read back."""
    rows = torch.arange(size).view(1, size, 1).expand(n, size, size)
    return torch.stack([10 + 7 * rows, 10 + 7 * rows.transpose(1, 2), torch.full_like(rows, 128)], 1).to(torch.uint8)


@pytest.mark.parametrize("crop_padding, horizontal_flip", [(4, False), (0, True), (4, True), (2, True)])
def test_crop_and_flip_are_a_zero_filled_shift_of_at_most_the_padding_and_a_mirror(crop_padding, horizontal_flip):
    images = coordinate_images(512)
    augment = augmentation(crop_padding=crop_padding, horizontal_flip=horizontal_flip)
    pixel_values, _ = augment(images, torch.arange(512) % NUM_LABELS, seed=5)
    outputs = pixel_values * torch.tensor(CIFAR100_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    outputs = torch.round(outputs * 255).long()  # back to uint8 values
    flipped = outputs[:, 1, 16, 17] < outputs[:, 1, 16, 16]  # columns run right to left
    crops = torch.where(flipped.view(-1, 1, 1, 1), outputs.flip(-1), outputs)
    # Read each crop's source at the centre pixel, which no shift of at most 4 moves off the image.
    shift_y = (crops[:, 0, 16, 16] - 10) // 7 - 16
    shift_x = (crops[:, 1, 16, 16] - 10) // 7 - 16
    for crop, dy, dx in zip(crops, shift_y, shift_x, strict=True):
        assert torch.equal(crop, F.pad(images[0], (4, 4, 4, 4))[:, 4 + dy : 4 + dy + 32, 4 + dx : 4 + dx + 32].long())
    for shifts in (shift_y, shift_x):
        counts = torch.bincount(shifts + crop_padding, minlength=2 * crop_padding + 1)
        assert len(counts) == 2 * crop_padding + 1, f"shifts beyond the padding: {shifts.unique()}"
        assert (counts > 0.5 * 512 / len(counts)).all() and (counts < 1.5 * 512 / len(counts)).all(), counts
    assert 0.4 < flipped.float().mean() < 0.6 if horizontal_flip else not flipped.any()


def test_resized_crop_matches_pillow():
    # torchvision's resized_crop of a PIL image: crop the box, resize it bilinearly (here back to the image's size).
    n, height, width = 16, 24, 40
    generator = torch.Generator().manual_seed(18)
    images = make_images(n, height, width, seed=18)
    box_height = torch.randint(12, height + 1, (n,), generator=generator)
    box_width = torch.randint(20, width + 1, (n,), generator=generator)
    top = (torch.rand(n, generator=generator) * (height - box_height + 1)).long()
    left = (torch.rand(n, generator=generator) * (width - box_width + 1)).long()
    flip = torch.arange(n) % 2 == 1
    output = resized_crop(images, top, left, box_height, box_width, (height, width), flip)
    assert output.shape == (n, 3, height, width) and output.dtype == torch.uint8
    for i, image in enumerate(images):
        box = (left[i].item(), top[i].item(), (left[i] + box_width[i]).item(), (top[i] + box_height[i]).item())
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).crop(box).resize((width, height), Image.BILINEAR)
        pil = ImageOps.mirror(pil) if flip[i] else pil
        difference = (output[i].int() - torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).int()).abs()
        # Pillow rounds to whole values after each of its two passes, resized_crop once at the end.
        assert difference.max() <= 1 and difference.double().mean() < 0.3, (i, difference.max())


def random_resized_crop_boxes(n, height, width, scale=0.8, seed=0):
    augment = augmentation(random_resized_crop_scale=scale)
    return augment.func._random_resized_crop_boxes(n, height, width, torch.Generator().manual_seed(seed))


def test_random_resized_crop_boxes_lie_in_the_image_within_the_scale_and_ratio():
    top, left, box_height, box_width = random_resized_crop_boxes(20000, 32, 32)
    assert (top >= 0).all() and (left >= 0).all() and (top + box_height <= 32).all() and (left + box_width <= 32).all()
    # Sides are rounded to whole pixels: the area moves by up to about half a pixel per side (1.6% of it per side).
    area, ratio = box_height * box_width / 32**2, box_width / box_height
    assert area.min() > 0.8 - 0.035 and area.max() <= 1
    assert ratio.min() > 3 / 4 * 0.96 and ratio.max() < 4 / 3 * 1.04
    assert area.min() < 0.8 and area.quantile(0.5) < 0.95, "the whole scale range is drawn"
    for offset, room in ((top, 32 - box_height), (left, 32 - box_width)):
        where = room > 0
        position = offset[where] / room[where]  # uniform in [0, 1] over the room left
        assert abs(position.mean() - 0.5) < 0.02 and (position == 0).any() and (position == 1).any()


@pytest.mark.parametrize("height, width, box", [(4, 64, (0, 29, 4, 5)), (64, 4, (29, 0, 5, 4))])
def test_random_resized_crop_falls_back_to_the_centre_crop(height, width, box):
    # No box of at least 0.8 of the area with width / height in [3/4, 4/3] fits in a 4x64 image: torchvision then
    # takes the largest box of the nearest allowed ratio, 4 x round(4 * 4/3) = 4 x 5, at the centre, (64 - 5) // 2.
    for value, expected in zip(random_resized_crop_boxes(100, height, width), box, strict=True):
        assert (value == expected).all()


def test_random_resized_crop_zooms_into_a_box_per_image_then_flips():
    n = 512
    images = coordinate_images(n)
    augment = augmentation(random_resized_crop_scale=0.8, horizontal_flip=True)
    pixel_values, _ = augment(images, torch.arange(n) % NUM_LABELS, seed=19)
    outputs = pixel_values * torch.tensor(CIFAR100_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    outputs = (outputs * 255).double()
    # Bilinear resampling keeps a ramp a ramp: output row i reads box row (i + 0.5) * box_height / 32 - 0.5, so the
    # red ramp (10 + 7 * row) falls on a line of slope 7 * box_height / 32. Rows near the edges are clamped: skip them.
    inner = torch.arange(4, 28).double()
    design = torch.stack([torch.ones_like(inner), inner], 1)
    red = torch.linalg.lstsq(design, outputs[:, 0, 4:28, 16].T).solution  # (2, B): intercept, slope per image
    green = torch.linalg.lstsq(design, outputs[:, 1, 16, 4:28].T).solution
    box_height, box_width = red[1] * 32 / 7, green[1].abs() * 32 / 7
    top = (red[0] - 10) / 7 - 0.5 * box_height / 32 + 0.5
    area, ratio = box_height * box_width / 32**2, box_width / box_height
    assert area.min() > 0.8 - 0.04 and area.max() < 1 + 0.01 and area.std() > 0.03
    assert ratio.min() > 3 / 4 * 0.95 and ratio.max() < 4 / 3 * 1.05
    assert top.min() > -0.2 and (top + box_height).max() < 32.2
    flipped = green[1] < 0
    assert 0.4 < flipped.double().mean() < 0.6


def test_randaugment_chooses_ops_per_image():
    # 64 copies of one image: with one op pair for the whole batch (kornia's RandAugment), at most 4 distinct outputs
    # (2 ops x a random sign each); with per-image ops (14 ops, signed or not), dozens.
    images = make_images(1).expand(64, -1, -1, -1).contiguous()
    pixel_values, _ = augmentation(randaugment_num_ops=2)(images, torch.arange(64), seed=7)
    distinct = {tuple(output.flatten().tolist()) for output in pixel_values}
    assert len(distinct) >= 16


def test_randaugment_rounds_add_up():
    images = make_images(64)
    changed = []
    for num_ops in (1, 3):
        every_round = {"randaugment_prob": 1.0, "randaugment_magnitude_std": 0.0}  # each round applies its op
        pixel_values, _ = augmentation(randaugment_num_ops=num_ops, **every_round)(images, torch.arange(64), seed=8)
        changed.append((pixel_values != normalize(images)).flatten(1).any(1).float().mean())
    # One round leaves the 1/14 of images that draw identity (and a few no-op draws) alone; three rounds fewer.
    assert 0.6 < changed[0] < changed[1]


def randaugment_choices(n=20000, seed=0, **fields):
    """RandAugment's draws for n images: op indices into OPS and strengths, (rounds, n)."""
    augment = augmentation(randaugment_num_ops=2, **fields)
    return augment.func._randaugment_choices(n, torch.Generator().manual_seed(seed))


def test_randaugment_draws_follow_timms_rand_m9_mstd05():
    op_index, strength = randaugment_choices()
    assert op_index.shape == strength.shape == (2, 20000)
    # Each round: the op (uniform over the 14, identity included) is applied with probability 0.5; else identity.
    share = torch.bincount(op_index.flatten(), minlength=len(OPS)).double() / op_index.numel()
    identity_share = 0.5 + 0.5 / len(RANDAUGMENT_OPS)
    assert abs(share[IDENTITY] - identity_share) < 0.01
    for name in RANDAUGMENT_OPS:
        if name != "identity":
            assert abs(share[list(OPS).index(name)] / (0.5 / len(RANDAUGMENT_OPS)) - 1) < 0.15, name
    assert share[list(OPS).index("invert")] == 0, "Invert is AutoAugment's, not RandAugment's"
    both_identity = (op_index == IDENTITY).all(0).double().mean()
    assert abs(both_identity - identity_share**2) < 0.015, "the two rounds draw independently"

    # Magnitude ~ N(9, 0.5) clipped to [0, 10]: 10 takes the 2.3% of draws above two standard deviations.
    applied = op_index != IDENTITY
    magnitude = 10 * strength[applied].abs()
    assert abs(magnitude.mean() - 9) < 0.02 and 0.47 < magnitude.std() < 0.51
    assert magnitude.max() == 10 and magnitude.min() > 6
    assert abs((magnitude == 10).double().mean() - 0.5 * math.erfc(2 / math.sqrt(2))) < 0.005
    assert abs((strength[applied] > 0).double().mean() - 0.5) < 0.02, "a random sign"


def test_randaugment_magnitude_and_its_spread_follow_the_flags():
    op_index, strength = randaugment_choices(randaugment_magnitude=3.0, randaugment_magnitude_std=1.0)
    magnitude = 10 * strength[op_index != IDENTITY].abs()
    assert abs(magnitude.mean() - 3) < 0.03 and abs(magnitude.std() - 1) < 0.03


def test_randaugment_prob_one_and_std_zero_apply_every_round_at_the_magnitude():
    op_index, strength = randaugment_choices(randaugment_prob=1.0, randaugment_magnitude_std=0.0)
    share = torch.bincount(op_index.flatten(), minlength=len(OPS)).double() / op_index.numel()
    assert abs(share[IDENTITY] - 1 / len(RANDAUGMENT_OPS)) < 0.005
    assert torch.equal(strength.abs(), torch.full_like(strength, 0.9))


@pytest.mark.parametrize(
    "fields, identity_share",
    [
        ({}, 0.5 + 0.5 / len(RANDAUGMENT_OPS)),  # timm's semantics: p = 0.5, over the 14 ops
        ({"randaugment_prob": 1.0, "randaugment_magnitude_std": 0.0}, 1 / len(RANDAUGMENT_OPS)),
    ],
)
def test_randaugment_leaves_an_image_unchanged_where_both_rounds_draw_identity(fields, identity_share):
    # 16x16: below 255 pixels a channel, Pillow's equalize moves nothing, a no-op that would blur the count.
    n, seed = 5000, 17
    images = make_images(n, 16, 16)
    augment = augmentation(randaugment_num_ops=2, **fields)
    pixel_values, _ = augment(images, torch.arange(n) % NUM_LABELS, seed=seed)
    unchanged = (pixel_values == normalize(images)).flatten(1).all(1)
    # With crop, flip and the rest off, RandAugment is the first to draw from the call's generator.
    op_index, _ = augment.func._randaugment_choices(n, torch.Generator().manual_seed(seed))
    both_identity = (op_index == IDENTITY).all(0)
    assert unchanged[both_identity].all()
    assert unchanged[~both_identity].double().mean() < 0.006, "two ops undo each other only now and then"
    assert abs(unchanged.double().mean() - identity_share**2) < 0.025


def test_random_erasing_fills_one_box_with_noise():
    images = make_images(200)
    pixel_values, _ = augmentation(random_erasing_prob=1.0)(images, torch.arange(200) % NUM_LABELS, seed=9)
    changed = pixel_values != normalize(images)  # (B, 3, H, W)
    assert torch.equal(changed.all(1), changed.any(1)), "all three channels are erased together"
    areas = []
    for mask in changed.any(1):
        rows, columns = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        if len(rows):
            box = mask[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
            assert box.all(), "the erased pixels form one box"
            areas.append(box.numel() / mask.numel())
    assert len(areas) > 150, "nearly every image finds a box that fits within 10 attempts"
    assert min(areas) > 0.01 and max(areas) < 0.4
    erased = pixel_values[changed]
    assert abs(erased.mean()) < 0.1 and abs(erased.std() - 1) < 0.1, "the fill is standard normal noise"

    pixel_values, _ = augmentation(random_erasing_prob=0.25)(images, torch.arange(200) % NUM_LABELS, seed=9)
    fraction = (pixel_values != normalize(images)).flatten(1).any(1).float().mean()
    assert 0.15 < fraction < 0.35


def test_mixup_targets_and_pixels_match_a_hand_computation():
    images, labels = make_images(64), torch.arange(64)  # partners (i, 63 - i) never share a label
    augment = augmentation(label_smoothing=0.1, mixup_prob=1.0, mixup_alpha=0.8, cutmix_alpha=0.0)
    pixel_values, targets = augment(images, labels, seed=10)
    smooth = smoothed_one_hot(labels, 0.1)
    lam = (targets[torch.arange(64), labels] - 0.1 / NUM_LABELS) / (1 - 0.1)
    torch.testing.assert_close(targets, lam[:, None] * smooth + (1 - lam[:, None]) * smooth.flip(0))
    assert ((targets > 0.1 / NUM_LABELS + 1e-6).sum(1) <= 2).all(), "exactly two labels are mixed"
    normalized = normalize(images)
    expected = lam.view(-1, 1, 1, 1) * normalized + (1 - lam.view(-1, 1, 1, 1)) * normalized.flip(0)
    torch.testing.assert_close(pixel_values, expected, rtol=0, atol=1e-5)
    assert lam.std() > 0.1, "each image draws its own lambda"
    assert 0.35 < lam.mean() < 0.65, "Beta(0.8, 0.8) is symmetric about 1/2"


def test_mixup_prob_leaves_the_other_images_untouched():
    images, labels = make_images(128), torch.arange(128) % NUM_LABELS
    augment = augmentation(mixup_prob=0.5, mixup_alpha=0.8, cutmix_alpha=1.0)
    pixel_values, targets = augment(images, labels, seed=11)
    unmixed = targets.max(1).values == 1
    assert 0.35 < unmixed.float().mean() < 0.65
    assert torch.equal(pixel_values[unmixed], normalize(images)[unmixed])


def test_cutmix_pastes_one_box_of_the_partner_and_lambda_is_its_complement():
    # Even values in the first half and odd in the second: each pixel tells whose image it came from.
    images = make_images(64) // 2 * 2
    images[32:] += 1
    augment = augmentation(mixup_prob=1.0, mixup_alpha=0.0, cutmix_alpha=1.0)
    pixel_values, targets = augment(images, torch.arange(64), seed=12)
    normalized = normalize(images)
    from_partner = (pixel_values == normalized.flip(0)).all(1)  # (B, H, W)
    assert ((pixel_values == normalized) | (pixel_values == normalized.flip(0))).all()
    for mask, target in zip(from_partner, targets, strict=True):
        if mask.any():
            rows, columns = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
            assert mask[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1].all()
        own = 1 - mask.float().mean()
        torch.testing.assert_close(target.max(), own if own >= 0.5 else 1 - own)
    assert from_partner.any((1, 2)).float().mean() > 0.8


def test_mixup_and_cutmix_share_the_batch_by_the_switch_prob():
    images = make_images(256) // 2 * 2
    images[128:] += 1
    augment = augmentation(mixup_prob=1.0, mixup_alpha=0.8, cutmix_alpha=1.0, mixup_switch_prob=0.5)
    pixel_values, _ = augment(images, torch.arange(256) % NUM_LABELS, seed=13)
    normalized = normalize(images)
    # A CutMix image holds only its own and its partner's pixels; a Mixup image (lam < 1) holds blends.
    pasted = ((pixel_values == normalized) | (pixel_values == normalized.flip(0))).flatten(1).all(1)
    assert 0.35 < pasted.float().mean() < 0.65


# RandAugment ops


def pillow_reference(name, image, strength):
    """The Pillow op the RandAugment or AutoAugment op follows, on one (3, H, W) uint8 image."""
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    factor = 1 + MAX_ENHANCE * strength
    if name == "invert":
        out = ImageOps.invert(pil)
    elif name == "auto_contrast":
        out = ImageOps.autocontrast(pil)
    elif name == "equalize":
        out = ImageOps.equalize(pil)
    elif name == "solarize":
        out = ImageOps.solarize(pil, threshold=256 * (1 - abs(strength)))
    elif name == "posterize":
        out = ImageOps.posterize(pil, bits=8 - round(4 * abs(strength)))
    else:
        enhancer = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast}.get(name)
        enhancer = enhancer or {"brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}[name]
        out = enhancer(pil).enhance(factor)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


@pytest.mark.parametrize(
    "name",
    ["auto_contrast", "equalize", "solarize", "posterize", "color", "contrast", "brightness", "sharpness", "invert"],
)
@pytest.mark.parametrize("strength", [-0.9, 0.5, 1.0])
def test_colour_ops_match_pillow(name, strength):
    images = make_images(6, 20, 28, seed=14)
    output = OPS[name](images.float(), torch.full((6,), strength)).clamp(0, 255).floor()
    reference = torch.stack([pillow_reference(name, image, strength) for image in images]).float()
    difference = (output - reference).abs()
    assert difference.max() <= 1, f"{name}: off by {difference.max()} grey levels"
    assert difference.mean() < 0.01


@pytest.mark.parametrize("name", [name for name in RANDAUGMENT_OPS if name not in ("auto_contrast", "equalize")])
def test_ops_at_magnitude_zero_are_the_identity(name):
    images = make_images(4, 24, 40).float()
    torch.testing.assert_close(RANDAUGMENT_OPS[name](images, torch.zeros(4)).clamp(0, 255).floor(), images)


@pytest.mark.parametrize("name", [name for name in OPS if name != "identity"])
def test_ops_at_full_strength_change_every_image(name):
    images = make_images(4, 24, 40).float()
    output = OPS[name](images, torch.tensor([1.0, -1.0, 1.0, -1.0]))
    assert output.shape == images.shape
    assert (output != images).flatten(1).any(1).all()


def line_angle(image):
    """Angle in degrees from the x axis of the bright pixels of a (H, W) image, by a least-squares fit."""
    rows, columns = image.nonzero(as_tuple=True)
    x, y = columns.double() - columns.double().mean(), rows.double() - rows.double().mean()
    return math.degrees(0.5 * math.atan2(2 * (x * y).sum(), ((x * x).sum() - (y * y).sum())))


@pytest.mark.parametrize("height, width", [(33, 33), (33, 61)])
def test_geometric_ops_move_lines_by_their_magnitude(height, width):
    horizontal = torch.zeros(1, 3, height, width)
    horizontal[:, :, height // 2, 8:-8] = 255
    vertical = torch.zeros(1, 3, height, width)
    vertical[:, :, 4:-4, width // 2] = 255
    full = torch.ones(1)
    rotated = RANDAUGMENT_OPS["rotate"](horizontal, full)[0, 0]
    assert abs(abs(line_angle(rotated)) - MAX_ROTATE_DEGREES) < 2
    sheared = RANDAUGMENT_OPS["shear_x"](vertical, full)[0, 0]
    assert abs(abs(90 - abs(line_angle(sheared))) - math.degrees(math.atan(MAX_SHEAR))) < 2
    sheared = RANDAUGMENT_OPS["shear_y"](horizontal, full)[0, 0]
    assert abs(abs(line_angle(sheared)) - math.degrees(math.atan(MAX_SHEAR))) < 2


def test_translate_shifts_by_the_fraction_of_the_side_and_fills_with_zeros():
    images = make_images(2, 40, 20).float()  # 0.45 of 20 and of 40: shifts of exactly 9 and 18 pixels
    moved = RANDAUGMENT_OPS["translate_x"](images, torch.tensor([1.0, -1.0]))
    assert {
        torch.equal(moved[i, :, :, 9:], images[i, :, :, :-9]) or torch.equal(moved[i, :, :, :-9], images[i, :, :, 9:])
        for i in range(2)
    } == {True}
    assert (moved == 0).all(1).all(1).sum(1).tolist() == [9, 9], "nine empty columns in each image"
    moved = RANDAUGMENT_OPS["translate_y"](images, torch.tensor([1.0, -1.0]))
    assert not torch.equal(moved[0, :, 18:], moved[1, :, 18:]), "the sign sets the direction"
    assert torch.equal(moved[0, :, 18:], images[0, :, :-18]) or torch.equal(moved[0, :, :-18], images[0, :, 18:])


# AutoAugment

MAGNITUDE_FREE_OPS = {"auto_contrast", "equalize", "invert"}
SIGNED_OPS = {
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "color",
    "contrast",
    "brightness",
    "sharpness",
}


def test_the_cifar10_policy_is_25_pairs_of_ops_with_torchvisions_bins():
    policy = AUTO_AUGMENT_POLICIES["cifar10"]
    assert len(policy) == 25 and all(len(pair) == 2 for pair in policy)
    for pair in policy:
        for name, probability, magnitude_bin in pair:
            assert name in OPS and name != "identity" and 0 <= probability <= 1
            assert (magnitude_bin is None) == (name in MAGNITUDE_FREE_OPS), name
            assert magnitude_bin is None or magnitude_bin in range(10)
    assert "invert" in {name for pair in policy for name, _, _ in pair}, "an op RandAugment does not have"


@pytest.mark.parametrize("magnitude_bin", range(10))
def test_auto_augment_magnitudes_are_torchvisions(magnitude_bin):
    # torchvision spreads 10 bins evenly over [0, maximum]: rotate 30 degrees, shear 0.3, enhance factors 1 +- 0.9.
    level = magnitude_bin / 9
    assert MAX_ROTATE_DEGREES * auto_augment_strength("rotate", magnitude_bin, 32, 32) == pytest.approx(30 * level)
    for name in ("shear_x", "shear_y"):
        assert MAX_SHEAR * auto_augment_strength(name, magnitude_bin, 32, 32) == pytest.approx(0.3 * level)
    for name in ("color", "contrast", "brightness", "sharpness"):
        assert MAX_ENHANCE * auto_augment_strength(name, magnitude_bin, 32, 32) == pytest.approx(0.9 * level)
    # Translate: a whole number of pixels, up to 150/331 of the side (14 of 32 at bin 9, 10 of 24).
    for name, side in (("translate_x", 40), ("translate_y", 24)):
        shift = MAX_TRANSLATE * side * auto_augment_strength(name, magnitude_bin, 24, 40)
        assert shift == pytest.approx(math.floor(150 / 331 * side * level))
    # Solarize's threshold and posterize's bits, against Pillow on every value 0-255 (a threshold off by one shows).
    ramp = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    pil = Image.fromarray(ramp[0].permute(1, 2, 0).numpy())
    references = {
        "solarize": ImageOps.solarize(pil, threshold=255 * (9 - magnitude_bin) / 9),  # linspace(255, 0, 10), exact
        "posterize": ImageOps.posterize(pil, bits=8 - round(magnitude_bin / (9 / 4))),  # 8 - round(arange(10) / 2.25)
    }
    for name, reference in references.items():
        strength = torch.tensor([auto_augment_strength(name, magnitude_bin, 16, 16)])
        output = OPS[name](ramp.float(), strength)
        assert torch.equal(output[0], torch.from_numpy(np.asarray(reference).copy()).permute(2, 0, 1).float()), name
    assert all(auto_augment_strength(name, None, 32, 32) == 0 for name in MAGNITUDE_FREE_OPS)


def test_auto_augment_translate_moves_whole_pixels():
    images = make_images(2, 24, 32).float()
    strength = auto_augment_strength("translate_x", 9, 24, 32)  # int(150 / 331 * 32) = 14 pixels
    moved = OPS["translate_x"](images, torch.tensor([strength, -strength]))
    assert torch.equal(moved[0, :, :, 14:], images[0, :, :, :-14]) or torch.equal(
        moved[0, :, :, :-14], images[0, :, :, 14:]
    )
    assert torch.equal(moved[1, :, :, 14:], images[1, :, :, :-14]) or torch.equal(
        moved[1, :, :, :-14], images[1, :, :, 14:]
    )
    assert (moved == 0).all(1).all(1).sum(1).tolist() == [14, 14]


def auto_augment_choices(n, seed=0, height=32, width=32):
    augment = augmentation(auto_augment_policy="cifar10")
    return augment.func._auto_augment_choices((n, 3, height, width), torch.Generator().manual_seed(seed))


def test_auto_augment_draws_one_sub_policy_per_image_with_its_probabilities():
    n, policy, names = 20000, AUTO_AUGMENT_POLICIES["cifar10"], list(OPS)
    op_index, strength = auto_augment_choices(n)
    assert op_index.shape == strength.shape == (2, n)
    # Each image's two slots come from one sub-policy: (op, magnitude) in slot k is that pair's k-th, or identity.
    matches = torch.ones(n, len(policy), dtype=torch.bool)
    for slot in range(2):
        ops = torch.tensor([names.index(pair[slot][0]) for pair in policy])
        magnitudes = torch.tensor([auto_augment_strength(pair[slot][0], pair[slot][2], 32, 32) for pair in policy])
        same = (op_index[slot, :, None] == ops) & torch.isclose(strength[slot, :, None].abs(), magnitudes)
        matches &= same | (op_index[slot, :, None] == IDENTITY)
    assert matches.any(1).all()
    # A uniform sub-policy, then each op with its own probability: op o is in slot k for sum(p / 25) of the images.
    for slot in range(2):
        counts = torch.bincount(op_index[slot], minlength=len(OPS)).double()
        for index, name in enumerate(names):
            expected = n * sum(pair[slot][1] for pair in policy if pair[slot][0] == name) / len(policy)
            if name == "identity":
                expected = n - n * sum(pair[slot][1] for pair in policy) / len(policy)
            assert abs(counts[index] - expected) <= 5 * math.sqrt(expected) + 1, (slot, name, counts[index], expected)
    both = (op_index != IDENTITY).all(0)
    expected = n * sum(first[1] * second[1] for first, second in policy) / len(policy)
    assert abs(both.sum() - expected) < 5 * math.sqrt(expected), "the two slots are applied independently"
    signed = torch.tensor([names[index] in SIGNED_OPS for index in op_index.flatten()]).view(2, n) & (strength != 0)
    assert abs((strength[signed] > 0).double().mean() - 0.5) < 0.02, "signed ops draw a random sign"


def test_auto_augment_chooses_sub_policies_per_image_and_applies_what_it_drew():
    # 64 copies of one image: one sub-policy for the whole batch gives at most 3 x 3 outputs (each slot skipped or
    # applied with either sign); a sub-policy per image gives dozens.
    images = make_images(1).expand(64, -1, -1, -1).contiguous()
    pixel_values, _ = augmentation(auto_augment_policy="cifar10")(images, torch.arange(64), seed=20)
    assert len({tuple(output.flatten().tolist()) for output in pixel_values}) >= 16

    n, seed = 2000, 21
    images = make_images(n)
    augment = augmentation(auto_augment_policy="cifar10")
    pixel_values, _ = augment(images, torch.arange(n) % NUM_LABELS, seed=seed)
    unchanged = (pixel_values == normalize(images)).flatten(1).all(1)
    op_index, _ = augment.func._auto_augment_choices(images.shape, torch.Generator().manual_seed(seed))
    both_identity = (op_index == IDENTITY).all(0)
    assert unchanged[both_identity].all() and 0.1 < both_identity.double().mean() < 0.5
    # Changed, but for ops weak at this magnitude (sharpness at bin 1 moves few values) or that undo each other.
    assert unchanged[~both_identity].double().mean() < 0.05


# Seeding


@pytest.mark.parametrize("fields", [{}, ORIGINAL_RECIPE], ids=["defaults", "original_recipe"])
def test_same_seed_same_output_and_the_global_rng_is_neither_read_nor_moved(fields):
    images, labels = make_images(32), torch.arange(32)
    augment = with_normalize(BatchAugmentation(AugmentationArguments(**fields), NUM_LABELS, 0.1))
    torch.manual_seed(0)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    first = augment(images, labels, seed=augmentation_seed(42, 10, 0, 0))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state, strict=True))
    torch.manual_seed(1)  # a different global state gives the same augmentation
    second = augment(images, labels, seed=augmentation_seed(42, 10, 0, 0))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    other = augment(images, labels, seed=augmentation_seed(42, 11, 0, 0))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


@pytest.mark.parametrize("fields", [{}, ORIGINAL_RECIPE], ids=["defaults", "original_recipe"])
def test_runs_under_deterministic_algorithms(fields):
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        augment = with_normalize(BatchAugmentation(AugmentationArguments(**fields), NUM_LABELS, 0.1))
        augment(make_images(16), torch.arange(16), seed=15)
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fields", [{}, ORIGINAL_RECIPE], ids=["defaults", "original_recipe"])
def test_cuda_is_deterministic_and_draws_what_the_cpu_draws(fields):
    images, labels = make_images(256), torch.arange(256) % NUM_LABELS
    augment = with_normalize(BatchAugmentation(AugmentationArguments(**fields), NUM_LABELS, 0.1))
    first = augment(images.cuda(), labels.cuda(), seed=16)
    second = augment(images.cuda(), labels.cuda(), seed=16)
    assert first[0].is_cuda and torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # Parameters are drawn on the CPU: without the device-drawn erasing noise, both devices agree.
    augment = with_normalize(
        BatchAugmentation(AugmentationArguments(**{**fields, "random_erasing_prob": 0.0}), NUM_LABELS, 0.1)
    )
    on_cuda = augment(images.cuda(), labels.cuda(), seed=16)
    on_cpu = augment(images, labels, seed=16)
    torch.testing.assert_close(on_cuda[1].cpu(), on_cpu[1])
    # Fused multiply-adds on the GPU may move a blend across an integer, or a nearest-pixel tie, now and then.
    mismatched = (on_cuda[0].cpu() - on_cpu[0]).abs() > 1e-4
    assert mismatched.float().mean() < 0.01
