"""The image processor that training, evaluation and publishing share: transformers' built-in `ViTImageProcessor`
with CIFAR-100's normalisation, built here (VTLM has no processor class of its own)."""

# Per-channel mean and std of the CIFAR-100 training images, the values used across the CIFAR literature.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def build_image_processor(image_size=32, image_mean=CIFAR100_MEAN, image_std=CIFAR100_STD):
    """A built-in `ViTImageProcessor`: any PIL image is converted to RGB, resized to `image_size`, and normalised.

    It needs no code file on the Hub, and the `image-classification` pipeline picks it up from
    `preprocessor_config.json`. Built on PIL whatever is installed: its `preprocessor_config.json` says
    `ViTImageProcessor` either way, which transformers 4 and 5 and transformers.js load.
    """
    try:  # transformers 5 names its PIL backend; `ViTImageProcessor` warns and falls back to it without torchvision
        from transformers import ViTImageProcessorPil as ViTImageProcessor
    except ImportError:  # transformers 4: `ViTImageProcessor` is PIL-based
        from transformers import ViTImageProcessor

    return ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(image_mean),
        image_std=list(image_std),
    )
