"""A convolution's locality for the first part of training only: a neighbourhood bias on the attention logits,
annealed to zero (`--locality_bias`, `--locality_bias_fraction`).

Each head of every block gets `strength` added to the logit from each patch token to one neighbour of its 3x3 window
(head h the cell `NEIGHBOUR_ORDER[h % 9]`, the offsets of impulse initialisation), nothing on the CLS token's or DHVT's
head tokens' rows and columns. The bias falls linearly with the optimizer step, from `strength` at step 0 to exactly 0
at `fraction` of the run's steps, and is absent from then on. It lives only inside a training step: evaluation, every
checkpoint and the saved model never see it, so the trained model is the plain architecture, its config, code and
exports exactly what they are without it. It depends on the step alone, so a resumed run gets the same bias at the same
step as an uninterrupted one.
"""

from contextlib import contextmanager

import torch

from vtlm.modeling.modeling_vtlm import neighbour_map


class LocalityBias:
    """The annealed neighbourhood bias of `model`'s attention layers (any module with an `attention_bias`)."""

    def __init__(self, model, strength: float, fraction: float):
        if not strength > 0 or not 0 < fraction <= 1:
            raise ValueError(f"a locality bias needs strength > 0 and fraction in (0, 1], got {strength}, {fraction}")
        config = model.config
        if config._attn_implementation not in (None, "eager", "sdpa"):
            raise ValueError(
                f"--locality_bias adds to the attention logits, which the {config._attn_implementation!r} attention "
                "cannot take: train with 'sdpa' or 'eager' attention"
            )
        self.strength = strength
        self.fraction = fraction
        self.attentions = [module for module in model.modules() if hasattr(module, "attention_bias")]
        grid_size = round(config.num_patches**0.5)
        num_heads = config.num_attention_heads
        prefix = int(config.use_cls_token)
        length = config.sequence_length + (num_heads if config.use_head_tokens else 0)  # head tokens come last
        bias = torch.zeros(1, num_heads, length, length)
        bias[0, :, prefix : prefix + grid_size**2, prefix : prefix + grid_size**2] = neighbour_map(grid_size, num_heads)
        self.pattern = bias  # (1, heads, T, T): 1 on each patch's neighbour, moved to the model's device when used
        self._scaled = None  # the bias at the current step, one tensor updated in place

    def scale(self, step: int, max_steps: int) -> float:
        """The bias's strength at optimizer step `step` of `max_steps`: linear from `strength` to 0 at `fraction`."""
        return max(0.0, self.strength * (1 - step / (self.fraction * max_steps)))

    @contextmanager
    def applied(self, step: int, max_steps: int):
        """Within this block, every attention layer adds the bias of `step`; afterwards none does."""
        scale = self.scale(step, max_steps)
        if scale == 0.0:
            yield
            return
        device = self.attentions[0].qkv.weight.device
        if self._scaled is None or self._scaled.device != device:
            self.pattern = self.pattern.to(device)
            self._scaled = torch.empty_like(self.pattern)
        torch.mul(self.pattern, scale, out=self._scaled)
        for attention in self.attentions:
            attention.attention_bias = self._scaled
        try:
            yield
        finally:
            for attention in self.attentions:
                attention.attention_bias = None
