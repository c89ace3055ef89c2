"""VTLM: a Vision Transformer for CIFAR-100, as a Hugging Face Transformers model with custom code.

The config, its presets and the image processor import at once. The model classes load on first use, as transformers'
own package does: the modeling code and transformers' Auto registry take seconds to import, which `--help` or a bad
flag should not wait for. Loading them registers the config and both models with `AutoConfig`, `AutoModel` and
`AutoModelForImageClassification` for `model_type == "vtlm"`, and marks them for `save_pretrained`, which then copies
the code files and writes an `auto_map` with those three entries.
"""

from .configuration_vtlm import CIFAR100_LABELS, PRESETS, VTLMConfig
from .image_processor import CIFAR100_MEAN, CIFAR100_STD, build_image_processor

MODEL_CLASSES = ("VTLMForImageClassification", "VTLMModel", "VTLMPreTrainedModel")

__all__ = [
    "CIFAR100_LABELS",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "PRESETS",
    "VTLMConfig",
    "build_image_processor",
    *MODEL_CLASSES,
]


def __getattr__(name):
    """Load the model classes (`MODEL_CLASSES`) on first use, and register VTLM with the Auto classes."""
    if name not in MODEL_CLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    from . import modeling_vtlm

    AutoConfig.register(VTLMConfig.model_type, VTLMConfig)
    AutoModel.register(VTLMConfig, modeling_vtlm.VTLMModel)
    AutoModelForImageClassification.register(VTLMConfig, modeling_vtlm.VTLMForImageClassification)
    VTLMConfig.register_for_auto_class()
    modeling_vtlm.VTLMModel.register_for_auto_class("AutoModel")
    modeling_vtlm.VTLMForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    globals().update({model_class: getattr(modeling_vtlm, model_class) for model_class in MODEL_CLASSES})
    return globals()[name]
