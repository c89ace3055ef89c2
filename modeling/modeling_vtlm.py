"""VTLM: a pre-norm Vision Transformer for small images, trained from scratch on CIFAR-100.

Reads top to bottom: embeddings (patchify or CCT's conv tokenizer), attention, MLP, blocks (pre-norm or CCT's layout),
encoder, sequence pooling, pre-trained base, base model, classification head. The defaults are the seed model; each
idea from CCT (Hassani et al. 2021, "Escaping the Big Data Paradigm with Compact Transformers") is a small module that
a config field selects.
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
from transformers.utils import can_return_tuple

from .configuration_vtlm import VTLMConfig

try:  # transformers 5.x: these skip weights that from_pretrained already loaded
    from transformers import initialization as init
except ImportError:  # transformers 4.x only initialises missing weights, so torch's functions are safe there
    from torch.nn import init


class VTLMConvTokenizer(nn.Module):
    """CCT's convolutional tokenizer: blocks of (k x k conv, ReLU, 3x3 max-pool with stride 2), each halving the side.

    Channels go num_channels -> conv_hidden_size -> ... -> hidden_size. The convs keep the side (stride 1, padding
    k // 2) and have no bias, as in CCT; overlapping windows give each token a view past its own pixels.
    """

    def __init__(self, config: VTLMConfig):
        super().__init__()
        widths = [config.num_channels] + [config.conv_hidden_size] * (config.num_conv_layers - 1) + [config.hidden_size]
        kernel_size = config.conv_kernel_size
        self.convs = nn.ModuleList(
            nn.Conv2d(width_in, width_out, kernel_size, padding=kernel_size // 2, bias=False)
            for width_in, width_out in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = pixel_values
        for conv in self.convs:
            features = nn.functional.max_pool2d(nn.functional.relu(conv(features)), kernel_size=3, stride=2, padding=1)
        return features  # (B, hidden, side, side)


class VTLMEmbeddings(nn.Module):
    """Patch embedding (patchify or conv tokenizer), a CLS token in front if any, and learned positions for all."""

    def __init__(self, config: VTLMConfig):
        super().__init__()
        if config.patch_embedding_type == "conv":
            self.patch_embeddings = VTLMConvTokenizer(config)
        else:
            self.patch_embeddings = nn.Conv2d(
                config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_cls_token else None
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.sequence_length, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.image_size = config.image_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"expected {self.image_size}x{self.image_size} images, got {height}x{width}; "
                "resize them with the model's image processor"
            )
        pixel_values = pixel_values.to(self.position_embeddings.dtype)  # a fp16 or bf16 model gets fp32 pixels
        embeddings = self.patch_embeddings(pixel_values).flatten(2).transpose(1, 2)  # (B, num_patches, hidden)
        if self.cls_token is not None:
            cls = self.cls_token.expand(embeddings.shape[0], -1, -1)
            embeddings = torch.cat([cls, embeddings], dim=1)  # (B, 1 + num_patches, hidden)
        return self.dropout(embeddings + self.position_embeddings)


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


class VTLMCCTLayer(VTLMLayer):
    """CCT's block: pre-norm attention, then the residual stream itself is normalised and the MLP adds to it.

    The same modules as `VTLMLayer`; only where `norm2` sits differs, so the stream is renormalised in every block.
    """

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        attn_output, attn_weights = self.attention(self.norm1(hidden_states), output_attentions)
        hidden_states = self.norm2(hidden_states + self.drop_path(attn_output))
        hidden_states = hidden_states + self.drop_path(self.mlp(hidden_states))
        return hidden_states, attn_weights


LAYER_CLASSES = {"pre_norm": VTLMLayer, "cct": VTLMCCTLayer}  # by config.layer_norm_layout


class VTLMEncoder(nn.Module):
    def __init__(self, config: VTLMConfig):
        super().__init__()
        # Stochastic depth rises linearly with depth, from 0 in the first block to drop_path_rate in the last.
        # Plain Python, not torch.linspace: from_pretrained may build the model on the meta device.
        last = max(config.num_hidden_layers - 1, 1)
        rates = [config.drop_path_rate * i / last for i in range(config.num_hidden_layers)]
        layer_class = LAYER_CLASSES[config.layer_norm_layout]
        self.layer = nn.ModuleList(layer_class(config, rate) for rate in rates)

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


class VTLMSequencePooling(nn.Module):
    """CCT's sequence pooling: a learned score per token, softmax over the tokens, and the weighted sum of tokens.

    The score's bias is CCT's own (its parameter count includes it) but changes nothing: the softmax ignores a shift
    shared by every token, so its gradient is zero.
    """

    def __init__(self, config: VTLMConfig):
        super().__init__()
        self.score = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weights = self.score(hidden_states).softmax(dim=1)  # (B, T, 1), summing to 1 over the T tokens
        return (weights.transpose(1, 2) @ hidden_states).squeeze(1)  # (B, hidden)


class VTLMPreTrainedModel(PreTrainedModel):
    config_class = VTLMConfig
    base_model_prefix = "vtlm"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VTLMEmbeddings", "VTLMLayer", "VTLMCCTLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # `forward` takes no **kwargs and returns a mean loss: the Trainer then divides it by the gradient-accumulation
    # steps itself and never multiplies it by the world size (the "loss scaling trap" of transformers 5).
    accepts_loss_kwargs = False

    def __init__(self, config: VTLMConfig, *inputs, **kwargs):
        # `from_pretrained(folder, **overrides)` and code that edits a config set fields after the config's own
        # validation: check again wherever a model is built.
        config.validate_architecture()
        super().__init__(config, *inputs, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Conv2d) and self.config.patch_embedding_type == "conv":
            # CCT's tokenizer: each conv feeds a ReLU, so He (Kaiming) normal init, which keeps the activations' scale.
            init.kaiming_normal_(module.weight)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VTLMEmbeddings):
            if module.cls_token is not None:
                init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            position_std = self.config.position_initializer_range
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std if position_std is None else position_std)

    def no_weight_decay_parameter_names(self):
        """Names of parameters that should get no weight decay: biases, norms, the CLS token and positions.

        The sequence-pooling score weight, shape (1, hidden), is a matrix like the classifier's and is decayed: timm's
        rule (ndim <= 1 is exempt), which CCT's own training uses, decays it too.
        """
        return [
            name
            for name, parameter in self.named_parameters()
            if parameter.ndim <= 1 or name.endswith(("cls_token", "position_embeddings"))
        ]


class VTLMModel(VTLMPreTrainedModel):
    """The backbone: embeddings, encoder, final LayerNorm, and the pooled token (CLS, mean or sequence pooling)."""

    def __init__(self, config: VTLMConfig):
        super().__init__(config)
        self.embeddings = VTLMEmbeddings(config)
        self.encoder = VTLMEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.sequence_pooling = VTLMSequencePooling(config) if config.pooling == "sequence" else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )

        encoder_outputs = self.encoder(self.embeddings(pixel_values), output_attentions, output_hidden_states)
        sequence_output = self.layernorm(encoder_outputs.last_hidden_state)  # (B, sequence_length, hidden)
        patch_tokens = sequence_output[:, 1:] if self.config.use_cls_token else sequence_output
        if self.config.pooling == "cls":
            pooled_output = sequence_output[:, 0]
        elif self.config.pooling == "mean":
            pooled_output = patch_tokens.mean(dim=1)
        else:
            pooled_output = self.sequence_pooling(patch_tokens)

        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )


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

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ImageClassifierOutput:
        outputs = self.vtlm(pixel_values, output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device))

        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = ["VTLMPreTrainedModel", "VTLMModel", "VTLMForImageClassification"]
