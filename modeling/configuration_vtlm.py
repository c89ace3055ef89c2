"""VTLM configuration: every architecture knob of the model, validated on construction."""

try:
    from transformers import PreTrainedConfig
except ImportError:  # transformers 4.x spells it PretrainedConfig
    from transformers import PretrainedConfig as PreTrainedConfig

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

# What every DHVT preset sets: its three parts and no positions.
DHVT_PARTS = {
    "patch_embedding_type": "sope",
    "use_position_embeddings": False,
    "feed_forward_type": "daff",
    "use_head_tokens": True,
}
# Presets are data: each names the architecture fields that differ from the defaults. The dropout and stochastic depth
# a run trains with are the recipe's (train.py's --hidden_dropout_prob and --drop_path_rate, whose defaults are also
# CCT's and DHVT's references'), not a preset's; CCT's attention dropout, which no flag sets, is its preset's.
PRESETS = {
    # The original model (Madras1/VTLM37m): 37,939,812 parameters with 100 labels.
    "vtlm-37m": {"hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8, "intermediate_size": 2048},
    # The original model's README flags.
    "vtlm-14m": {"hidden_size": 384, "num_hidden_layers": 8, "num_attention_heads": 12, "intermediate_size": 1536},
    # The original model's CIFAR-10 example.
    "vtlm-5m": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 1024},
    # CCT-7/3x1 (Hassani et al. 2021, "Escaping the Big Data Paradigm with Compact Transformers") as its reference code
    # defines it: one 3x3 conv tokenizer block (256 tokens), no CLS token, sequence pooling, CCT's block layout and
    # init, its attention dropout. 3,783,269 parameters with 100 labels, as the reference's `cct_7_3x1_32_c100`.
    "vtlm-cct-7-3x1": {
        "hidden_size": 256,
        "num_hidden_layers": 7,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "patch_embedding_type": "conv",
        "num_conv_layers": 1,
        "conv_kernel_size": 3,
        "use_cls_token": False,
        "pooling": "sequence",
        "layer_norm_layout": "cct",
        "qkv_bias": False,
        "layer_norm_eps": 1e-5,
        "position_initializer_range": 0.2,
        "attention_probs_dropout_prob": 0.1,
    },
    # The original model's transformer and block, fed by a two-block conv tokenizer (3 -> 64 -> 512 channels,
    # 32 -> 16 -> 8 pixels: the original model's 64 tokens) and read out by sequence pooling instead of a CLS token.
    "vtlm-37m-conv": {
        "hidden_size": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
        "patch_embedding_type": "conv",
        "num_conv_layers": 2,
        "conv_hidden_size": 64,
        "use_cls_token": False,
        "pooling": "sequence",
    },
    # DHVT (Lu et al. 2022, "Bridging the Gap Between Vision Transformers and Convolutional Neural Networks on Small
    # Datasets") as its reference code defines it (ArieSeirack/DHVT): SOPE without position embeddings, DAFF and
    # HI-MHSA in every block, on a DeiT-sized transformer. 5,845,162 parameters with 100 labels, as the reference's
    # `dhvt_tiny_cifar_patch2`: 256 tokens + CLS.
    "vtlm-dhvt-t2": {
        **DHVT_PARTS,
        "hidden_size": 192,
        "num_hidden_layers": 12,
        "num_attention_heads": 4,
        "intermediate_size": 768,
        "patch_size": 2,
    },
    # The same at the reference's `dhvt_small_cifar_patch4`: 23,425,450 parameters with 100 labels, 64 tokens + CLS.
    "vtlm-dhvt-s4": {
        **DHVT_PARTS,
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "intermediate_size": 1536,
        "patch_size": 4,
    },
}
PATCH_EMBEDDING_TYPES = ("patchify", "conv", "sope")
SOPE_NUM_CONVS = {2: 1, 4: 2}  # by patch_size: each of SOPE's stride-2 convs halves the side
FEED_FORWARD_TYPES = ("mlp", "daff")
POOLINGS = ("cls", "mean", "sequence")
LAYER_NORM_LAYOUTS = ("pre_norm", "cct")
ATTENTION_INITIALIZERS = ("normal", "mimetic", "impulse")
MIMETIC_FIELDS = ("mimetic_alpha1", "mimetic_beta1", "mimetic_alpha2", "mimetic_beta2")
IMPULSE_FIELDS = ("impulse_position_scale", "impulse_query_key_norm")
# Every saved config names all three Auto classes: `save_pretrained` alone writes only the saved class's entry.
AUTO_MAP = {
    "AutoConfig": "configuration_vtlm.VTLMConfig",
    "AutoModel": "modeling_vtlm.VTLMModel",
    "AutoModelForImageClassification": "modeling_vtlm.VTLMForImageClassification",
}


class VTLMConfig(PreTrainedConfig):
    r"""
    Configuration of a VTLM model: a ViT for small images (CIFAR-sized by default).

    The defaults are the original model, `vtlm-37m`. `VTLMConfig.from_preset(name, **overrides)` builds the other
    presets.

    Args:
        image_size (`int`): side of the square input image, in pixels.
        num_channels (`int`): input channels.
        patch_embedding_type (`str`): how pixels become tokens. `"patchify"` (the original model): one Conv2d with
            kernel = stride = `patch_size`, a token per patch. `"conv"`: CCT's convolutional tokenizer,
            `num_conv_layers` blocks of (k x k conv with stride 1 and no bias, ReLU, 3x3 max-pool with stride 2), each
            halving the image side (rounding up); a token per pixel of the last feature map.
            `"sope"`: DHVT's sequential overlapping patch embedding, a learned per-channel affine on the pixels, then
            3x3 convs with stride 2 and no bias, each followed by BatchNorm (one conv for `patch_size` 2, two for 4,
            with `hidden_size // 2` channels between them), a GELU between them (the one-conv embedding ends with
            one, as the reference's does), and a learned per-channel affine on the features; a token per patch.
        patch_size (`int`): side of a square patch of the `"patchify"` and `"sope"` embeddings (`"sope"`: 2 or 4).
        num_conv_layers (`int`): conv blocks of the `"conv"` tokenizer.
        conv_kernel_size (`int`): side k of the tokenizer's convs; odd, so that padding k // 2 keeps the image side.
        conv_hidden_size (`int`): output channels of every tokenizer block but the last, which outputs `hidden_size`.
        use_cls_token (`bool`): whether a learned CLS token is put in front of the patch tokens (the original: yes).
        use_position_embeddings (`bool`): whether learned positions are added to the tokens (the original: yes). DHVT
            has none: its overlapping convs and DAFF's depthwise conv tell the tokens where they are.
        hidden_size (`int`): width of the residual stream.
        num_hidden_layers (`int`): number of transformer blocks.
        num_attention_heads (`int`): attention heads per block; must divide `hidden_size`.
        intermediate_size (`int`): hidden width of the MLP (of DAFF: the channels of its depthwise conv).
        feed_forward_type (`str`): the second branch of every block. `"mlp"` (the original model): Linear, activation,
            Linear on every token. `"daff"`: DHVT's dynamic aggregation feed-forward, on the patch tokens as a 2-D map:
            1x1 conv, BatchNorm, activation; a 3x3 depthwise conv, BatchNorm, activation with a shortcut around them;
            1x1 conv, BatchNorm. The CLS token is rescaled, channel by channel, by a squeeze-and-excitation of the
            map's mean (Linear to `hidden_size // 4`, activation, Linear back, no sigmoid, as in the reference). Needs
            the CLS token.
        use_head_tokens (`bool`): DHVT's head-token interaction (HI-MHSA). Each block's attention gets one extra token
            per head: the mean over the tokens of that head's channel group, projected to `hidden_size`, normalised
            in `num_attention_heads` groups, passed through the activation and given its own learned position. The
            head tokens attend and are attended to like the others; their outputs are averaged and added to the CLS
            token's. Needs the CLS token.
        hidden_act (`str`): activation of the MLP, and of SOPE, DAFF and the head tokens; any key of
            `transformers.activations.ACT2FN`.
        hidden_dropout_prob (`float`): dropout on the embeddings, the attention output and the MLP (the
            original model used 0.1).
        attention_probs_dropout_prob (`float`): dropout on the attention probabilities.
        drop_path_rate (`float`): stochastic depth rate of the last block, rising linearly from 0 in the first.
        layer_norm_layout (`str`): where a block puts its LayerNorms. `"pre_norm"` (the original model, ViT): one
            before each residual branch. `"cct"` (CCT's reference): one before attention, then the residual stream
            itself is normalised and the MLP branch adds to the normalised stream.
        layer_norm_eps (`float`): epsilon of every LayerNorm.
        qkv_bias (`bool`): whether the fused query/key/value projection has a bias.
        initializer_range (`float`): std of the truncated-normal init of weights and the CLS token (and of the
            positions, unless `position_initializer_range` is set, and of the head tokens' positions). The `"conv"`
            tokenizer's convs, which feed a ReLU, get Kaiming-normal init instead, as in CCT; SOPE's and DAFF's convs
            keep PyTorch's default init, as in DHVT's reference. BatchNorm starts as the identity on fresh
            statistics.
        position_initializer_range (`float`, *optional*): std of the truncated-normal init of the positions; `None`
            uses `initializer_range` (the original model). CCT uses 0.2.
        pooling (`str`): what the head classifies. `"cls"`: the CLS token (the original model). `"mean"`: the
            mean of the patch tokens. `"sequence"`: CCT's sequence pooling, a softmax weighting over the patch tokens
            from a learned Linear(hidden_size, 1), and their weighted sum.
        attention_initializer (`str`): how the attention weights start. `"normal"` (the original model): like every
            Linear, truncated normal with `initializer_range`. `"mimetic"`: Trockman & Kolter's mimetic
            initialisation (ICML 2023, "Mimetic Initialization of Self-Attention Layers"), which makes a fresh
            attention layer look like a trained one, for models trained on small data: each head's
            W_q W_k^T ~ mimetic_alpha1 Z1 + mimetic_beta1 I (the head's rank-head_dim part of it: tokens attend to
            tokens like themselves, as trained heads do) and the layer's W_v W_o ~ mimetic_alpha2 Z2 - mimetic_beta2 I,
            Z random N(0, 1/hidden_size), both factored by SVD. It only sets the starting weights: a loaded model keeps
            its own, and the built-in ViT export accepts either value.
            `"impulse"`: Zheng et al.'s structured initialisation (NeurIPS 2025, "Structured Initialization for
            Vision Transformers"), a convolution's locality put into the weights: the learned positions are scaled by
            `impulse_position_scale`, and each head's W_q W_k^T is fitted, through the (layer-normalised) positions of
            the patch tokens, to a map in which every patch attends to one neighbour of its 3x3 window (head h takes
            the cell `NEIGHBOUR_ORDER[h % 9]` of `modeling_vtlm`: the patch itself, then its four edge neighbours,
            then the corners), each head's factors scaled to Frobenius norm `impulse_query_key_norm`; W_v W_o starts
            as mimetic's. Needs learned positions on a square grid of patch tokens.
        mimetic_alpha1, mimetic_beta1, mimetic_alpha2, mimetic_beta2 (`float`): the mimetic initialisation's
            constants; the defaults are the paper's for ViTs (0.7, 0.7, 0.4, 0.4). Impulse initialisation uses
            `mimetic_alpha2` and `mimetic_beta2` for W_v W_o, as its reference does.
        impulse_position_scale, impulse_query_key_norm (`float`): the impulse initialisation's constants; the
            defaults are its reference code's (18 and 7).
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
        # CCT's ideas, appended so that positional arguments keep their meaning; the defaults are the original model.
        patch_embedding_type="patchify",
        num_conv_layers=1,
        conv_kernel_size=3,
        conv_hidden_size=64,
        use_cls_token=True,
        layer_norm_layout="pre_norm",
        position_initializer_range=None,
        # DHVT's ideas, appended likewise; the defaults are the original model.
        use_position_embeddings=True,
        feed_forward_type="mlp",
        use_head_tokens=False,
        # Initialisation only, appended likewise; the default is the original model's.
        attention_initializer="normal",
        mimetic_alpha1=0.7,
        mimetic_beta1=0.7,
        mimetic_alpha2=0.4,
        mimetic_beta2=0.4,
        impulse_position_scale=18.0,
        impulse_query_key_norm=7.0,
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
        self.patch_embedding_type = patch_embedding_type
        self.num_conv_layers = num_conv_layers
        self.conv_kernel_size = conv_kernel_size
        self.conv_hidden_size = conv_hidden_size
        self.use_cls_token = use_cls_token
        self.layer_norm_layout = layer_norm_layout
        self.position_initializer_range = position_initializer_range
        self.use_position_embeddings = use_position_embeddings
        self.feed_forward_type = feed_forward_type
        self.use_head_tokens = use_head_tokens
        self.attention_initializer = attention_initializer
        self.mimetic_alpha1 = mimetic_alpha1
        self.mimetic_beta1 = mimetic_beta1
        self.mimetic_alpha2 = mimetic_alpha2
        self.mimetic_beta2 = mimetic_beta2
        self.impulse_position_scale = impulse_position_scale
        self.impulse_query_key_norm = impulse_query_key_norm
        super().__init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        """Raise a `ValueError` naming the first field whose value cannot build a model."""
        sizes = ("image_size", "num_channels", "patch_size", "num_conv_layers", "conv_kernel_size", "conv_hidden_size")
        for name in (*sizes, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
        for name in ("layer_norm_eps", "initializer_range", "position_initializer_range"):
            value = getattr(self, name)
            if name == "position_initializer_range" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name, choices in (
            ("patch_embedding_type", PATCH_EMBEDDING_TYPES),
            ("pooling", POOLINGS),
            ("layer_norm_layout", LAYER_NORM_LAYOUTS),
            ("feed_forward_type", FEED_FORWARD_TYPES),
            ("attention_initializer", ATTENTION_INITIALIZERS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in MIMETIC_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in IMPULSE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("use_cls_token", "qkv_bias", "use_position_embeddings", "use_head_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.patch_embedding_type in ("patchify", "sope") and self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})")
        if self.patch_embedding_type == "sope" and self.patch_size not in SOPE_NUM_CONVS:
            raise ValueError(f"patch_size must be one of {tuple(SOPE_NUM_CONVS)} for SOPE, got {self.patch_size!r}")
        if self.patch_embedding_type == "sope" and self.hidden_size % 2 ** (self.num_sope_convs - 1):
            raise ValueError(
                f"hidden_size must be divisible by {2 ** (self.num_sope_convs - 1)} for SOPE at patch_size "
                f"{self.patch_size} (halved between its convs), got {self.hidden_size}"
            )
        if self.feed_forward_type == "daff" and self.hidden_size < 4:
            raise ValueError(
                f"hidden_size must be at least 4 for DAFF (squeezed to hidden_size // 4), got {self.hidden_size}"
            )
        if self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size must be odd, to keep the image side, got {self.conv_kernel_size!r}")
        if self.pooling == "cls" and not self.use_cls_token:
            raise ValueError(f"use_cls_token is {self.use_cls_token!r}, but pooling 'cls' reads the CLS token")
        if self.feed_forward_type == "daff" and not self.use_cls_token:
            raise ValueError(f"use_cls_token is {self.use_cls_token!r}, but feed_forward_type 'daff' rescales it")
        if self.attention_initializer == "impulse" and not self.use_position_embeddings:
            raise ValueError(
                "attention_initializer 'impulse' fits each head's attention through the learned position embeddings, "
                "but use_position_embeddings is False (DHVT's layouts have none): use 'normal' or 'mimetic'"
            )
        if self.use_head_tokens and not self.use_cls_token:
            raise ValueError(
                f"use_cls_token is {self.use_cls_token!r}, but use_head_tokens merges the head tokens into it"
            )
        # Imported here: transformers.activations pulls in its kernel hub (about a second), which reading the
        # presets (`scripts/train.py --help`) does not need.
        from transformers.activations import ACT2FN

        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act must be one of transformers' activations, got {self.hidden_act!r}")

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`from_pretrained(folder, **overrides)` sets the overrides after `__init__`: validate the result too."""
        config = super().from_dict(config_dict, **kwargs)
        (config[0] if isinstance(config, tuple) else config).validate_architecture()  # a tuple with unused kwargs
        return config

    @classmethod
    def from_preset(cls, name, **overrides):
        """Build the preset `name` (one of `PRESETS`), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def num_patches(self):
        """Tokens the patch embedding yields: one per patch, or one per pixel of the conv tokenizer's output."""
        if self.patch_embedding_type in ("patchify", "sope"):
            return (self.image_size // self.patch_size) ** 2
        side = self.image_size
        for _ in range(self.num_conv_layers):
            side = (side - 1) // 2 + 1  # a 3x3 max-pool with stride 2 and padding 1: ceil(side / 2)
        return side**2

    @property
    def num_sope_convs(self):
        """The stride-2 convs of the `"sope"` embedding: one for `patch_size` 2, two for 4."""
        return SOPE_NUM_CONVS[self.patch_size]

    @property
    def sequence_length(self):
        """Tokens the encoder sees: the patch tokens, and the CLS token in front when there is one."""
        return self.num_patches + int(self.use_cls_token)


__all__ = ["VTLMConfig"]
