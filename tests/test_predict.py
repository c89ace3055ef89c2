"""scripts/predict.py: top-k labels for image files, through the image-classification pipeline."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, class_images, load_script, parse_table, save_tiny_model
from PIL import Image


def load_predict():
    return load_script("predict")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("predict-model")
    save_tiny_model(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict-images")
    paths = []
    for index, (array, suffix) in enumerate(zip(class_images([4, 57], image_size=48), (".png", ".jpg"), strict=True)):
        path = folder / f"image-{index}{suffix}"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


@pytest.mark.slow  # a script in a fresh interpreter
def test_predict_prints_the_pipelines_top_k_for_every_image(model_dir, image_files, tmp_path):
    from transformers import pipeline

    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "predict.py"), str(model_dir), *map(str, image_files)]
        + ["--top_k", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = parse_table(completed.stdout)

    classifier = pipeline("image-classification", model=str(model_dir), trust_remote_code=True)
    expected = []
    for path in image_files:
        for rank, prediction in enumerate(classifier(Image.open(path).convert("RGB"), top_k=3), start=1):
            expected.append((str(path), rank, prediction["label"], round(prediction["score"], 4)))
    assert [row[:3] for row in rows] == [row[:3] for row in expected]
    assert [row[3] for row in rows] == pytest.approx([row[3] for row in expected], abs=1e-4)


def test_missing_and_corrupt_files_are_named_and_fail_before_the_model_loads(model_dir, image_files, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(image_files[0].read_bytes()[:100])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing = tmp_path / "missing.jpg"

    argv = [str(tmp_path / "no-model-here"), str(image_files[0]), str(missing), str(corrupt), str(text), str(tmp_path)]
    predict = load_predict()
    assert predict.run_cli(predict.main, argv) == 2
    output = capsys.readouterr()
    assert output.out == ""
    (line,) = output.err.splitlines()  # one line, as every script ends a user's mistake
    errors = line.removeprefix("error: ").split("; ")
    assert len(errors) == 4
    assert errors[0] == f"{missing}: no such file"
    # The endpoint's and the demo's messages: the three decode an image one way (`endpoint.handler.load_image`).
    assert errors[1] == f"{corrupt}: the image could not be decoded (image file is truncated)"
    assert errors[2] == f"{text}: the bytes are not in any image format PIL can read"
    assert errors[3] == f"{tmp_path}: is a directory, not an image file"


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_a_missing_model_folder_is_named_in_one_line(image_files, tmp_path, monkeypatch, capsys, relative):
    monkeypatch.chdir(tmp_path)
    model = "runs/nonexist" if relative else str(tmp_path / "runs" / "nonexist")
    predict = load_predict()
    assert predict.run_cli(predict.main, [model, str(image_files[0])]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    if relative:  # a valid Hub id too: offline, it cannot be looked up, and the line says both
        assert line == (
            "error: there is no folder runs/nonexist here, and the Hub id runs/nonexist cannot be looked up: "
            "HF_HUB_OFFLINE is set"
        )
    else:
        assert line == f"error: {model} is neither a folder nor a Hub id (user/name)"


def test_top_k_must_be_positive_and_a_mistyped_flag_gets_a_suggestion(model_dir, image_files, capsys):
    predict = load_predict()
    assert predict.run_cli(predict.main, [str(model_dir), str(image_files[0]), "--top_k", "0"]) == 2
    assert capsys.readouterr().err == "error: --top_k must be at least 1, got 0\n"
    assert predict.run_cli(predict.main, [str(model_dir), str(image_files[0]), "--topk", "2"]) == 2
    assert "--topk (did you mean --top_k?)" in capsys.readouterr().err


def test_predict_in_process_honours_top_k(model_dir, image_files, capsys):
    assert load_predict().main([str(model_dir), str(image_files[1]), "--top_k", "2"])
    rows = parse_table(capsys.readouterr().out)
    assert [(row[0], row[1]) for row in rows] == [(str(image_files[1]), 1), (str(image_files[1]), 2)]
    assert rows[0][3] >= rows[1][3]


def test_a_16_bit_image_is_classified_as_its_8_bit_version_on_every_path(model_dir, tmp_path, capsys):
    """Training data, predict.py and the endpoint handler read a 16-bit PNG as its 8-bit version (PIL's own
    convert("RGB") would clip most of it to white)."""
    from endpoint.handler import load_image
    from training.data import _decode_image

    gradient = np.tile(np.arange(256, dtype=np.uint8), (32, 1))
    paths = {"8-bit": tmp_path / "gradient-8.png", "16-bit": tmp_path / "gradient-16.png"}
    Image.fromarray(gradient).save(paths["8-bit"])
    Image.fromarray(gradient.astype(np.uint16) * 257).save(paths["16-bit"])
    assert Image.open(paths["16-bit"]).mode.startswith("I;16")

    decoded = {name: _decode_image({"bytes": path.read_bytes(), "path": None}, 32) for name, path in paths.items()}
    np.testing.assert_array_equal(decoded["16-bit"], decoded["8-bit"])
    served = {name: np.asarray(load_image(path.read_bytes())) for name, path in paths.items()}
    np.testing.assert_array_equal(served["16-bit"], served["8-bit"])
    assert served["16-bit"].mean() == pytest.approx(gradient.mean(), abs=1)  # not clipped to white

    assert load_predict().main([str(model_dir), str(paths["8-bit"]), str(paths["16-bit"]), "--top_k", "3"])
    rows = parse_table(capsys.readouterr().out)
    assert [row[2:] for row in rows[:3]] == [row[2:] for row in rows[3:]]
