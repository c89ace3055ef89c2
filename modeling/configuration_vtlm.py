"""VTLM configuration: every architecture knob of the model, validated on construction."""

try:
    from transformers import PreTrainedConfig
except ImportError:  # transformers 4.x spells it PretrainedConfig
    from transformers import PretrainedConfig as PreTrainedConfig
from transformers.activations import ACT2FN

# CIFAR-100's fine labels in the Hub's index order. The Hub spells index 26 "cra"; we publish "crab".
CIFAR100_LABELS = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

# Presets are data: each names the architecture fields that differ from the defaults.
PRESETS = {
    # The seed model (Madras1/VTLM37m): 37,939,812 parameters with 100 labels.
    "vtlm-37m": {"hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8, "intermediate_size": 2048},
    # The seed README's flags.
    "vtlm-14m": {"hidden_size": 384, "num_hidden_layers": 8, "num_attention_heads": 12, "intermediate_size": 1536},
    # The seed's CIFAR-10 example.
    "vtlm-5m": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 1024},
}
POOLINGS = ("cls", "mean")
# Every saved config names all three Auto classes: `save_pretrained` alone writes only the saved class's entry.
AUTO_MAP = {
    "AutoConfig": "configuration_vtlm.VTLMConfig",
    "AutoModel": "modeling_vtlm.VTLMModel",
    "AutoModelForImageClassification": "modeling_vtlm.VTLMForImageClassification",
}


class VTLMConfig(PreTrainedConfig):
    r"""
    Configuration of a VTLM model: a ViT for small images (CIFAR-sized by default).

    The defaults are the seed model, `vtlm-37m`. `VTLMConfig.from_preset(name, **overrides)` builds the other presets.

    Args:
        image_size (`int`): side of the square input image, in pixels.
        patch_size (`int`): side of a square patch; the patch embedding is a Conv2d with kernel = stride = patch_size.
        num_channels (`int`): input channels.
        hidden_size (`int`): width of the residual stream.
        num_hidden_layers (`int`): number of pre-norm transformer blocks.
        num_attention_heads (`int`): attention heads per block; must divide `hidden_size`.
        intermediate_size (`int`): hidden width of the MLP.
        hidden_act (`str`): MLP activation, any key of `transformers.activations.ACT2FN`.
        hidden_dropout_prob (`float`): dropout on the embeddings, the attention output and the MLP (the seed used 0.1).
        attention_probs_dropout_prob (`float`): dropout on the attention probabilities.
        drop_path_rate (`float`): stochastic depth rate of the last block, rising linearly from 0 in the first.
        layer_norm_eps (`float`): epsilon of every LayerNorm.
        qkv_bias (`bool`): whether the fused query/key/value projection has a bias.
        initializer_range (`float`): std of the truncated-normal init of weights, the CLS token and positions.
        pooling (`str`): `"cls"` classifies from the CLS token (the seed), `"mean"` from the mean of patch tokens.
    """

    model_type = "vtlm"

    def __init__(
        self,
        image_size=32,
        patch_size=4,
        num_channels=3,
        hidden_size=512,
        num_hidden_layers=12,
        num_attention_heads=8,
        intermediate_size=2048,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        initializer_range=0.02,
        pooling="cls",
        **kwargs,
    ):
        if "id2label" not in kwargs and "num_labels" not in kwargs:
            kwargs["id2label"] = dict(enumerate(CIFAR100_LABELS))
            kwargs["label2id"] = {label: i for i, label in enumerate(CIFAR100_LABELS)}
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.initializer_range = initializer_range
        self.pooling = pooling
        super().__init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        """Raise a `ValueError` naming the first field whose value cannot build a model."""
        sizes = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads")
        for name in (*sizes, "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"qkv_bias must be a bool, got {self.qkv_bias!r}")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act must be one of transformers' activations, got {self.hidden_act!r}")

    @classmethod
    def from_preset(cls, name, **overrides):
        """Build the preset `name` (one of `PRESETS`), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def num_patches(self):
        return (self.image_size // self.patch_size) ** 2


__all__ = ["VTLMConfig"]
