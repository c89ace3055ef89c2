"""A VTLM classifier converted exactly to transformers' built-in `ViTForImageClassification`, and the configs it can
express.

The original architecture is exactly `ViTForImageClassification`: the same patch convolution, CLS token, learned
positions, pre-norm blocks, GELU MLP, final LayerNorm and head on the CLS token. Only the names differ, and the
fused qkv projection, which the ViT keeps as three. A config the ViT cannot express has `vit_refusals`, one for each
field it sets away from the original model's value, and is refused (`ExportError`) before anything is converted.
"""

import dataclasses
import re

from transformers import ViTConfig, ViTForImageClassification

from .config_fields import original_defaults, unused_fields

# VTLM config fields that ViTConfig has under the same name and meaning, whatever their value.
VIT_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "layer_norm_eps",
    "qkv_bias",
    "initializer_range",
)
# Fields that change training or initialisation only: an exported model, which serves inference, needs none.
TRAINING_ONLY_FIELDS = (
    "drop_path_rate", "position_initializer_range", "attention_initializer", "mimetic_alpha1", "mimetic_beta1",
    "mimetic_alpha2", "mimetic_beta2",
)  # fmt: skip
# VTLM parameter names -> the built-in ViT's module names in transformers 5.x. `save_pretrained` then writes the
# keys each release reads (4.x's `vit.encoder.layer.N.attention.attention.query` ...). The fused qkv is split apart.
VIT_RENAMES = (
    (r"vtlm\.embeddings\.patch_embeddings\.(weight|bias)", r"vit.embeddings.patch_embeddings.projection.\1"),
    (r"vtlm\.embeddings\.(cls_token|position_embeddings)", r"vit.embeddings.\1"),
    (r"vtlm\.encoder\.layer\.(\d+)\.norm1\.(weight|bias)", r"vit.layers.\1.layernorm_before.\2"),
    (r"vtlm\.encoder\.layer\.(\d+)\.attention\.proj\.(weight|bias)", r"vit.layers.\1.attention.o_proj.\2"),
    (r"vtlm\.encoder\.layer\.(\d+)\.norm2\.(weight|bias)", r"vit.layers.\1.layernorm_after.\2"),
    (r"vtlm\.encoder\.layer\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vit.layers.\1.mlp.\2.\3"),
    (r"vtlm\.layernorm\.(weight|bias)", r"vit.layernorm.\1"),
    (r"classifier\.(weight|bias)", r"classifier.\1"),
)
FUSED_QKV = re.compile(r"vtlm\.encoder\.layer\.(\d+)\.attention\.qkv\.(weight|bias)")


class ExportError(ValueError):
    """The source cannot be exported as asked. Nothing is written: the check comes first, or the folder is dropped."""


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A config field whose value the built-in ViT cannot express: it expresses the original model's value only."""

    field: str
    value: object
    original: object  # the original model's value

    @property
    def setting(self):
        return f"{self.field}={self.value!r}"

    def __str__(self):
        return f"{self.setting} (exportable only at the original model's {self.original!r})"


def vit_refusals(config) -> tuple[Refusal, ...]:
    """Each field whose value the built-in ViT cannot express; empty when an exact export exists.

    The fields come from the config's own class, so a field added to VTLM later is refused unless it holds the
    original model's value, until it is mapped here. A field this layout does not read (`unused_fields`: another
    tokenizer's, say) changes nothing, whatever its value.
    """
    expressible = (*VIT_FIELDS, *TRAINING_ONLY_FIELDS, *unused_fields(config))  # unused: no effect on the model
    return tuple(
        Refusal(name, getattr(config, name), default)
        for name, default in original_defaults(type(config)).items()
        if name not in expressible and _plain(getattr(config, name)) != _plain(default)
    )


def describe_refusals(refusals) -> str:
    """`vit_refusals` as the errors name them: "field=value (exportable only at ...), ..."."""
    return ", ".join(map(str, refusals))


def check_vit_exportable(refusals):
    """Raise an `ExportError` naming each of `refusals` (`vit_refusals` of a config), if there is any."""
    if refusals:
        raise ExportError(
            f"transformers' built-in ViT cannot express {describe_refusals(refusals)}; "
            "--format onnx exports any VTLM model"
        )


def _plain(value):
    return list(value) if isinstance(value, tuple) else value  # config.json turns tuples into lists


def vit_config(config) -> ViTConfig:
    return ViTConfig(
        **{name: getattr(config, name) for name in VIT_FIELDS}, id2label=config.id2label, label2id=config.label2id
    )


def vit_state_dict(state_dict) -> dict:
    """The VTLM state dict under the built-in ViT's parameter names, with every fused qkv split into q, k and v."""
    converted = {}
    for name, tensor in state_dict.items():
        fused = FUSED_QKV.fullmatch(name)
        if fused:  # rows are (3, heads, head_dim) flattened: query, then key, then value, each in ViT's head order
            layer, kind = fused.groups()
            for projection, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3), strict=True):
                converted[f"vit.layers.{layer}.attention.{projection}.{kind}"] = part
            continue
        for pattern, replacement in VIT_RENAMES:
            if re.fullmatch(pattern, name):
                converted[re.sub(pattern, replacement, name)] = tensor
                break
        else:
            raise ExportError(f"the VTLM parameter {name} has no counterpart in the built-in ViT")
    return converted


def to_vit(model) -> ViTForImageClassification:
    """The built-in `ViTForImageClassification` computing what the VTLM classifier `model` computes."""
    check_vit_exportable(vit_refusals(model.config))
    vit = ViTForImageClassification(vit_config(model.config))
    vit.load_state_dict(vit_state_dict(model.state_dict()), strict=True)  # strict: no ViT weight left at its init
    return vit.to(model.dtype).eval()
