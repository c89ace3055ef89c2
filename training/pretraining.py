"""Self-supervised pre-training of VTLM's encoder by masked image modelling: a masked autoencoder (He et al. 2022).

Most patches of each training image are hidden; the encoder sees the rest, with the CLS token, and a small decoder
predicts the hidden patches' pixels from the encoder's tokens and a shared mask token. Only the encoder is kept: the
run saves it as a `VTLMModel`, which `scripts/train.py --model_name_or_path` fine-tunes as a classifier (the
classification head starts fresh there, and the decoder is gone).

Why not transformers' `ViTMAEForPreTraining`: it re-implements the encoder, with fixed sin-cos positions and no
stochastic depth, where VTLM's encoder has learned positions, fused q/k/v and its own initialisers. Pre-training
through it would need a second weight mapping to and from VTLM that must follow the ViT module renames between
transformers releases. This module runs VTLM's own embeddings and blocks, so the pre-trained encoder is the
fine-tuned model's, key for key. It follows `ViTMAEForPreTraining`'s conventions: the masking by sorting per-image
noise (`noise` may be given, as there, so masks are reproducible), the loss on the masked patches only, pixel targets
normalised per patch (`norm_pix_loss`), and the decoder's config names (`decoder_hidden_size`, ...).
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from vtlm.modeling import VTLMConfig, VTLMModel, VTLMPreTrainedModel
from vtlm.modeling.modeling_vtlm import VTLMEncoder

from .augmentation import augmentation_seed
from .data import collate_batch
from .flops import ImageFlops, count_training_flops
from .trainer import StopOnNonFiniteLoss, VTLMTrainer

# What masking needs of the encoder: patch tokens it can drop one by one. The conv tokenizer and SOPE mix
# neighbouring pixels before tokens exist, DAFF convolves the token grid and head tokens average all patch tokens:
# each would see or need the hidden patches.
MASKABLE = {
    "patch_embedding_type": "patchify",
    "use_cls_token": True,
    "use_position_embeddings": True,
    "feed_forward_type": "mlp",
    "use_head_tokens": False,
}


def check_maskable(config: VTLMConfig):
    """Refuse a layout that masked image modelling cannot pre-train, naming the fields."""
    refusals = [
        f"{name}={getattr(config, name)!r}" for name, value in MASKABLE.items() if getattr(config, name) != value
    ]
    if refusals:
        needed = ", ".join(f"{name}={value!r}" for name, value in MASKABLE.items())
        raise ValueError(
            f"masked image modelling hides patch tokens, which needs {needed}; this model has {', '.join(refusals)}"
        )


@dataclass
class MaskedImageModelingOutput(ModelOutput):
    """`loss`: mean squared error on the masked patches; `logits`: the predicted pixels of every patch,
    (B, num_patches, patch_size**2 * channels); `mask`: 1 where a patch was hidden, (B, num_patches)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class VTLMForMaskedImageModeling(VTLMPreTrainedModel):
    """VTLM's encoder (`self.vtlm`, keys as in `VTLMForImageClassification`) with an MAE decoder that exists only in
    pre-training.

    The decoder is a stack of VTLM blocks of its own width: a Linear from the encoder's width, a learned mask token,
    learned positions, `decoder_num_hidden_layers` blocks, a LayerNorm and a Linear to each patch's pixels.
    """

    def __init__(self, config: VTLMConfig, pretraining_args):
        super().__init__(config)
        check_maskable(config)
        self.pretraining_args = pretraining_args
        self.vtlm = VTLMModel(config)
        decoder_config = VTLMConfig.from_dict(
            {
                **config.to_dict(),
                "hidden_size": pretraining_args.decoder_hidden_size,
                "num_hidden_layers": pretraining_args.decoder_num_hidden_layers,
                "num_attention_heads": pretraining_args.decoder_num_attention_heads,
                "intermediate_size": pretraining_args.decoder_intermediate_size,
                "drop_path_rate": 0.0,
            }
        )
        self.decoder_embed = nn.Linear(config.hidden_size, decoder_config.hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_config.hidden_size))
        self.decoder_position_embeddings = nn.Parameter(
            torch.zeros(1, 1 + config.num_patches, decoder_config.hidden_size)
        )
        self.decoder = VTLMEncoder(decoder_config)
        self.decoder_norm = nn.LayerNorm(decoder_config.hidden_size, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(decoder_config.hidden_size, config.patch_size**2 * config.num_channels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:  # the decoder's own parameters, as the encoder's CLS token and positions
            std = self.config.initializer_range
            nn.init.trunc_normal_(self.mask_token, std=std)
            nn.init.trunc_normal_(self.decoder_position_embeddings, std=std)

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_patches, patch_size**2 * C), patches in the patch embedding's row-major order."""
        batch, channels, height, width = pixel_values.shape
        size = self.config.patch_size
        patches = pixel_values.reshape(batch, channels, height // size, size, width // size, size)
        return patches.permute(0, 2, 4, 3, 5, 1).reshape(
            batch, (height // size) * (width // size), size * size * channels
        )

    def forward(self, pixel_values: torch.Tensor, noise: torch.Tensor | None = None) -> MaskedImageModelingOutput:
        """`noise` (B, num_patches), uniform in [0, 1): the patches with the lowest values are kept. Drawn here when
        not given."""
        embeddings = self.vtlm.embeddings(pixel_values)  # (B, 1 + num_patches, hidden), positions added
        cls, patches = embeddings[:, :1], embeddings[:, 1:]
        batch, num_patches, hidden = patches.shape
        num_kept = int(num_patches * (1 - self.pretraining_args.mask_ratio))
        if noise is None:
            noise = torch.rand(batch, num_patches, device=patches.device)
        shuffle = noise.argsort(dim=1)  # (B, num_patches): kept patches first
        restore = shuffle.argsort(dim=1)
        kept = patches.gather(1, shuffle[:, :num_kept, None].expand(-1, -1, hidden))  # (B, num_kept, hidden)

        encoded = self.vtlm.encoder(torch.cat([cls, kept], dim=1)).last_hidden_state
        encoded = self.decoder_embed(self.vtlm.layernorm(encoded))  # (B, 1 + num_kept, decoder_hidden)
        mask_tokens = self.mask_token.expand(batch, num_patches - num_kept, -1)
        tokens = torch.cat([encoded[:, 1:], mask_tokens], dim=1)
        tokens = tokens.gather(1, restore[..., None].expand(-1, -1, tokens.shape[-1]))  # back in patch order
        tokens = torch.cat([encoded[:, :1], tokens], dim=1) + self.decoder_position_embeddings
        predicted = self.decoder_pred(self.decoder_norm(self.decoder(tokens).last_hidden_state[:, 1:]))

        target = self.patchify(pixel_values.to(predicted.dtype))
        # Each patch's pixels normalised by their own mean and variance: MAE's best setting.
        if self.pretraining_args.norm_pix_loss:
            mean, variance = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (variance + 1e-6) ** 0.5
        mask = torch.ones(batch, num_patches, device=patches.device)
        mask[:, :num_kept] = 0
        mask = mask.gather(1, restore)  # (B, num_patches), 1 = hidden
        loss = (((predicted.float() - target.float()) ** 2).mean(dim=-1) * mask).sum() / mask.sum()
        return MaskedImageModelingOutput(loss=loss, logits=predicted, mask=mask)


def pretraining_flops_per_image(config: VTLMConfig, pretraining_args) -> ImageFlops:
    """Forward and backward FLOPs of one pre-training image (`training.flops.count_training_flops`): the encoder on
    the kept patches, the decoder on all of them. Built on the meta device, as `training.flops.flops_per_image`."""
    with torch.device("meta"):
        model = VTLMForMaskedImageModeling(copy.deepcopy(config), pretraining_args)
    model.set_attn_implementation("eager")  # plain matmuls, which the counter sees on every device
    pixel_values = torch.zeros(1, config.num_channels, config.image_size, config.image_size, device="meta")
    return count_training_flops(model, lambda: model(pixel_values).loss)


class MaskedImageModelingTrainer(VTLMTrainer):
    """A `VTLMTrainer` that pre-trains `VTLMForMaskedImageModeling`: each training batch is augmented as a
    classifier's (the pre-training recipe keeps crop and flip only) and gets its mask noise from a seed of (seed,
    global step, rank, micro-step), so a resumed run hides the same patches as an uninterrupted one. It never
    evaluates: pre-training reads the training split only."""

    def training_inputs(self, inputs, micro_step):
        pixel_values = super().training_inputs(inputs, micro_step)["pixel_values"]
        seed = augmentation_seed(self.args.seed, self.state.global_step, self.args.process_index, micro_step, "mask")
        num_patches = self.accelerator.unwrap_model(self.model).config.num_patches
        noise = torch.rand(len(pixel_values), num_patches, generator=torch.Generator().manual_seed(seed))
        return {"pixel_values": pixel_values, "noise": noise.to(pixel_values.device)}

    def count_image_flops(self, model) -> ImageFlops:
        return pretraining_flops_per_image(model.config, model.pretraining_args)


def build_pretraining_trainer(model, training_args, data, augmentation, image_processor, callbacks=()):
    """The `MaskedImageModelingTrainer` of a pre-training run: it reads the train split only, augmented as
    `augmentation` says and normalised as `image_processor` normalises, and never evaluates."""
    return MaskedImageModelingTrainer(
        model=model,
        args=training_args,
        train_dataset=data.tensors("train"),
        data_collator=collate_batch,
        processing_class=image_processor,
        augmentation=augmentation,
        callbacks=[StopOnNonFiniteLoss(), *callbacks],
    )
