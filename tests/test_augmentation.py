"""Tests of the batch augmentation: each ingredient alone against what it must do, the recipe's outputs, the RandAugment
ops against Pillow, and the seeding contract that exact resume relies on."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps
from transformers import HfArgumentParser

from modeling import CIFAR100_MEAN, CIFAR100_STD
from training.augmentation import (
    MAX_ENHANCE,
    MAX_ROTATE_DEGREES,
    MAX_SHEAR,
    RANDAUGMENT_OPS,
    AugmentationArguments,
    BatchAugmentation,
    augmentation_seed,
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


def augmentation(label_smoothing=0.0, **fields):
    args = AugmentationArguments(**{**ALL_OFF, **fields})
    return BatchAugmentation(args, NUM_LABELS, CIFAR100_MEAN, CIFAR100_STD, label_smoothing)


def smoothed_one_hot(labels, label_smoothing):
    return F.one_hot(labels, NUM_LABELS).float() * (1 - label_smoothing) + label_smoothing / NUM_LABELS


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
    ],
)
def test_bad_arguments_raise_naming_the_field(name, value):
    with pytest.raises(ValueError, match=name):
        AugmentationArguments(**{name: value})


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
        BatchAugmentation(AugmentationArguments(), **values)


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
    torch.Generator().manual_seed(seeds[0])


# The whole recipe


@pytest.mark.parametrize("height, width", [(32, 32), (24, 40)])
def test_full_recipe_outputs(height, width):
    augment = BatchAugmentation(AugmentationArguments(), NUM_LABELS, CIFAR100_MEAN, CIFAR100_STD, 0.1)
    images, labels = make_images(32, height, width), torch.arange(32) * 3
    before = images.clone()
    pixel_values, targets = augment(images, labels, seed=1)
    assert pixel_values.shape == (32, 3, height, width) and pixel_values.dtype == torch.float32
    assert targets.shape == (32, NUM_LABELS) and targets.dtype == torch.float32
    assert torch.isfinite(pixel_values).all() and (targets >= 0).all()
    torch.testing.assert_close(targets.sum(1), torch.ones(32))
    assert torch.equal(images, before), "the caller's batch must not be modified"
    assert not torch.equal(pixel_values, augment.normalize(images))


def test_values_stay_in_the_normalised_range_without_erasing():
    augment = BatchAugmentation(AugmentationArguments(random_erasing_prob=0.0), NUM_LABELS, CIFAR100_MEAN, CIFAR100_STD)
    pixel_values, _ = augment(make_images(64), torch.arange(64), seed=2)
    mean, std = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    assert (pixel_values >= (0 - mean) / std - 1e-5).all() and (pixel_values <= (1 - mean) / std + 1e-5).all()


def test_normalize_and_all_off_is_normalize():
    images, labels = make_images(8), torch.arange(8)
    augment = augmentation(label_smoothing=0.1)
    expected = (
        images.double() / 255 - torch.tensor(CIFAR100_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    ) / torch.tensor(CIFAR100_STD, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(augment.normalize(images), expected.float())
    pixel_values, targets = augment(images, labels, seed=3)
    assert torch.equal(pixel_values, augment.normalize(images))
    torch.testing.assert_close(targets, smoothed_one_hot(labels, 0.1), rtol=0, atol=1e-7)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_targets_without_mixing_are_smoothed_one_hot(label_smoothing):
    args = AugmentationArguments(mixup_prob=0.0)
    augment = BatchAugmentation(args, NUM_LABELS, CIFAR100_MEAN, CIFAR100_STD, label_smoothing)
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
        pixel_values, _ = augmentation(randaugment_num_ops=num_ops)(images, torch.arange(64), seed=8)
        changed.append((pixel_values != augmentation().normalize(images)).flatten(1).any(1).float().mean())
    # One round leaves the 1/14 of images that draw identity (and a few no-op draws) alone; three rounds fewer.
    assert 0.6 < changed[0] < changed[1]


def test_random_erasing_fills_one_box_with_noise():
    images = make_images(200)
    pixel_values, _ = augmentation(random_erasing_prob=1.0)(images, torch.arange(200) % NUM_LABELS, seed=9)
    changed = pixel_values != augmentation().normalize(images)  # (B, 3, H, W)
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
    fraction = (pixel_values != augmentation().normalize(images)).flatten(1).any(1).float().mean()
    assert 0.15 < fraction < 0.35


def test_mixup_targets_and_pixels_match_a_hand_computation():
    images, labels = make_images(64), torch.arange(64)  # partners (i, 63 - i) never share a label
    augment = augmentation(label_smoothing=0.1, mixup_prob=1.0, mixup_alpha=0.8, cutmix_alpha=0.0)
    pixel_values, targets = augment(images, labels, seed=10)
    smooth = smoothed_one_hot(labels, 0.1)
    lam = (targets[torch.arange(64), labels] - 0.1 / NUM_LABELS) / (1 - 0.1)
    torch.testing.assert_close(targets, lam[:, None] * smooth + (1 - lam[:, None]) * smooth.flip(0))
    assert ((targets > 0.1 / NUM_LABELS + 1e-6).sum(1) <= 2).all(), "exactly two labels are mixed"
    normalized = augment.normalize(images)
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
    assert torch.equal(pixel_values[unmixed], augment.normalize(images)[unmixed])


def test_cutmix_pastes_one_box_of_the_partner_and_lambda_is_its_complement():
    # Even values in the first half and odd in the second: each pixel tells whose image it came from.
    images = make_images(64) // 2 * 2
    images[32:] += 1
    augment = augmentation(mixup_prob=1.0, mixup_alpha=0.0, cutmix_alpha=1.0)
    pixel_values, targets = augment(images, torch.arange(64), seed=12)
    normalized = augment.normalize(images)
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
    normalized = augment.normalize(images)
    # A CutMix image holds only its own and its partner's pixels; a Mixup image (lam < 1) holds blends.
    pasted = ((pixel_values == normalized) | (pixel_values == normalized.flip(0))).flatten(1).all(1)
    assert 0.35 < pasted.float().mean() < 0.65


# RandAugment ops


def pillow_reference(name, image, strength):
    """The Pillow op the RandAugment op follows, on one (3, H, W) uint8 image."""
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    factor = 1 + MAX_ENHANCE * strength
    if name == "auto_contrast":
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
    "name", ["auto_contrast", "equalize", "solarize", "posterize", "color", "contrast", "brightness", "sharpness"]
)
@pytest.mark.parametrize("strength", [-0.9, 0.5, 1.0])
def test_colour_ops_match_pillow(name, strength):
    images = make_images(6, 20, 28, seed=14)
    output = RANDAUGMENT_OPS[name](images.float(), torch.full((6,), strength)).clamp(0, 255).floor()
    reference = torch.stack([pillow_reference(name, image, strength) for image in images]).float()
    difference = (output - reference).abs()
    assert difference.max() <= 1, f"{name}: off by {difference.max()} grey levels"
    assert difference.mean() < 0.01


@pytest.mark.parametrize("name", [name for name in RANDAUGMENT_OPS if name not in ("auto_contrast", "equalize")])
def test_ops_at_magnitude_zero_are_the_identity(name):
    images = make_images(4, 24, 40).float()
    torch.testing.assert_close(RANDAUGMENT_OPS[name](images, torch.zeros(4)).clamp(0, 255).floor(), images)


@pytest.mark.parametrize("name", [name for name in RANDAUGMENT_OPS if name != "identity"])
def test_ops_at_full_strength_change_every_image(name):
    images = make_images(4, 24, 40).float()
    output = RANDAUGMENT_OPS[name](images, torch.tensor([1.0, -1.0, 1.0, -1.0]))
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


# Seeding


def test_same_seed_same_output_and_the_global_rng_is_neither_read_nor_moved():
    images, labels = make_images(32), torch.arange(32)
    augment = BatchAugmentation(AugmentationArguments(), NUM_LABELS, CIFAR100_MEAN, CIFAR100_STD, 0.1)
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


def test_runs_under_deterministic_algorithms():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        augment = BatchAugmentation(AugmentationArguments(), NUM_LABELS, CIFAR100_MEAN, CIFAR100_STD, 0.1)
        augment(make_images(16), torch.arange(16), seed=15)
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_is_deterministic_and_draws_what_the_cpu_draws():
    images, labels = make_images(256), torch.arange(256) % NUM_LABELS
    augment = BatchAugmentation(AugmentationArguments(), NUM_LABELS, CIFAR100_MEAN, CIFAR100_STD, 0.1)
    first = augment(images.cuda(), labels.cuda(), seed=16)
    second = augment(images.cuda(), labels.cuda(), seed=16)
    assert first[0].is_cuda and torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # Parameters are drawn on the CPU: without the device-drawn erasing noise, both devices agree.
    augment = BatchAugmentation(
        AugmentationArguments(random_erasing_prob=0.0), NUM_LABELS, CIFAR100_MEAN, CIFAR100_STD, 0.1
    )
    on_cuda = augment(images.cuda(), labels.cuda(), seed=16)
    on_cpu = augment(images, labels, seed=16)
    torch.testing.assert_close(on_cuda[1].cpu(), on_cpu[1])
    # Fused multiply-adds on the GPU may move a blend across an integer, or a nearest-pixel tie, now and then.
    mismatched = (on_cuda[0].cpu() - on_cpu[0]).abs() > 1e-4
    assert mismatched.float().mean() < 0.01
