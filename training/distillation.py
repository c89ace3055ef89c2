"""Teaching a model from a trained teacher: loading and checking the teacher, its view of the model's training batch,
feature guidance through projections that exist only in training, distillation of its outputs, and what the run's
record says about it.

`training.build.build_distillation` puts a `Distillation` together from `DistillationArguments`; `VTLMTrainer`
attaches its projections to the model (so the optimizer and DDP treat them as the model's own) and asks it for the
loss of every training batch. The projections are never part of the saved model: `save_pretrained` leaves them out
(`_keys_to_ignore_on_save`), and each checkpoint carries them in a file of their own, for resuming.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification

from .flops import forward_flops
from .sources import check_model_source

GUIDANCE_MODULE = "feature_guidance"  # the projections' name on the model while it trains
GUIDANCE_FILE = "feature_guidance.safetensors"  # the projections' weights in every checkpoint, beside the model's


class Teacher:
    """A trained classifier, frozen in eval mode, with the pixels it expects: its image processor's mean, std and
    size. `source` is how the user named it (a folder or a Hub id)."""

    def __init__(self, model, image_mean, image_std, image_size, source):
        self.model = model.eval().requires_grad_(False)
        self.image_mean, self.image_std, self.image_size, self.source = image_mean, image_std, image_size, source
        self._renormalize = {}  # (device, student mean, student std) -> (scale, shift), made once, not every batch

    def pixel_values(self, pixel_values, student_mean, student_std):
        """The teacher's input for the model's `pixel_values` (normalised with `student_mean` and `student_std`): the
        very same pixels, augmentation, erasing noise and mixing included, renormalised with the teacher's mean and
        std (one affine per channel undoes the model's normalisation and applies the teacher's), then resized to the
        teacher's image size where it differs."""

        key = (pixel_values.device, tuple(student_mean), tuple(student_std))
        if key not in self._renormalize:

            def column(values):
                return torch.tensor(values, dtype=torch.float32, device=pixel_values.device).view(1, -1, 1, 1)

            scale = column(student_std) / column(self.image_std)
            shift = (column(student_mean) - column(self.image_mean)) / column(self.image_std)
            self._renormalize[key] = scale, shift
        scale, shift = self._renormalize[key]
        teacher_pixels = pixel_values.float() * scale + shift
        if tuple(teacher_pixels.shape[-2:]) != self.image_size:
            teacher_pixels = F.interpolate(
                teacher_pixels, size=self.image_size, mode="bilinear", align_corners=False, antialias=True
            )
        return teacher_pixels


def load_teacher(distillation_args, label_names) -> Teacher:
    """The teacher `--teacher_model_name_or_path` names, after checking that it predicts `label_names` (the
    dataset's) by the same names in the same order: raises one-line errors, before any training."""
    source = distillation_args.teacher_model_name_or_path
    check_model_source(source)
    from vtlm import modeling

    modeling.VTLMForImageClassification  # noqa: B018 (registers VTLM with the Auto classes: its folders load here)
    trust = distillation_args.teacher_trust_remote_code
    try:
        model = AutoModelForImageClassification.from_pretrained(source, trust_remote_code=trust)
        processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"--teacher_model_name_or_path {source}: cannot load it as an image classifier with its "
                         f"image processor ({first_line})") from None  # fmt: skip
    teacher_labels = [model.config.id2label[index] for index in range(model.config.num_labels)]
    if teacher_labels != list(label_names):
        raise ValueError(f"--teacher_model_name_or_path {source}: {label_difference(teacher_labels, label_names)}; a "
                         "teacher must predict the dataset's labels, by the same names in the same order")  # fmt: skip
    return Teacher(
        model, tuple(processor.image_mean), tuple(processor.image_std), processed_image_size(processor, model), source
    )


def label_difference(teacher_labels, label_names):
    """The first way the teacher's labels differ from the dataset's, in words."""
    if len(teacher_labels) != len(label_names):
        return f"it predicts {len(teacher_labels)} labels, the dataset has {len(label_names)}"
    index = next(i for i, (ours, theirs) in enumerate(zip(label_names, teacher_labels, strict=True)) if ours != theirs)
    return f"its label {index} is {teacher_labels[index]!r}, the dataset's is {label_names[index]!r}"


def processed_image_size(processor, model):
    """(height, width) of the images the teacher's processor makes: its `size`, else the model's `image_size`."""
    size = getattr(processor, "size", None) or {}
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    side = getattr(model.config, "image_size", None) or size.get("shortest_edge")
    if side is None:
        raise ValueError(f"--teacher_model_name_or_path {model.name_or_path}: its image size is not recorded")
    return int(side), int(side)


def patch_token_map(hidden_state):
    """A hidden state as a (B, C, side, side) map of patch tokens. A feature map is one already; a token sequence
    (B, N, C) keeps its last side^2 tokens, side = isqrt(N): the patch tokens come after any CLS token (VTLM, ViT,
    DeiT's distillation token), and a sequence-pooled model (no CLS) has only patch tokens."""
    if hidden_state.dim() == 4:
        return hidden_state
    batch_size, num_tokens, channels = hidden_state.shape
    side = math.isqrt(num_tokens)
    patches = hidden_state[:, num_tokens - side * side :]  # (B, side^2, C)
    return patches.transpose(1, 2).reshape(batch_size, channels, side, side)


class FeatureGuidance(nn.Module):
    """One Linear per guided block of the model, from its hidden size to the teacher's width at the matching depth,
    and the loss `training.arguments.FEATURE_GUIDANCE` says.

    The model's block i (of L) is matched to the teacher's hidden state round((i + 1) T / L) of T (after as large a
    share of the teacher's depth as of the model's); a smaller teacher map is resized bilinearly. Normalising both
    sides makes a weight of 1 mean the same for any teacher, whatever the scale of its residual stream.
    """

    def __init__(self, student_layers, teacher_layers, hidden_size, teacher_widths):
        super().__init__()
        self.student_layers, self.teacher_layers = list(student_layers), list(teacher_layers)
        self.projections = nn.ModuleList(nn.Linear(hidden_size, width) for width in teacher_widths)

    def forward(self, student_hidden_states, teacher_hidden_states):
        losses = []
        for projection, student_layer, teacher_layer in zip(
            self.projections, self.student_layers, self.teacher_layers, strict=True
        ):
            student = patch_token_map(student_hidden_states[student_layer + 1])  # index 0 holds the embeddings
            side = student.shape[-1]
            target = patch_token_map(teacher_hidden_states[teacher_layer]).float()
            if target.shape[-1] >= side:
                target = F.adaptive_avg_pool2d(target, side)
            else:
                target = F.interpolate(target, size=(side, side), mode="bilinear", align_corners=False)
            student, target = (features.flatten(2).transpose(1, 2) for features in (student, target))  # (B, N, C)
            prediction = projection(F.layer_norm(student, student.shape[-1:]))
            losses.append(F.mse_loss(prediction.float(), F.layer_norm(target, target.shape[-1:])))
        return torch.stack(losses).mean()


def output_distillation_loss(student_logits, teacher_logits, distillation_type, temperature):
    """DeiT's distillation through the model's one head: `soft`, the KL divergence from the teacher's probabilities
    at `temperature` to the model's, per image, times temperature^2 (so its gradients keep their scale as the
    temperature rises); `hard`, the cross-entropy to the teacher's top class."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    if distillation_type == "hard":
        return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature * temperature)


class Distillation:
    """What a run learns from its teacher (`DistillationArguments`), for a model of `student_config`: the teacher,
    the feature guidance projections (None at weight 0) and the loss of a training batch."""

    def __init__(self, distillation_args, teacher: Teacher, student_config):
        self.args, self.teacher = distillation_args, teacher
        self.guidance = None
        if distillation_args.feature_guidance_weight > 0:
            self.guidance = self._build_guidance(student_config)

    def _build_guidance(self, config):
        num_layers = config.num_hidden_layers
        student_layers = self.args.feature_guidance_layers
        student_layers = list(range(num_layers)) if student_layers is None else sorted(set(student_layers))
        if student_layers[-1] >= num_layers:
            raise ValueError(
                f"--feature_guidance_layers {self.args.feature_guidance_layers}: the model has blocks 0 to "
                f"{num_layers - 1}"
            )
        # One forward pass of a blank image: the teacher's depth and the width of each of its hidden states.
        with torch.no_grad():
            blank = torch.zeros(1, 3, *self.teacher.image_size, dtype=self.teacher.model.dtype)
            hidden_states = self.teacher.model(pixel_values=blank, output_hidden_states=True).hidden_states
        if not hidden_states or len(hidden_states) < 2:
            raise ValueError(f"--teacher_model_name_or_path {self.teacher.source}: it returns no hidden states to "
                             "guide features with; pass --feature_guidance_weight 0")  # fmt: skip
        depth = len(hidden_states) - 1  # index 0 holds the embeddings (or the stem's output)
        teacher_layers = [max(1, round((layer + 1) * depth / num_layers)) for layer in student_layers]
        widths = [patch_token_map(hidden_states[layer]).shape[1] for layer in teacher_layers]
        return FeatureGuidance(student_layers, teacher_layers, config.hidden_size, widths)

    def attach(self, model):
        """Make the projections part of `model` while it trains: its parameters, so the Trainer's optimizer and DDP
        take them in, but never its saved weights (`_keys_to_ignore_on_save`, which `save_pretrained` honours and
        the Trainer expects to be missing when it loads a checkpoint back)."""
        if self.guidance is None:
            return
        model.add_module(GUIDANCE_MODULE, self.guidance)
        keys = {f"{GUIDANCE_MODULE}.{name}" for name in self.guidance.state_dict()}
        model._keys_to_ignore_on_save = set(model._keys_to_ignore_on_save or ()) | keys

    def place(self, device, dtype):
        """The teacher on the model's device and in its precision."""
        self.teacher.model.to(device=device, dtype=dtype)

    def teacher_forward_flops_per_image(self) -> int:
        """The teacher's forward FLOPs on one image at its own size, as every training step runs it."""
        model = self.teacher.model
        blank = torch.zeros(1, 3, *self.teacher.image_size, dtype=model.dtype, device=model.device)
        return forward_flops(model, blank)

    @property
    def needs_hidden_states(self):
        return self.guidance is not None

    def teacher_outputs(self, pixel_values, student_normalize, autocast):
        """The teacher's outputs for the model's input `pixel_values` (normalised by `student_normalize`), made into
        the teacher's own input, with no gradients, in the `autocast` context the model's forward ran in."""
        teacher_pixels = self.teacher.pixel_values(pixel_values, student_normalize.mean, student_normalize.std)
        with torch.no_grad(), autocast():
            return self.teacher.model(
                pixel_values=teacher_pixels.to(self.teacher.model.dtype), output_hidden_states=self.needs_hidden_states
            )

    def loss(self, student_outputs, pixel_values, student_normalize, autocast):
        """The training loss of a batch: the model's own loss on its targets, mixed with output distillation as
        --distillation_alpha says, plus --feature_guidance_weight times the guidance loss; and its parts, detached,
        by their log names. `pixel_values` is the model's input and `autocast` the context its forward ran in, so the
        teacher runs at the same precision."""
        teacher_outputs = self.teacher_outputs(pixel_values, student_normalize, autocast)
        loss = student_outputs.loss
        parts = {"label_loss": loss.detach()}
        if self.args.distillation_type != "none":
            distilled = output_distillation_loss(
                student_outputs.logits,
                teacher_outputs.logits,
                self.args.distillation_type,
                self.args.distillation_temperature,
            )
            loss = (1 - self.args.distillation_alpha) * loss + self.args.distillation_alpha * distilled
            parts["distillation_loss"] = distilled.detach()
        if self.guidance is not None:
            guidance = self.guidance(student_outputs.hidden_states, teacher_outputs.hidden_states)
            loss = loss + self.args.feature_guidance_weight * guidance
            parts["feature_guidance_loss"] = guidance.detach()
        return loss, parts
