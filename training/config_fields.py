"""The fields of a VTLM config, read one way (the signature of its class's `__init__`): their names with the original
model's values, and those a layout does not read. Here rather than in the shipped config: only training, the card and
the export ask, and shipped files do nothing but define the model."""

import inspect

from transformers import PreTrainedConfig

from vtlm.modeling.configuration_vtlm import MIMETIC_FIELDS


def original_defaults(config_class) -> dict:
    """Every architecture field of a VTLM config class, and of the VTLM classes it derives from, in the order of
    `__init__`, with its default: the original model's value. The fields of transformers' `PreTrainedConfig` (labels,
    output flags) are not among them.
    """
    defaults = {}
    for cls in config_class.__mro__[: config_class.__mro__.index(PreTrainedConfig)]:
        parameters = inspect.signature(cls.__init__).parameters.values()
        fields = {p.name: p.default for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"}
        defaults = {**fields, **defaults}  # a subclass's default wins
    return defaults


def field_names(config) -> list[str]:
    """Every architecture field of `config`: what a preset or `--config_overrides` may set."""
    return list(original_defaults(type(config)))


def unused_fields(config) -> list[str]:
    """The fields `config`'s layout does not read: the other tokenizers', and a position init that is left to
    `initializer_range` or has no positions to start. A description of the model (its card) leaves them out, and
    their values change nothing (the ViT export ignores them)."""
    if config.patch_embedding_type == "conv":  # only blocks before the last output `conv_hidden_size` channels
        unused = ["patch_size"] + (["conv_hidden_size"] if config.num_conv_layers == 1 else [])
    else:
        unused = ["num_conv_layers", "conv_kernel_size", "conv_hidden_size"]
    if config.position_initializer_range is None or not config.use_position_embeddings:
        unused.append("position_initializer_range")
    if config.attention_initializer != "mimetic":
        unused.extend(MIMETIC_FIELDS)
    return unused
