"""VTLM: a pre-norm Vision Transformer for small images, trained from scratch on CIFAR-100.

Reads top to bottom: embeddings (patchify, CCT's conv tokenizer or DHVT's SOPE), attention (with DHVT's head tokens or
without), feed-forward (MLP or DHVT's DAFF), blocks (pre-norm or CCT's layout), encoder, sequence pooling, pre-trained
base, base model, classification head. The defaults are the original model; each idea from CCT (Hassani et al. 2021,
"Escaping the Big Data Paradigm with Compact Transformers") and DHVT (Lu et al. 2022, "Bridging the Gap Between Vision
Transformers and Convolutional Neural Networks on Small Datasets") is a small module that a config field selects.
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


class VTLMPatchify(nn.Conv2d):
    """The original model's patch embedding: one Conv2d whose kernel and stride are the patch size, so every patch
    becomes one token from its own pixels only (ViT's)."""

    def __init__(self, config: VTLMConfig):
        super().__init__(config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size)


class VTLMTokenizerConv(nn.Conv2d):
    """One conv of CCT's tokenizer: k x k, stride 1, padding k // 2 (the side is kept), no bias, as in CCT. Its own
    class so that `_init_weights` gives it He init: it feeds a ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)


class VTLMConvTokenizer(nn.Module):
    """CCT's convolutional tokenizer: blocks of (k x k conv, ReLU, 3x3 max-pool with stride 2), each halving the side.

    Channels go num_channels -> conv_hidden_size -> ... -> hidden_size; overlapping windows give each token a view
    past its own pixels.
    """

    def __init__(self, config: VTLMConfig):
        super().__init__()
        widths = [config.num_channels] + [config.conv_hidden_size] * (config.num_conv_layers - 1) + [config.hidden_size]
        kernel_size = config.conv_kernel_size
        self.convs = nn.ModuleList(
            VTLMTokenizerConv(width_in, width_out, kernel_size)
            for width_in, width_out in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = pixel_values
        for conv in self.convs:
            features = nn.functional.max_pool2d(nn.functional.relu(conv(features)), kernel_size=3, stride=2, padding=1)
        return features  # (B, hidden, side, side)


class VTLMConvBatchNorm(nn.Conv2d):
    """A Conv2d (padding kernel_size // 2) followed by its BatchNorm2d, whose running statistics take in each
    training batch exactly once.

    Activation checkpointing runs a checkpointed layer's forward a second time inside the backward pass, to recompute
    what it did not keep; a plain BatchNorm would fold the same batch into its running statistics twice. Inside the
    backward pass this one normalises with the batch's statistics as usual, but lets the BatchNorm update throwaway
    copies of its statistics. The BatchNorm module itself runs, so a `SyncBatchNorm` put in its place
    (`torch.nn.SyncBatchNorm.convert_sync_batchnorm`) still syncs the recomputed batch statistics.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        self.batch_norm = nn.BatchNorm2d(out_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = super().forward(features)
        # The autograd engine's graph task id is -1 outside a backward pass; checkpointing recomputes inside one.
        if not (self.training and torch._C._current_graph_task_id() != -1):
            return self.batch_norm(features)
        # Copies rather than switching tracking off: the recomputation must save the same tensors for the backward
        # pass as the first forward did, or non-reentrant checkpointing refuses it.
        statistics = dict(self.batch_norm.named_buffers(recurse=False))  # running mean, variance, batches seen
        for name, buffer in statistics.items():
            setattr(self.batch_norm, name, buffer.clone())
        try:
            return self.batch_norm(features)
        finally:
            for name, buffer in statistics.items():
                setattr(self.batch_norm, name, buffer)


class VTLMChannelAffine(nn.Module):
    """A learned scale and shift per channel of a (B, C, H, W) map, starting as the identity."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * self.weight[:, None, None] + self.bias[:, None, None]


class VTLMSequentialOverlappingPatchEmbedding(nn.Module):
    """DHVT's SOPE: affine, 3x3 stride-2 convs (no bias) each with BatchNorm, GELU between them, affine.

    Each conv halves the side, so `patch_size` 2 takes one conv (num_channels -> hidden) and 4 takes two
    (num_channels -> hidden // 2 -> hidden). The 3x3 windows overlap, so neighbouring tokens share pixels: that, and
    DAFF's depthwise conv, is where DHVT's tokens learn their positions. The affines let the model rescale the
    normalised pixels and the features it hands the transformer.
    """

    def __init__(self, config: VTLMConfig):
        super().__init__()
        num_convs = config.num_sope_convs
        widths = [config.num_channels] + [config.hidden_size // 2 ** (num_convs - 1 - i) for i in range(num_convs)]
        self.pixel_affine = VTLMChannelAffine(config.num_channels)
        self.convs = nn.ModuleList(
            VTLMConvBatchNorm(width_in, width_out, kernel_size=3, stride=2, bias=False)
            for width_in, width_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.act = ACT2FN[config.hidden_act]
        self.feature_affine = VTLMChannelAffine(config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.pixel_affine(pixel_values)
        for index, conv in enumerate(self.convs):
            features = conv(features)
            # The reference's one-conv embedding (patch 2) ends with its GELU; longer ones have GELUs only between.
            if index < len(self.convs) - 1 or len(self.convs) == 1:
                features = self.act(features)
        return self.feature_affine(features)  # (B, hidden, side, side)


# by config.patch_embedding_type
PATCH_EMBEDDING_CLASSES = {
    "patchify": VTLMPatchify,
    "conv": VTLMConvTokenizer,
    "sope": VTLMSequentialOverlappingPatchEmbedding,
}


class VTLMEmbeddings(nn.Module):
    """Patch embedding (patchify, conv tokenizer or SOPE), a CLS token in front if any, and learned positions if any."""

    def __init__(self, config: VTLMConfig):
        super().__init__()
        self.patch_embeddings = PATCH_EMBEDDING_CLASSES[config.patch_embedding_type](config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_cls_token else None
        self.position_embeddings = None
        if config.use_position_embeddings:
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
        dtype = next(self.patch_embeddings.parameters()).dtype
        pixel_values = pixel_values.to(dtype)  # a fp16 or bf16 model gets fp32 pixels
        embeddings = self.patch_embeddings(pixel_values).flatten(2).transpose(1, 2)  # (B, num_patches, hidden)
        if self.cls_token is not None:
            cls = self.cls_token.expand(embeddings.shape[0], -1, -1)
            embeddings = torch.cat([cls, embeddings], dim=1)  # (B, 1 + num_patches, hidden)
        if self.position_embeddings is not None:
            embeddings = embeddings + self.position_embeddings
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
        # An additive bias on the attention logits, (1, heads, T, T), that training code may set for some steps (the
        # annealed neighbourhood bias of `--locality_bias`); a plain attribute, so never saved, and None otherwise.
        self.attention_bias = None

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        attn_output, attn_weights = self.attend(hidden_states, output_attentions)
        return self.proj_dropout(attn_output), attn_weights

    def attend(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        """Attention of every token to every token, through the output projection, before dropout."""
        batch_size, seq_len, hidden_size = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)

        implementation = self.config._attn_implementation
        # Only the eager path materialises the attention probabilities.
        if implementation in (None, "eager") or output_attentions:
            attention_interface = eager_attention_forward
        else:
            attention_interface = ALL_ATTENTION_FUNCTIONS[implementation]
        attention_bias = None if self.attention_bias is None else self.attention_bias.to(query.dtype)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_bias,
            scaling=self.scaling,
            dropout=self.config.attention_probs_dropout_prob if self.training else 0.0,
            is_causal=False,
        )
        attn_output = attn_output.reshape(batch_size, seq_len, hidden_size)
        return self.proj(attn_output), attn_weights


class VTLMHeadTokens(nn.Module):
    """DHVT's head tokens: one token per attention head, a summary of the whole image in that head's channels.

    Each head sees only its own group of head_dim channels; its token is the mean of that group over all tokens
    (CLS included, as in the reference), projected to hidden_size, normalised and activated in head_dim-wide groups,
    plus a learned position per head.
    """

    def __init__(self, config: VTLMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.projection = nn.Linear(self.head_dim, config.hidden_size)
        self.norm = nn.LayerNorm(self.head_dim)  # PyTorch's default eps, as the reference's
        self.act = ACT2FN[config.hidden_act]
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.num_heads, config.hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size = hidden_states.shape[0]
        groups = hidden_states.reshape(batch_size, -1, self.num_heads, self.head_dim).mean(dim=1)  # (B, heads, hd)
        tokens = self.projection(groups).view(batch_size, self.num_heads, self.num_heads, self.head_dim)
        tokens = self.act(self.norm(tokens)).flatten(2)  # (B, heads, hidden)
        return tokens + self.position_embeddings


class VTLMHeadInteractionAttention(VTLMAttention):
    """DHVT's HI-MHSA: self-attention over the tokens and one head token per head, merged into the CLS token after.

    The head tokens let the heads, which never see each other's channels, exchange what they found; their outputs
    are averaged and added to the CLS token's, and the sequence leaves with its own length.
    """

    def __init__(self, config: VTLMConfig):
        super().__init__(config)
        self.head_tokens = VTLMHeadTokens(config)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        num_tokens = hidden_states.shape[1]
        extended = torch.cat([hidden_states, self.head_tokens(hidden_states)], dim=1)  # (B, T + heads, hidden)
        attn_output, attn_weights = self.attend(extended, output_attentions)
        tokens, head_outputs = attn_output.split([num_tokens, self.num_heads], dim=1)
        # The CLS token is at index 0 (the config requires one with head tokens).
        cls = tokens[:, :1] + head_outputs.mean(dim=1, keepdim=True)  # (B, 1, hidden)
        return self.proj_dropout(torch.cat([cls, tokens[:, 1:]], dim=1)), attn_weights


class VTLMMLP(nn.Module):
    def __init__(self, config: VTLMConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(hidden_states)))))


class VTLMDynamicAggregationFeedForward(nn.Module):
    """DHVT's DAFF: the feed-forward as convs on the patch tokens' 2-D map, and a channel rescaling of the CLS token.

    The 1x1 convs are the MLP's two Linears; between them, a 3x3 depthwise conv with a shortcut mixes each token
    with its neighbours (a convolution's locality, which small datasets reward). The CLS token, which has no place on
    the map, is rescaled by a squeeze-and-excitation of the map: its mean, squeezed to hidden_size // 4 and back.
    """

    def __init__(self, config: VTLMConfig):
        super().__init__()
        hidden_size, intermediate_size = config.hidden_size, config.intermediate_size
        self.grid_size = round(config.num_patches**0.5)  # patch tokens form a square map
        self.expand = VTLMConvBatchNorm(hidden_size, intermediate_size, kernel_size=1)
        self.depthwise = VTLMConvBatchNorm(
            intermediate_size, intermediate_size, kernel_size=3, groups=intermediate_size
        )
        self.reduce = VTLMConvBatchNorm(intermediate_size, hidden_size, kernel_size=1)
        self.act = ACT2FN[config.hidden_act]
        self.squeeze = nn.Linear(hidden_size, hidden_size // 4)
        self.excitation = nn.Linear(hidden_size // 4, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, _, hidden_size = hidden_states.shape
        # The CLS token is at index 0 and the patches follow it (the config requires a CLS token with DAFF).
        cls, patches = hidden_states[:, :1], hidden_states[:, 1:]
        features = patches.transpose(1, 2).reshape(batch_size, hidden_size, self.grid_size, self.grid_size)
        features = self.act(self.expand(features))  # (B, intermediate, side, side)
        features = features + self.act(self.depthwise(features))
        features = self.reduce(features)  # (B, hidden, side, side)
        scale = self.excitation(self.act(self.squeeze(features.mean(dim=(2, 3)))))  # (B, hidden)
        cls = cls * scale[:, None]
        patches = features.flatten(2).transpose(1, 2)  # (B, side * side, hidden)
        return self.dropout(torch.cat([cls, patches], dim=1))


FEED_FORWARD_CLASSES = {"mlp": VTLMMLP, "daff": VTLMDynamicAggregationFeedForward}  # by config.feed_forward_type
ATTENTION_CLASSES = {False: VTLMAttention, True: VTLMHeadInteractionAttention}  # by config.use_head_tokens


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
    """A pre-norm transformer block: two residual branches, attention then the feed-forward (MLP or DAFF)."""

    def __init__(self, config: VTLMConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ATTENTION_CLASSES[config.use_head_tokens](config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = FEED_FORWARD_CLASSES[config.feed_forward_type](config)  # `mlp` for DAFF too: checkpoints' keys
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

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted sum of the T tokens, (B, hidden), and each token's weight in it, (B, T) summing to 1."""
        weights = self.score(hidden_states).softmax(dim=1).squeeze(-1)  # (B, T)
        return (weights.unsqueeze(1) @ hidden_states).squeeze(1), weights


def _mimetic_factors(size, alpha, beta, device):
    """(left, right), each (size, size), with left @ right.T = alpha Z + beta I for a random Z ~ N(0, 1/size), and
    the first k columns of both the best rank-k factors of it: the SVD U S V^T split as U S^1/2 and V S^1/2."""
    target = alpha * torch.randn(size, size, device=device) / size**0.5 + beta * torch.eye(size, device=device)
    u, s, vh = torch.linalg.svd(target)
    return u * s.sqrt(), vh.T * s.sqrt()


# The cells of a 3x3 window, numbered row by row from the top left, in the order the heads take them (head h takes
# NEIGHBOUR_ORDER[h % 9]): the token itself, its four edge neighbours, then the corners, as Zheng et al.'s reference.
NEIGHBOUR_ORDER = (4, 1, 5, 3, 7, 0, 2, 6, 8)
# Impulse initialisation's target logits, as its reference's: a peak on each token's neighbour, and a little noise
# (IMPULSE_NOISE_SCALE x a normal with IMPULSE_NOISE_STD, truncated to +-2) everywhere else.
IMPULSE_PEAK = 1000.0
IMPULSE_NOISE_SCALE = 3.0
IMPULSE_NOISE_STD = 0.6


def neighbour_map(grid_size: int, num_heads: int, device=None) -> torch.Tensor:
    """(num_heads, grid_size**2, grid_size**2): 1 where a patch token (row) has the key token (column) as its head's
    neighbour (`NEIGHBOUR_ORDER`), 0 elsewhere. Tokens run row by row over the grid; a neighbour off the grid is
    none, so a border token's row may be all zeros."""
    rows, cols = torch.meshgrid(torch.arange(grid_size, device=device), torch.arange(grid_size, device=device),
                                indexing="ij")  # fmt: skip
    rows, cols = rows.flatten(), cols.flatten()
    maps = torch.zeros(num_heads, grid_size**2, grid_size**2, device=device)
    for head in range(num_heads):
        row_step, col_step = divmod(NEIGHBOUR_ORDER[head % len(NEIGHBOUR_ORDER)], 3)
        target_rows, target_cols = rows + row_step - 1, cols + col_step - 1
        inside = (target_rows >= 0) & (target_rows < grid_size) & (target_cols >= 0) & (target_cols < grid_size)
        tokens = torch.arange(grid_size**2, device=device)[inside]
        maps[head, tokens, target_rows[inside] * grid_size + target_cols[inside]] = 1.0
    return maps


def _impulse_factors(patch_positions, num_heads, head_dim, norm):
    """Per head, (left, right), each (hidden, head_dim), with P left right^T P^T ~ the head's impulse map.

    P is the layer-normalised positions of the patch tokens, (N, hidden). The target map (N, N) is fitted through P's
    rank-head_dim pseudo-inverse P+: A = P+ map P+^T; its SVD U S V^T split as U S^1/2 and V S^1/2, first head_dim
    columns; each factor scaled to Frobenius norm `norm`.
    """
    positions = nn.functional.layer_norm(patch_positions, patch_positions.shape[-1:])
    u, s, vh = torch.linalg.svd(positions, full_matrices=False)
    pseudo_inverse = vh[:head_dim].T @ torch.diag(1 / s[:head_dim]) @ u[:, :head_dim].T  # (hidden, N)
    grid_size = round(positions.shape[0] ** 0.5)
    maps = neighbour_map(grid_size, num_heads, positions.device)
    noise = nn.init.trunc_normal_(torch.empty_like(maps), std=IMPULSE_NOISE_STD)
    targets = IMPULSE_PEAK * maps + IMPULSE_NOISE_SCALE * noise * (maps == 0)
    factors = []
    for target in targets:
        u, s, vh = torch.linalg.svd(pseudo_inverse @ target @ pseudo_inverse.T)
        left, right = u[:, :head_dim] * s[:head_dim].sqrt(), vh[:head_dim].T * s[:head_dim].sqrt()
        factors.append((norm * left / left.norm(), norm * right / right.norm()))
    return factors


def _initialized(*modules_and_weights) -> bool:
    """Whether any of these was loaded, or initialised by an earlier pass: transformers 5 marks weights and modules
    with `_is_hf_initialized`, 4.x modules."""
    return any(getattr(item, "_is_hf_initialized", False) for item in modules_and_weights)


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
        # By exact type, so no branch depends on another's place: three kinds of conv here are Conv2d subclasses.
        std = self.config.initializer_range
        kind = type(module)
        if kind in (nn.Linear, VTLMPatchify):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif kind is VTLMTokenizerConv:
            # Each feeds a ReLU: He (Kaiming) normal init, which keeps the activations' scale, as CCT's.
            init.kaiming_normal_(module.weight)
        elif kind is VTLMConvBatchNorm:
            # SOPE's and DAFF's convs: DHVT's reference leaves them at PyTorch's default, Kaiming-uniform with
            # a = sqrt(5) and a bias uniform in +-1/sqrt(fan_in).
            init.kaiming_uniform_(module.weight, a=5**0.5)
            if module.bias is not None:
                bound = module.weight[0].numel() ** -0.5
                init.uniform_(module.bias, -bound, bound)
        elif kind in (nn.LayerNorm, VTLMChannelAffine):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif kind is nn.BatchNorm2d:
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif kind is VTLMEmbeddings:
            if module.cls_token is not None:
                init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            if module.position_embeddings is not None:
                position_std = self.config.position_initializer_range
                position_std = std if position_std is None else position_std
                init.trunc_normal_(module.position_embeddings, mean=0.0, std=position_std)
        elif kind is VTLMHeadTokens:
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)

    @torch.no_grad()
    def initialize_weights(self):
        """`_init_weights` on every module, then the mimetic or impulse initialisation of every attention layer when
        the config asks for it. Here rather than in `_init_weights`: transformers 5 skips modules with no parameters
        of their own there, and an attention layer's are its Linears'; impulse's also reads the positions."""
        # What is already initialised (loaded by from_pretrained, or by an earlier pass) is marked before this pass:
        # transformers 5 marks weights and modules, 4.x modules. Those keep their values.
        attentions = [
            attention
            for attention in self.modules()
            if isinstance(attention, VTLMAttention)
            and not _initialized(attention.qkv, attention.proj, attention.qkv.weight, attention.proj.weight)
        ]
        embeddings = next(module for module in self.modules() if isinstance(module, VTLMEmbeddings))
        positions = embeddings.position_embeddings  # the config refuses impulse initialisation without them
        fresh_positions = positions is not None and not _initialized(embeddings, positions)
        super().initialize_weights()
        initializer = self.config.attention_initializer
        if initializer == "normal" or not attentions or attentions[0].qkv.weight.device.type == "meta":
            return  # nothing to do, all loaded, or built without weights, to be loaded
        if initializer == "impulse" and fresh_positions:
            positions.mul_(self.config.impulse_position_scale)
        config = self.config
        device = positions.device if positions is not None else attentions[0].qkv.weight.device
        for attention in attentions:
            # Each layer's own width: a pre-training's MAE decoder is narrower than the encoder.
            hidden_size, num_heads = attention.config.hidden_size, attention.num_heads
            if initializer == "mimetic":
                query_key = [
                    _mimetic_factors(hidden_size, config.mimetic_alpha1, config.mimetic_beta1, device)
                    for _ in range(num_heads)
                ]
            else:  # the patch tokens' positions, behind the CLS token if any
                patch_positions = positions[0, embeddings.cls_token is not None :].float()
                query_key = _impulse_factors(
                    patch_positions, num_heads, attention.head_dim, config.impulse_query_key_norm
                )
            value_output = _mimetic_factors(hidden_size, config.mimetic_alpha2, -config.mimetic_beta2, device)
            self._set_attention_weights(attention, query_key, value_output)

    @staticmethod
    def _set_attention_weights(attention, query_key, value_output):
        """Give `attention` the products its initialisation asks for (see `VTLMConfig.attention_initializer`).

        In the papers' notation q = x W_q, so W_q is the transpose of the Linear's (head_dim, hidden) rows. Head h
        gets W_q^h W_k^h^T = left right^T from its `query_key[h]` (the first head_dim columns of each); the layer gets
        W_v W_o = left right^T from `value_output`, over all heads together; biases stay as they are (zero).
        """
        qkv, proj = attention.qkv.weight, attention.proj.weight
        head_dim = attention.head_dim
        query, key, _ = (part.clone() for part in qkv.float().chunk(3))  # each (hidden, hidden): (out, in)
        for head, (left, right) in enumerate(query_key):
            rows = slice(head * head_dim, (head + 1) * head_dim)
            query[rows], key[rows] = left[:, :head_dim].T, right[:, :head_dim].T
        left, right = value_output
        value, output = left.T, right  # W_v = left and W_o = right.T: W_v W_o = left right.T
        qkv.copy_(torch.cat([query, key, value]))
        proj.copy_(output)

    def no_weight_decay_parameter_names(self):
        """Names of parameters that should get no weight decay: biases, norms (BatchNorm and SOPE's per-channel affines
        included), the CLS token and positions (the head tokens' included).

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
        # The one pooling with weights is a module of its own, the others a line of `pool`; not a table of pooling
        # modules: published checkpoints key its weights `sequence_pooling.*`, which a shared attribute would rename.
        self.sequence_pooling = VTLMSequencePooling(config) if config.pooling == "sequence" else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens in front of the patch tokens in `last_hidden_state` and the attention maps: the CLS token, if any."""
        return int(self.config.use_cls_token)

    @property
    def num_head_tokens(self) -> int:
        """Tokens the attention maps (`attentions`) hold after the sequence: DHVT's head tokens, one per head."""
        return self.config.num_attention_heads if self.config.use_head_tokens else 0

    def pool(self, sequence_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pooled output of `sequence_output` (the model's `last_hidden_state`), (B, hidden), and each patch
        token's weight in it, (B, num_patches) summing to 1: sequence pooling's learned softmax, or uniform for mean
        pooling; None for CLS pooling, which reads one token."""
        patch_tokens = sequence_output[:, self.num_prefix_tokens :]
        if self.config.pooling == "sequence":
            return self.sequence_pooling(patch_tokens)
        if self.config.pooling == "mean":
            return patch_tokens.mean(dim=1), patch_tokens.new_full(patch_tokens.shape[:2], 1 / patch_tokens.shape[1])
        return sequence_output[:, 0], None

    def pooling_weights(self, sequence_output: torch.Tensor) -> torch.Tensor | None:
        """Each patch token's weight in the pooled output of `sequence_output` (`pool`'s), or None for CLS pooling."""
        return self.pool(sequence_output)[1]

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
        pooled_output, _ = self.pool(sequence_output)

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
