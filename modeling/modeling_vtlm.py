"""VTLM: a pre-norm Vision Transformer for small images, trained from scratch on CIFAR-100.

Reads top to bottom: embeddings, attention, MLP, block, encoder, pre-trained base, base model, classification head.
This file and `configuration_vtlm.py` are shipped with every checkpoint (`trust_remote_code=True`): they import only
torch, transformers and each other, and run under transformers 4.57 as well as 5.x.
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_vtlm import VTLMConfig

try:  # transformers 5.x: these skip weights that from_pretrained already loaded
    from transformers import initialization as init
except ImportError:  # transformers 4.x only initialises missing weights, so torch's functions are safe there
    from torch.nn import init


class VTLMEmbeddings(nn.Module):
    """Conv2d patch embedding, a CLS token in front, and learned positions for CLS + every patch."""

    def __init__(self, config: VTLMConfig):
        super().__init__()
        self.patch_embeddings = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.image_size = config.image_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"expected {self.image_size}x{self.image_size} images, got {height}x{width}; "
                "resize them with the model's image processor"
            )
        patches = self.patch_embeddings(pixel_values).flatten(2).transpose(1, 2)  # (B, num_patches, hidden)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        embeddings = torch.cat([cls, patches], dim=1) + self.position_embeddings  # (B, 1 + num_patches, hidden)
        return self.dropout(embeddings)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """The readable reference: softmax(q k^T * scaling) v. Inputs are (B, heads, T, head_dim)."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2)  # (B, T, heads, head_dim)
    return attn_output, attn_weights


class VTLMAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, dispatched to eager, SDPA or flash kernels."""

    def __init__(self, config: VTLMConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        # Every token sees every token. The SDPA integration reads this and would default to causal without it.
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        batch_size, seq_len, hidden_size = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)

        implementation = self.config._attn_implementation
        # Only the eager path materialises the attention probabilities.
        if implementation in (None, "eager") or output_attentions:
            attention_interface = eager_attention_forward
        else:
            attention_interface = ALL_ATTENTION_FUNCTIONS[implementation]
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            scaling=self.scaling,
            dropout=self.config.attention_probs_dropout_prob if self.training else 0.0,
            is_causal=False,
        )
        attn_output = attn_output.reshape(batch_size, seq_len, hidden_size)
        return self.proj_dropout(self.proj(attn_output)), attn_weights


class VTLMMLP(nn.Module):
    def __init__(self, config: VTLMConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(hidden_states)))))


class VTLMDropPath(nn.Module):
    """Stochastic depth: in training, drop a sample's whole residual branch with probability `drop_prob`."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return branch
        keep_prob = 1.0 - self.drop_prob
        keep = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(keep_prob)
        return branch * keep / keep_prob  # rescaled so the expected output is unchanged

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class VTLMLayer(GradientCheckpointingLayer):
    """A pre-norm transformer block: two residual branches, attention then MLP."""

    def __init__(self, config: VTLMConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = VTLMAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VTLMMLP(config)
        self.drop_path = VTLMDropPath(drop_path_rate)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        attn_output, attn_weights = self.attention(self.norm1(hidden_states), output_attentions)
        hidden_states = hidden_states + self.drop_path(attn_output)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
        return hidden_states, attn_weights


class VTLMEncoder(nn.Module):
    def __init__(self, config: VTLMConfig):
        super().__init__()
        # Stochastic depth rises linearly with depth, from 0 in the first block to drop_path_rate in the last.
        # Plain Python, not torch.linspace: from_pretrained may build the model on the meta device.
        last = max(config.num_hidden_layers - 1, 1)
        rates = [config.drop_path_rate * i / last for i in range(config.num_hidden_layers)]
        self.layer = nn.ModuleList(VTLMLayer(config, rate) for rate in rates)

    def forward(self, hidden_states, output_attentions=False, output_hidden_states=False) -> BaseModelOutput:
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer:
            hidden_states, attn_weights = layer(hidden_states, output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


class VTLMPreTrainedModel(PreTrainedModel):
    config_class = VTLMConfig
    base_model_prefix = "vtlm"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VTLMEmbeddings", "VTLMLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # `forward` takes no **kwargs and returns a mean loss: the Trainer then divides it by the gradient-accumulation
    # steps itself and never multiplies it by the world size (the "loss scaling trap" of transformers 5).
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VTLMEmbeddings):
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)

    def no_weight_decay_parameter_names(self):
        """Names of parameters that should get no weight decay: biases, norms, the CLS token and positions."""
        return [
            name
            for name, parameter in self.named_parameters()
            if parameter.ndim <= 1 or name.endswith(("cls_token", "position_embeddings"))
        ]


class VTLMModel(VTLMPreTrainedModel):
    """The backbone: embeddings, encoder, final LayerNorm, and the pooled CLS (or mean patch) token."""

    def __init__(self, config: VTLMConfig):
        super().__init__(config)
        self.embeddings = VTLMEmbeddings(config)
        self.encoder = VTLMEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.weight.dtype)
        encoder_outputs = self.encoder(self.embeddings(pixel_values), output_attentions, output_hidden_states)
        sequence_output = self.layernorm(encoder_outputs.last_hidden_state)  # (B, 1 + num_patches, hidden)
        if self.config.pooling == "cls":
            pooled_output = sequence_output[:, 0]
        else:
            pooled_output = sequence_output[:, 1:].mean(dim=1)

        output = BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class VTLMForImageClassification(VTLMPreTrainedModel):
    """VTLMModel with a Linear head on the pooled token.

    `labels` are class indices of shape (B,) or, for Mixup/CutMix and label smoothing, class probabilities of
    shape (B, num_labels); either gives the mean cross-entropy as `loss`.
    """

    def __init__(self, config: VTLMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vtlm = VTLMModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.vtlm(pixel_values, output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device))

        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


__all__ = ["VTLMPreTrainedModel", "VTLMModel", "VTLMForImageClassification"]
