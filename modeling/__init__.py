"""VTLM: a Vision Transformer for CIFAR-100, as a Hugging Face Transformers model with custom code.

Importing this package registers the classes with the Auto classes, so `AutoModel.from_pretrained` uses them for
`model_type == "vtlm"`, and marks them for `save_pretrained`, which then copies the code files and writes an
`auto_map` with the `AutoConfig`, `AutoModel` and `AutoModelForImageClassification` entries.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_vtlm import CIFAR100_LABELS, PRESETS, VTLMConfig
from .image_processing_vtlm import CIFAR100_MEAN, CIFAR100_STD, build_image_processor
from .modeling_vtlm import VTLMForImageClassification, VTLMModel, VTLMPreTrainedModel

AutoConfig.register(VTLMConfig.model_type, VTLMConfig)
AutoModel.register(VTLMConfig, VTLMModel)
AutoModelForImageClassification.register(VTLMConfig, VTLMForImageClassification)

VTLMConfig.register_for_auto_class()
VTLMModel.register_for_auto_class("AutoModel")
VTLMForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "CIFAR100_LABELS",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "PRESETS",
    "VTLMConfig",
    "VTLMForImageClassification",
    "VTLMModel",
    "VTLMPreTrainedModel",
    "build_image_processor",
]
