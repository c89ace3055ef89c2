"""The model card rendered from a run folder, and the FLOPs counter it uses.

`make_run_folder` (conftest) builds a folder as scripts/train.py leaves it.
"""

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    EXAMPLE_CLASSES,
    REPO_ROOT,
    RESULTS,
    TINY_CONFIG,
    TINY_RUN,
    load_script,
    make_run_folder,
    write_hub_dataset,
)
from huggingface_hub import ModelCard, metadata_load
from PIL import Image

from vtlm.modeling import CIFAR100_LABELS, VTLMConfig, VTLMForImageClassification
from vtlm.training import LICENSE
from vtlm.training.flops import flops_per_image
from vtlm.training.model_card import CURVES_FILE, NOT_MEASURED, NOT_SHOWN, write_model_card
from vtlm.training.run_record import save_example_images


@pytest.fixture(scope="session")
def run_template(tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("run-template"))


@pytest.fixture
def run_dir(run_template, tmp_path):
    return shutil.copytree(run_template, tmp_path / "vtlm-run")


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def card_body(readme):
    return readme.read_text().split("\n---\n", 1)[1]


def section(text, title):
    """The markdown of the `## title` section."""
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_row(text, first_cells):
    rows = [line for line in text.splitlines() if line.startswith(f"| {first_cells} |")]
    assert len(rows) == 1, f"expected one row starting {first_cells!r}, got {rows}"
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def assert_tables_end_with_a_blank_line(text):
    """In GitHub-flavoured Markdown, as the Hub renders it, a line right after a table is one more row of it."""
    lines = text.splitlines()
    after_tables = [lines[i + 1] for i in range(len(lines) - 1) if lines[i].startswith("|")]
    assert [line for line in after_tables if line and not line.startswith("|")] == []


# The card


def test_the_published_licence_is_the_codes():
    declared = re.search(r'^license = "(.+)"$', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert declared[1].lower() == LICENSE


def test_card_metadata_and_model_index_carry_the_run(run_dir):
    readme = write_model_card(run_dir, hub_model_id="someone/vtlm-tiny")
    metadata = metadata_load(readme)
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "image-classification"
    assert metadata["tags"] == ["vision", "image-classification", "vit", "custom_code"]
    assert metadata["datasets"] == ["uoft-cs/cifar100"]
    assert metadata["metrics"] == ["accuracy"]
    assert metadata["license"] == "apache-2.0"

    card = ModelCard.load(readme)
    assert card.data.model_name == "vtlm-tiny"
    measured = {(r.dataset_type, r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert measured == {
        ("uoft-cs/cifar100", "train", "accuracy"): RESULTS["eval_accuracy"],  # validation held out from train
        ("uoft-cs/cifar100", "test", "accuracy"): RESULTS["test_accuracy"],
    }


def test_card_body_shows_computed_counts_the_recipe_and_the_results(run_dir):
    body = card_body(write_model_card(run_dir, hub_model_id="someone/vtlm-tiny"))
    model = VTLMForImageClassification.from_pretrained(run_dir)
    flops = flops_per_image(model.config)
    assert table_row(body, "parameters")[1] == f"{model.num_parameters():,}"
    assert f"({flops.training:,})" in table_row(body, "training FLOPs per image (forward + backward)")[1]
    assert f"({flops.forward:,})" in table_row(body, "inference FLOPs per image (forward)")[1]
    assert table_row(body, "hidden_size")[1] == str(TINY_CONFIG["hidden_size"])
    assert table_row(body, "patch_embedding_type")[1] == model.config.patch_embedding_type
    assert table_row(body, "pooling")[1] == model.config.pooling
    assert table_row(body, "tokens per image")[1] == str(model.config.num_patches + 1)  # 64 patches and the CLS token
    assert_tables_end_with_a_blank_line(body)

    run_info = json.loads((run_dir / "run_info.json").read_text())
    recipe = section(body, "Training recipe")
    hardware = run_info["hardware"]
    for group in ("model_arguments", "data_arguments", "augmentation_arguments", "training_arguments"):
        for name, value in run_info[group].items():
            if name != "hub_token" and name not in NOT_SHOWN:
                expected = "None" if value is None else value if isinstance(value, str) else json.dumps(value)
                if name == hardware["precision_asked"] != hardware["precision"]:  # the default fp16, on a CPU
                    expected = f"true (asked for; this run trained in {hardware['precision']}: fp16 needs a CUDA GPU)"
                assert table_row(recipe, f"`{name}`")[1] == expected
    assert "hub_token" not in body and f"commit `{run_info['git_commit']}`" in recipe

    results = section(body, "Results")
    for split, prefix in (("validation", "eval"), ("test", "test")):
        row = table_row(results, f"this run | {split}")
        assert [row[3], row[5], row[6]] == [
            f"{100 * RESULTS[f'{prefix}_{metric}']:.2f}%"
            for metric in ("accuracy", "top5_accuracy", "superclass_accuracy")
        ]
        low, high = RESULTS[f"{prefix}_accuracy_ci_low"], RESULTS[f"{prefix}_accuracy_ci_high"]
        assert row[4] == f"{100 * low:.2f}–{100 * high:.2f}%" and row[2] == str(RESULTS[f"{prefix}_num_images"])
    assert (
        table_row(results, "[Madras1/VTLM37m](https://huggingface.co/Madras1/VTLM37m) (the original model)")[3]
        == "54.84%"
    )
    assert "100 classes of CIFAR-100" in results
    assert "selected on the test set" in results
    seed = run_info["training_arguments"]["seed"]
    assert (
        "The validation split is 5,000 images held out of CIFAR-100's training split, stratified by label "
        f"(`validation_split_size` 0.1, seed {seed}): the model never trained on them."
    ) in " ".join(results.split())

    hardware = section(body, "Hardware and speed")
    assert table_row(hardware, "device")[1] == run_info["hardware"]["device"]
    # The fixture's log: 3 epochs of 45,000 images, 5,025.3 training seconds by its last entry.
    assert table_row(hardware, "training wall time")[1] == "1 h 23 min 45 s (5,025.3 s)"
    throughput = f"{45_000 * 3 / 5025.3:,.1f} images/s (validation and checkpoints included)"
    assert table_row(hardware, "training throughput")[1] == throughput
    assert table_row(hardware, "test throughput")[1] == "3,012.7 images/s"
    assert 'from_pretrained("someone/vtlm-tiny", trust_remote_code=True)' in body
    assert 'pipeline("image-classification", model="someone/vtlm-tiny", trust_remote_code=True)' in body


def test_widget_outputs_are_the_model_predictions_on_the_saved_examples(run_dir):
    from transformers import pipeline

    metadata = metadata_load(write_model_card(run_dir, hub_model_id="someone/vtlm-tiny", revision="v1"))
    classifier = pipeline("image-classification", model=str(run_dir), trust_remote_code=True)
    examples = sorted((run_dir / "examples").glob("*.png"))
    assert [example["example_title"] for example in metadata["widget"]] == [CIFAR100_LABELS[i] for i in EXAMPLE_CLASSES]
    for path, widget in zip(examples, metadata["widget"], strict=True):
        assert widget["src"] == f"https://huggingface.co/someone/vtlm-tiny/resolve/v1/examples/{path.name}"
        expected = classifier(Image.open(path).convert("RGB"), top_k=len(widget["output"]))
        assert [output["label"] for output in widget["output"]] == [p["label"] for p in expected]
        assert [output["score"] for output in widget["output"]] == pytest.approx(
            [p["score"] for p in expected], abs=1e-4
        )
        assert f"]({'examples/' + path.name}) | {widget['example_title']} |" in (run_dir / "README.md").read_text()


def test_training_curves_are_plotted_from_log_history_and_embedded(run_dir):
    readme = write_model_card(run_dir)
    with Image.open(run_dir / CURVES_FILE) as image:
        assert image.format == "PNG" and image.size == (1000, 400)
        assert "Software" not in image.info  # no matplotlib version stamp: the same curves give the same bytes
    assert f"]({CURVES_FILE})" in section(card_body(readme), "Training curves")

    edit_json(run_dir / "trainer_state.json", log_history=[])
    curves = section(card_body(write_model_card(run_dir)), "Training curves")
    assert not (run_dir / CURVES_FILE).exists()  # a plot left from an earlier render would show curves that are gone
    assert curves.strip().startswith(NOT_MEASURED) and CURVES_FILE not in curves


def test_without_matplotlib_the_card_says_the_curves_were_not_plotted(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # None in sys.modules: ImportError
    curves = section(card_body(write_model_card(run_dir)), "Training curves")
    assert curves.strip().startswith("not plotted: matplotlib was not installed")
    assert not (run_dir / CURVES_FILE).exists()


def test_values_the_run_did_not_produce_render_as_not_measured(run_dir):
    kept = {"eval_accuracy": 0.3125, "test_top5_accuracy": 0.6875}
    (run_dir / "all_results.json").write_text(json.dumps(kept))
    edit_json(run_dir / "run_info.json", hardware={})
    edit_json(run_dir / "trainer_state.json", log_history=[])
    body = card_body(write_model_card(run_dir))

    results = section(body, "Results")
    assert table_row(results, "this run | validation")[2:] == [NOT_MEASURED, "31.25%"] + [NOT_MEASURED] * 3
    assert table_row(results, "this run | test")[2:] == [NOT_MEASURED] * 3 + ["68.75%", NOT_MEASURED]
    # Every percentage on the card is one the run measured, or the original model's.
    assert set(re.findall(r"\d+\.\d+%", results)) == {"31.25%", "68.75%", "54.84%"}
    hardware = section(body, "Hardware and speed")
    for name in ("device", "processes", "training wall time", "training throughput", "test throughput"):
        assert table_row(hardware, name)[1] == NOT_MEASURED
    card = ModelCard.load(run_dir / "README.md")
    assert [(r.dataset_split, r.metric_value) for r in card.data.eval_results] == [("train", 0.3125)]


def test_a_smoke_run_says_so_and_claims_no_results(run_dir, tmp_path):
    (tmp_path / "generated-images").mkdir()  # a local folder, as `load_dataset` reads one
    make_run_folder(run_dir, smoke_run=True, dataset_name=str(tmp_path / "generated-images"), flags=["--max_steps=12"])
    readme = write_model_card(run_dir, hub_model_id="someone/vtlm-smoke")
    metadata = metadata_load(readme)
    assert "model-index" not in metadata and "model_name" not in metadata
    assert "datasets" not in metadata  # a local folder, not a Hub dataset
    body = card_body(readme)
    top = body.split("## Model")[0]
    assert "**Smoke run: these are not results.**" in top and "how well this model classifies generated-images" in top
    assert "cut short by `--max_steps 12`, `--max_train_samples 64`." in top
    assert "max_grad_norm" not in top  # only the flags that cut the run short
    assert table_row(section(body, "Results"), "this run (smoke run) | test")[3] == "41.19%"
    assert "original model" not in body  # the comparison with the original is for CIFAR-100 only

    # A smoke run on part of CIFAR-100 did train on it, and still claims no results.
    make_run_folder(run_dir, smoke_run=True)
    readme = write_model_card(run_dir)
    assert metadata_load(readme)["datasets"] == ["uoft-cs/cifar100"] and "model-index" not in metadata_load(readme)
    assert "cut short by `--max_train_samples 64`." in card_body(readme).split("## Model")[0]


def test_a_complete_run_on_another_dataset_is_a_real_run_on_that_dataset(run_dir):
    make_run_folder(run_dir, dataset_name="someone/flowers-32px", sizes={"train": 900, "validation": 100, "test": 200})
    readme = write_model_card(run_dir, hub_model_id="someone/vtlm-flowers")
    metadata = metadata_load(readme)
    assert metadata["datasets"] == ["someone/flowers-32px"]
    card = ModelCard.load(readme)
    assert {(r.dataset_type, r.dataset_name) for r in card.data.eval_results} == {
        ("someone/flowers-32px", "someone/flowers-32px")
    }
    body = card_body(readme)
    assert "CIFAR" not in body.replace("CIFAR-sized", "") and "original model" not in body
    assert "[someone/flowers-32px](https://huggingface.co/datasets/someone/flowers-32px)" in body
    assert "(9 images per class)" in body
    assert_tables_end_with_a_blank_line(body)  # no row for the original model, so the table ends at this run's rows


def test_a_folder_without_run_info_is_not_presented_as_a_full_run(run_dir):
    (run_dir / "run_info.json").unlink()
    readme = write_model_card(run_dir)
    assert "model-index" not in metadata_load(readme)
    body = card_body(readme)
    assert "no `run_info.json`" in body.split("## Model")[0]
    assert table_row(body, "parameters")[1] == "not measured"  # counted by the run, in its record: not here
    assert "does not record whether the validation split was held out" in " ".join(section(body, "Results").split())


def test_rendering_twice_changes_no_byte_and_no_file(run_dir):
    readme = write_model_card(run_dir)
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (readme, run_dir / CURVES_FILE)}
    write_model_card(run_dir)
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in before} == before


def test_saving_examples_replaces_the_earlier_ones_and_the_card_shows_their_recorded_labels(run_dir):
    records = save_example_images(run_dir, [Image.new("RGB", (32, 32), "red")], ["Ankle boot"])
    assert records == [{"file": "examples/00.png", "label": "Ankle boot"}]
    assert sorted(path.name for path in (run_dir / "examples").iterdir()) == ["00.png"]
    edit_json(run_dir / "run_info.json", examples=records)  # as write_run_info records them
    readme = write_model_card(run_dir)
    metadata = metadata_load(readme)
    assert [(widget["src"], widget["example_title"]) for widget in metadata["widget"]] == [
        ("examples/00.png", "Ankle boot")
    ]
    assert table_row(section(card_body(readme), "Examples"), "![Ankle boot](examples/00.png)")[1] == "Ankle boot"
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        save_example_images(run_dir, [Image.new("RGB", (32, 32))] * 2, ["apple"])
    assert sorted(path.name for path in (run_dir / "examples").iterdir()) == ["00.png"]  # bad input deletes nothing


def test_the_usage_section_shows_the_three_ways_in(run_dir):
    usage = section(card_body(write_model_card(run_dir, hub_model_id="someone/vtlm-tiny")), "Usage")
    assert 'from_pretrained("someone/vtlm-tiny", trust_remote_code=True)' in usage
    assert "python scripts/export.py\nsomeone/vtlm-tiny --format vit,onnx" in usage  # exportable, not yet published

    usage = section(
        card_body(write_model_card(run_dir, hub_model_id="someone/vtlm-tiny", hub_vit_model_id="someone/v-vit")),
        "Usage",
    )
    assert 'pipeline("image-classification", model="someone/v-vit")  # no trust_remote_code' in usage
    assert 'onnxruntime.InferenceSession(hf_hub_download("someone/v-vit", "onnx/model.onnx"))' in usage

    edit_json(run_dir / "config.json", pooling="mean")
    usage = section(card_body(write_model_card(run_dir, hub_model_id="someone/vtlm-tiny")), "Usage")
    assert (
        "Transformers' built-in ViT cannot express this model: pooling='mean' (exportable only at the original "
        "model's 'cls').\n" in usage
    )
    assert usage.count("built-in ViT cannot express") == 1  # said once, not again inside the reason
    assert "--format onnx --output_dir DIR" in usage


def test_the_architecture_table_shows_only_what_shapes_the_model(run_dir, tmp_path):
    architecture = section(card_body(write_model_card(run_dir)), "Model")
    for ignored in ("num_conv_layers", "conv_kernel_size", "conv_hidden_size", "position_initializer_range"):
        assert (
            f"| {ignored} |" not in architecture
        )  # a patch model has no conv tokenizer, and no position init of its own
    assert table_row(architecture, "patch_size")[1] == "4"

    conv_run = tmp_path / "conv-run"
    make_run_folder(conv_run)
    conv = VTLMConfig.from_preset("vtlm-cct-7-3x1", **TINY_CONFIG)
    conv.save_pretrained(conv_run)
    VTLMForImageClassification(conv).save_pretrained(conv_run)
    architecture = section(card_body(write_model_card(conv_run)), "Model")
    assert table_row(architecture, "num_conv_layers")[1] == "1" and "| patch_size |" not in architecture
    assert table_row(architecture, "position_initializer_range")[1] == "0.2"


def test_a_run_from_saved_weights_is_not_called_trained_from_scratch(tmp_path):
    run_dir = make_run_folder(tmp_path / "run", flags=["--model_name_or_path=someone/vtlm-base"])
    body = card_body(write_model_card(run_dir))
    assert "from scratch" not in body
    assert "trained on [CIFAR-100](https://huggingface.co/datasets/uoft-cs/cifar100)\nfrom the weights of " in body
    assert "[someone/vtlm-base](https://huggingface.co/someone/vtlm-base)" in body

    # A local folder, whatever its name, is named and never linked as though it were a Hub id.
    saved = tmp_path / "base"
    saved.mkdir()
    run_dir = make_run_folder(tmp_path / "run-from-folder", flags=[f"--model_name_or_path={saved}"])
    body = card_body(write_model_card(run_dir))
    assert "from the weights of `base`" in body and "huggingface.co/base" not in body


def test_a_display_name_names_a_local_dataset_and_never_makes_it_cifar100(tmp_path):
    folder = tmp_path / "my-copy"
    folder.mkdir()
    run_dir = make_run_folder(
        tmp_path / "run",
        dataset_name=str(folder),
        flags=["--dataset_display_name=uoft-cs/cifar100"],
        sizes={"train": 300, "validation": 100, "test": 200},
    )
    readme = write_model_card(run_dir)
    assert "datasets" not in metadata_load(readme)  # a local folder: no Hub dataset to link
    # The model-index names it by its display name, as an identifier that is no Hub id (nor a path).
    assert {result.dataset_type for result in ModelCard.load(readme).data.eval_results} == {"uoft-cs-cifar100"}
    body = card_body(readme)
    assert table_row(section(body, "Training recipe"), "`dataset_name`")[1] == "my-copy"
    assert "54.84%" not in body and "(3 images per class)" in body


@pytest.mark.slow  # a training run of its own
def test_a_dataset_with_its_own_validation_split_is_said_to_have_been_validated_on_it(tmp_path):
    """A folder with train/, validation/ and test/ (as `scripts/compare.py` writes Fashion-MNIST's proxy): nothing is
    held out, and the record, the model-index and the card say so. Its 3 classes get no top-5 (always 100%), and the
    model-index names the local folder by its display name, never by its path."""
    names = ["Sandal", "Shirt", "Sneaker"]
    data = write_hub_dataset(tmp_path / "fashion-3", {"train": 30, "validation": 15, "test": 15}, names, "label", False)
    run_dir = tmp_path / "run"
    load_script("train").main(
        [f"--dataset_name={data}", "--label_column_name=label", "--dataset_display_name=Fashion-MNIST (3 classes)"]
        + [*TINY_RUN, "--num_train_epochs=1", f"--output_dir={run_dir}"]
    )
    run_info = json.loads((run_dir / "run_info.json").read_text())
    assert run_info["dataset"]["validation_held_out"] is False
    assert run_info["dataset"]["images"] == {"train": 30, "validation": 15, "test": 15}  # nothing moved out of train
    results = json.loads((run_dir / "all_results.json").read_text())
    assert not [key for key in results if "top5" in key]
    logged = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    assert not [key for entry in logged for key in entry if "top5" in key]

    readme = run_dir / "README.md"
    validation, test = ModelCard.load(readme).data.eval_results
    assert (validation.dataset_split, validation.metric_name) == (
        "validation",
        "Validation top-1 accuracy (the dataset's own validation split)",
    )
    assert {validation.dataset_type, test.dataset_type} == {"fashion-mnist-3-classes"}
    assert test.dataset_name == "Fashion-MNIST (3 classes)"
    text = readme.read_text()
    assert "held out from the train split" not in text and str(tmp_path) not in text
    body = card_body(readme)
    results_section = " ".join(section(body, "Results").split())
    own = "The validation split is Fashion-MNIST (3 classes)'s own (15 images): nothing was held out of its training"
    assert own in results_section
    assert "top-5" not in results_section and "Top-1 accuracy over the 3 classes" in results_section
    row = table_row(section(body, "Results"), "this run | validation")
    assert row[3] == f"{100 * results['eval_accuracy']:.2f}%" and len(row) == 5  # no top-5 column after its interval
    recipe = section(body, "Training recipe")
    assert table_row(recipe, "`validation_split_size`")[1] == "not used: the dataset has its own validation split"


def test_superclass_accuracy_is_shown_only_where_the_dataset_has_superclasses(run_dir, tmp_path):
    assert "| superclass |" in section(card_body(write_model_card(run_dir)), "Results")
    run_dir = make_run_folder(tmp_path / "run", superclasses=False)
    results = section(card_body(write_model_card(run_dir)), "Results")
    assert "superclass" not in results
    assert table_row(results, "this run | test")[-1] == "73.01%"  # the last column is top-5


def test_trainer_flags_that_train_py_does_not_read_are_not_shown(run_dir):
    recipe = section(card_body(write_model_card(run_dir)), "Training recipe")
    for name in NOT_SHOWN:
        assert f"| `{name}` |" not in recipe
    assert "| `learning_rate` |" in recipe


def test_a_student_is_trained_from_scratch_only_when_its_teacher_saw_only_its_dataset(tmp_path):
    """The card names the teacher (a folder by its own name, a Hub id linked), its data and its test top-1, and calls
    the student trained from scratch on its dataset only when the teacher's run was, on the same dataset."""
    same = make_run_folder(tmp_path / "same-data-teacher")
    other = make_run_folder(tmp_path / "other-data-teacher", flags=["--dataset_display_name=ImageNet-1k (32x32)"],
                            dataset_name="someone/imagenet-32")  # fmt: skip
    for teacher, from_scratch in ((same, True), (other, False), ("someone/vit-in21k", False)):
        run_dir = make_run_folder(tmp_path / f"student-of-{Path(teacher).name}",
                                  flags=[f"--teacher_model_name_or_path={teacher}"])  # fmt: skip
        body = card_body(write_model_card(run_dir))
        assert str(tmp_path) not in body + (run_dir / "run_info.json").read_text()
        intro = body.split("## Model")[0]
        rows = section(body, "Teacher")
        link = "[someone/vit-in21k](https://huggingface.co/someone/vit-in21k)" if teacher == "someone/vit-in21k" else (
            f"`{Path(teacher).name}`"
        )  # fmt: skip
        assert table_row(rows, "teacher")[1] == link and f"taught by\n{link}" in intro
        if from_scratch:
            assert "trained from scratch on [CIFAR-100](https://huggingface.co/datasets/uoft-cs/cifar100)" in intro
            assert "CIFAR-100's training images alone" in body
        else:
            assert "trained from scratch" not in intro
            saw = {other: "was trained on ImageNet-1k (32x32)"}.get(teacher, "left no record of what it was trained on")
            assert f"classes apart. Its teacher\n{saw}." in intro  # what its record says, no more
            assert f"with a teacher that {saw}, on CIFAR-100's training images\n" in body
        # Whether the teacher trained on this run's validation images: the same hold-out, or a record that cannot tell.
        validation = "It held out the same validation images" if teacher == same else "Its record cannot tell whether"
        assert validation in section(body, "Teacher")
        if teacher == other:
            assert table_row(rows, "teacher trained on")[1] == "ImageNet-1k (32x32), from scratch"
        if teacher == "someone/vit-in21k":
            assert table_row(rows, "teacher trained on")[1].startswith("not recorded")
            assert table_row(rows, "teacher's test top-1")[1] == "not measured"
        else:
            assert table_row(rows, "teacher's test top-1")[1] == f"{100 * RESULTS['test_accuracy']:.2f}%"
        assert table_row(section(body, "Training recipe"), "`distillation_type`")[1] == "none"
    plain = card_body(write_model_card(make_run_folder(tmp_path / "plain")))
    assert "## Teacher" not in plain and "Distillation arguments" not in plain and "taught by" not in plain


FP16_NEEDS = "fp16 needs a CUDA GPU"
BF16_NEEDS = "bf16 needs a CUDA GPU with bf16, Ampere or newer, or --use_cpu"


@pytest.mark.parametrize(
    "flags, recorded, shown, recipe",
    [
        (["--use_cpu"], ("fp32", "fp16"), f"fp32 (asked for fp16: {FP16_NEEDS})",  # the default recipe, on a CPU
         {"fp16": f"true (asked for; this run trained in fp32: {FP16_NEEDS})", "bf16": "false"}),
        (["--no_fp16"], ("fp32", "fp32"), "fp32", {"fp16": "false", "bf16": "false"}),
        (["--bf16", "--use_cpu"], ("bf16", "bf16"), "bf16", {"fp16": "false", "bf16": "true"}),
        pytest.param(
            ["--bf16"], ("fp32", "bf16"), f"fp32 (asked for bf16: {BF16_NEEDS})",
            {"fp16": "false", "bf16": f"true (asked for; this run trained in fp32: {BF16_NEEDS})"},
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="what a host without CUDA records"),
        ),
    ],
    ids=["fp16-on-a-cpu", "fp32", "bf16", "bf16-on-a-cpu"],
)  # fmt: skip
def test_the_run_records_the_precision_used_beside_the_one_asked_for_and_the_card_shows_both(
    tmp_path, flags, recorded, shown, recipe
):
    """The hardware table says the precision the run trained in, and the recipe's flags agree with it."""
    run_dir = make_run_folder(tmp_path / "run", flags=flags)
    run_info = json.loads((run_dir / "run_info.json").read_text())
    assert (run_info["hardware"]["precision"], run_info["hardware"]["precision_asked"]) == recorded
    assert run_info["training_arguments"]["fp16"] is (recorded[1] == "fp16")  # the recipe, as asked for
    body = card_body(write_model_card(run_dir))
    assert table_row(section(body, "Hardware and speed"), "precision")[1] == shown
    assert {name: table_row(section(body, "Training recipe"), f"`{name}`")[1] for name in recipe} == recipe


def test_an_unpublished_card_says_only_what_its_folder_holds(run_dir):
    """Unpublished: the snippets load from a path to fill in (the folder's bare name loads only from its parent),
    and the endpoint's files are what publishing adds; published: the Hub id, and the files the repository holds."""
    body = card_body(write_model_card(run_dir))
    assert f'from_pretrained("path/to/{run_dir.name}", trust_remote_code=True)' in body
    assert f'from_pretrained("{run_dir.name}"' not in body and str(run_dir) not in body
    assert "Publishing this folder (`scripts/push_to_hub.py`) adds `handler.py` and `requirements.txt`" in body
    assert "The repository also holds" not in body
    body = card_body(write_model_card(run_dir, hub_model_id="someone/vtlm-tiny"))
    assert "The repository also holds `handler.py` and `requirements.txt`" in body and "path/to/" not in body


def test_feature_guidance_is_worded_for_a_teacher_with_another_token_grid(tmp_path):
    teacher = make_run_folder(tmp_path / "teacher")
    run_dir = make_run_folder(tmp_path / "student", flags=[f"--teacher_model_name_or_path={teacher}"])
    guidance = table_row(section(card_body(write_model_card(run_dir)), "Teacher"), "feature guidance")[1]
    assert "at the same positions" not in guidance  # untrue of a DHVT teacher's 256 tokens, pooled to 64
    assert "token grid average-pooled, or resized, to the model's where the two differ" in guidance


def test_the_card_shows_the_parameters_and_flops_its_record_holds(run_dir):
    """The card renders what the run counted (`run_info.json`'s `compute`), never a count of its own."""
    compute = json.loads((run_dir / "run_info.json").read_text())["compute"]
    edit_json(
        run_dir / "run_info.json",
        compute={**compute, "num_parameters": 1234567, "forward_flops_per_image": 7_000_000_000},
    )
    body = card_body(write_model_card(run_dir))
    assert table_row(body, "parameters")[1] == "1,234,567"
    assert table_row(body, "inference FLOPs per image (forward)")[1] == "7.000 GFLOPs (7,000,000,000)"
