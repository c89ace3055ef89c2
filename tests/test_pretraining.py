"""Masked image modelling (`training.pretraining`, `scripts/pretrain.py`): what the encoder sees, what it reads, what
it leaves behind, and that its folder fine-tunes into a classifier that exports exactly to the built-in ViT."""

import importlib
import json
import os
import re
import shlex
import sys

import pytest
import torch
from conftest import REPO_ROOT, TINY_CONFIG, TINY_RUN, load_script
from safetensors.torch import load_file
from started import preloaded, run_to_the_end
from test_resume import assert_same_weights, signal_after_first_loss, stopped_step

from vtlm.modeling import VTLMConfig, VTLMForImageClassification, VTLMModel, build_image_processor
from vtlm.training.arguments import (
    PRETRAINING_ARGUMENT_CLASSES,
    PRETRAINING_DEFAULTS,
    PretrainingArguments,
    parse_arguments,
)
from vtlm.training.build import build_augmentation
from vtlm.training.data import load_image_datasets
from vtlm.training.export import export_model
from vtlm.training.pretraining import (
    MaskedImageModelingTrainer,
    VTLMForMaskedImageModeling,
    build_pretraining_trainer,
    check_maskable,
)
from vtlm.training.rerun import last_complete_checkpoint
from vtlm.training.run_record import hold_out_arguments, same_data_flags, source_validation_split

TINY_DECODER = PretrainingArguments(
    decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=24
)
TINY_DECODER_FLAGS = [
    "--decoder_hidden_size=16",
    "--decoder_num_hidden_layers=1",
    "--decoder_num_attention_heads=2",
    "--decoder_intermediate_size=24",
]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return VTLMForMaskedImageModeling(VTLMConfig(**TINY_CONFIG), TINY_DECODER).eval()


def test_building_a_classification_run_loads_no_pretraining(monkeypatch):
    """`training.build` builds the classifier's run alone: the masked autoencoder loads only where pre-training asks."""
    import vtlm.training

    monkeypatch.setattr(vtlm.training, "build", vtlm.training.build)
    for name in ("vtlm.training.build", "vtlm.training.pretraining"):
        monkeypatch.delitem(sys.modules, name)
    importlib.import_module("vtlm.training.build")
    assert "vtlm.training.pretraining" not in sys.modules


def test_mimetic_init_reaches_the_narrower_decoder_at_its_own_width():
    """Every attention layer of the masked autoencoder, the decoder's (16 wide here, against the encoder's 32)
    included, gets mimetic's W_v W_o ~ alpha2 Z - beta2 I at its own width."""
    torch.manual_seed(0)
    config = VTLMConfig(**TINY_CONFIG, attention_initializer="mimetic", mimetic_beta2=0.5)
    model = VTLMForMaskedImageModeling(config, TINY_DECODER)
    for attention in (model.vtlm.encoder.layer[0].attention, model.decoder.layer[0].attention):
        value, output = attention.qkv.weight.detach().chunk(3)[2], attention.proj.weight.detach()
        assert (value.T @ output.T).diagonal().mean().item() == pytest.approx(-0.5, abs=0.1)


def test_the_encoder_sees_only_the_kept_patches():
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    output = model(pixel_values, noise=noise)
    # 75% hidden: the 48 patches of highest noise in each image.
    assert output.mask.sum(dim=1).tolist() == [48, 48]
    assert torch.equal(output.mask.bool(), noise >= noise.sort(dim=1).values[:, 16:17])

    hidden = output.mask[0].nonzero()[0].item()  # a hidden patch of image 0: row-major in an 8x8 grid of 4x4 patches
    kept = (1 - output.mask[0]).nonzero()[0].item()
    for patch, changes in ((hidden, False), (kept, True)):
        changed = pixel_values.clone()
        row, column = divmod(patch, 8)
        changed[0, :, 4 * row : 4 * row + 4, 4 * column : 4 * column + 4] += 1.0
        predicted = model(changed, noise=noise).logits
        assert torch.equal(predicted[1], output.logits[1])  # the other image is untouched
        assert torch.equal(predicted[0], output.logits[0]) != changes, f"patch {patch}"


def test_targets_are_the_patches_that_the_patch_embedding_reads():
    model = tiny_model()
    pixel_values = torch.randn(1, 3, 32, 32)
    # A patch embedding whose output channel (i * 4 + j) * 3 + c copies pixel (c, i, j) of its patch.
    selector = torch.nn.Conv2d(3, 48, kernel_size=4, stride=4, bias=False)
    with torch.no_grad():
        selector.weight.zero_()
        for i in range(4):
            for j in range(4):
                for c in range(3):
                    selector.weight[(i * 4 + j) * 3 + c, c, i, j] = 1.0
    tokens = selector(pixel_values).flatten(2).transpose(1, 2)  # (1, 64, 48), as VTLMEmbeddings orders them
    torch.testing.assert_close(model.patchify(pixel_values), tokens)


def test_the_loss_is_the_error_on_hidden_patches_only():
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 32, 32)
    output = model(pixel_values)
    target = model.patchify(pixel_values)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    errors = ((output.logits - target) ** 2).mean(-1)
    torch.testing.assert_close(output.loss, errors[output.mask.bool()].mean())


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"patch_embedding_type": "conv", "pooling": "sequence", "use_cls_token": False}, "patch_embedding_type"),
        ({"feed_forward_type": "daff"}, "feed_forward_type"),
    ],
)
def test_layouts_that_cannot_hide_patches_are_refused_by_name(overrides, named):
    with pytest.raises(ValueError, match=named):
        check_maskable(VTLMConfig(**{**TINY_CONFIG, **overrides}))


def test_pretraining_reads_no_validation_or_test_image(cifar100_dir, tmp_path, monkeypatch):
    seen = []
    training_inputs = MaskedImageModelingTrainer.training_inputs

    def spy(self, inputs, micro_step):
        seen.append(inputs["images"].clone())
        return training_inputs(self, inputs, micro_step)

    monkeypatch.setattr(MaskedImageModelingTrainer, "training_inputs", spy)
    monkeypatch.setattr(MaskedImageModelingTrainer, "evaluate", lambda *args, **kwargs: pytest.fail("evaluated"))
    # The script's own flags and defaults: the recipe it runs.
    model_args, data_args, augmentation_args, training_args, *_ = parse_arguments(
        [f"--dataset_name={cifar100_dir}", "--validation_split_size=100", f"--output_dir={tmp_path / 'run'}",
         "--num_train_epochs=1", "--per_device_train_batch_size=64", "--report_to=none", "--disable_tqdm=true"],
        PRETRAINING_ARGUMENT_CLASSES, PRETRAINING_DEFAULTS,
    )  # fmt: skip
    data = load_image_datasets(data_args, seed=training_args.seed)
    model = tiny_model().train()
    augmentation = build_augmentation(augmentation_args, model.config, training_args)
    build_pretraining_trainer(model, training_args, data, augmentation, build_image_processor()).train()

    def rows(split):
        return {bytes(image.numpy()) for image in data.tensors(split).images}

    seen = {bytes(image.numpy()) for batch in seen for image in batch}
    assert seen == rows("train")  # every training image, in one epoch
    assert not seen & rows("validation") and not seen & rows("test")


def pretrain_command(dataset, output_dir, *flags):
    return [
        sys.executable,
        str(REPO_ROOT / "scripts" / "pretrain.py"),
        f"--dataset_name={dataset}",
        "--validation_split_size=100",
        *(flag for flag in TINY_RUN if not flag.startswith("--per_device_eval")),
        *TINY_DECODER_FLAGS,
        f"--output_dir={output_dir}",
        *flags,
    ]


# Two epochs, checkpoints every 4 steps, bit for bit: a pre-training that a stopped one can be compared with.
RESUMABLE = ["--num_train_epochs=2", "--save_strategy=steps", "--save_steps=4", "--save_total_limit=10",
             "--full_determinism"]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(cifar100_dir, tmp_path_factory):
    """A tiny unbroken pre-training of two epochs, seed 42, with 100 validation images held out: the one every test
    fine-tunes, reruns or resumes to."""
    folder = tmp_path_factory.mktemp("pretrained") / "mae"
    run_to_the_end(pretrain_command(cifar100_dir, folder, *RESUMABLE))
    return folder


def fine_tune_command(dataset, pretrained, output_dir, *flags):
    return [
        sys.executable,
        str(REPO_ROOT / "scripts" / "train.py"),
        f"--dataset_name={dataset}",
        "--validation_split_size=100",
        f"--model_name_or_path={pretrained}",
        *(flag for flag in TINY_RUN if not flag.startswith("--config_overrides")),
        "--num_train_epochs=1",
        f"--output_dir={output_dir}",
        *flags,
    ]


@pytest.mark.slow  # training processes
def test_pretrain_then_fine_tune_then_export_an_exact_builtin_vit(cifar100_dir, pretrained, tmp_path):
    fine_tuned = tmp_path / "classifier"

    # The folder holds the encoder alone, key for key a VTLMModel's: no decoder, no mask token.
    weights = load_file(pretrained / "model.safetensors")
    assert set(weights) == set(VTLMModel(VTLMConfig(**TINY_CONFIG)).state_dict())
    record = json.loads((pretrained / "run_info.json").read_text())
    assert record["pretraining_arguments"]["decoder_hidden_size"] == 16
    compute = record["compute"]
    # 2 epochs of 300 images, each costing the masked encoder and the decoder, forward and backward.
    assert compute["training_images"] == 600 and compute["training_flops"] == 600 * compute["training_flops_per_image"]
    assert compute["num_parameters"] == VTLMModel(VTLMConfig(**TINY_CONFIG)).num_parameters()
    assert "decoder is not in this folder" in (pretrained / "README.md").read_text()
    # Loaded as a classifier, as train.py loads it: the encoder's weights, a fresh head.
    classifier = VTLMForImageClassification.from_pretrained(pretrained)
    for name, tensor in weights.items():
        torch.testing.assert_close(classifier.vtlm.state_dict()[name], tensor, atol=0, rtol=0, msg=name)

    run_to_the_end(fine_tune_command(cifar100_dir, pretrained, fine_tuned))
    assert set(load_file(fine_tuned / "model.safetensors")) == set(
        VTLMForImageClassification(VTLMConfig(**TINY_CONFIG)).state_dict()
    )
    initialized = json.loads((fine_tuned / "run_info.json").read_text())["initialized_from"]
    assert initialized["source"] == "mae" and initialized["pretraining"]["mask_ratio"] == 0.75
    assert initialized["hub_id"] is None and "from the weights of `mae`" in (fine_tuned / "README.md").read_text()
    assert "pre-trained by masked image modelling" in (fine_tuned / "README.md").read_text()
    assert export_model(fine_tuned, tmp_path / "vit", ("vit",))["vit"] == 0.0


def assert_same_pretraining(clean, resumed):
    # The checkpoints of the last step hold the decoder too: both must match, not only the saved encoder.
    last = os.path.basename(last_complete_checkpoint(clean))
    for name in ("model.safetensors", f"{last}/model.safetensors"):
        assert_same_weights(clean, resumed, name)


@pytest.mark.slow  # training processes
def test_sigterm_saves_a_complete_checkpoint_and_the_pretraining_resumes_to_identical_weights(
    cifar100_dir, pretrained, tmp_path
):
    """The pre-training resumes through the skeleton `train.py` runs on (`TrainingRun`, `train_resumably`), whose
    SIGKILL, half-written checkpoints and launchers tests/test_resume.py covers; here, what is the pre-training's own:
    its masks, decoder and optimizer state saved mid-epoch and resumed exactly."""
    stopped = tmp_path / "stopped"
    command = pretrain_command(cifar100_dir, stopped, *RESUMABLE, "--logging_steps=1")
    checkpoint = stopped / f"checkpoint-{stopped_step(*signal_after_first_loss(preloaded(command)), stopped)}"
    # No encoder, record or card of a finished pre-training.
    assert not {"model.safetensors", "run_arguments.json", "README.md"} & {path.name for path in stopped.iterdir()}
    assert f"resuming from {checkpoint}" in run_to_the_end(command)
    assert_same_pretraining(pretrained, stopped)


def test_pretrain_refuses_a_layout_it_cannot_mask_before_loading_data(tmp_path, capsys):
    pretrain = load_script("pretrain")
    argv = ["--model_preset=vtlm-cct-7-3x1", f"--dataset_name={tmp_path / 'no-such-dataset'}"]
    assert pretrain.run_cli(pretrain.main, [*argv, f"--output_dir={tmp_path / 'run'}"]) == 2
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "patch_embedding_type" in stderr and not (tmp_path / "run").exists()


@pytest.mark.slow  # its pre-training, a training process
def test_fine_tuning_on_images_the_pretraining_read_is_refused(cifar100_dir, pretrained, tmp_path, capsys):
    # Another seed holds out other validation images: some of them were pre-trained on.
    train = load_script("train")
    status = train.run_cli(train.main, fine_tune_command(cifar100_dir, pretrained, tmp_path / "run", "--seed=1")[2:])
    stderr = capsys.readouterr().err
    assert status == 2 and "error: --model_name_or_path" in stderr and "--seed 42 -> 1" in stderr, stderr[-2000:]
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("flag", ["--locality_bias=5", "--attention_initializer=impulse"])
def test_pretrain_refuses_locality_on_a_grid_it_hides_before_loading_data(tmp_path, flag):
    with pytest.raises(ValueError, match="masked image modelling hides most of"):
        load_script("pretrain").main([flag, f"--dataset_name={tmp_path / 'no-such-dataset'}",
                                      f"--output_dir={tmp_path / 'run'}"])  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_the_fine_tuning_hint_names_the_data_and_its_hold_out(tmp_path):
    """The flags a pre-training prints for fine-tuning it: its images, read the same way, with the same validation
    hold-out, where they differ from train.py's defaults; a flag that only cuts the run short is left out."""
    data = tmp_path / "my images"
    _, data_args, _, training_args, *_ = parse_arguments(
        [f"--dataset_name={data}", "--label_column_name=label", "--validation_split_size=100", "--seed=7",
         "--max_train_samples=50", f"--output_dir={tmp_path / 'mae'}"],
        PRETRAINING_ARGUMENT_CLASSES, PRETRAINING_DEFAULTS,
    )  # fmt: skip
    flags = same_data_flags(data_args, training_args)
    assert flags == [f"--dataset_name '{data}'", "--label_column_name label", "--validation_split_size 100", "--seed 7"]
    _, fine_tuning_data, _, fine_tuning, *_ = parse_arguments(shlex.split(" ".join(flags)))
    assert hold_out_arguments(vars(fine_tuning_data), fine_tuning.seed) == hold_out_arguments(vars(data_args), 7)


@pytest.mark.slow  # training processes
def test_a_finished_pretraining_says_how_to_fine_tune_it_on_its_own_data(cifar100_dir, pretrained):
    log = run_to_the_end(pretrain_command(cifar100_dir, pretrained, *RESUMABLE))
    hint = re.search(r"already holds this pre-training, finished: fine-tune it with `([^`]+)`", log)
    assert hint, log[-3000:]
    command = shlex.split(hint.group(1))
    assert command == ["python", "scripts/train.py", "--model_name_or_path", str(pretrained),
                       "--dataset_name", cifar100_dir, "--validation_split_size", "100"]  # fmt: skip
    # As printed, train.py would fine-tune on the images the pre-training held out for it.
    _, data_args, _, training_args, *_ = parse_arguments(command[2:])
    assert source_validation_split(str(pretrained), data_args, training_args.seed) == ("same", [])
