"""scripts/predict.py: top-k labels for image files, through the image-classification pipeline."""

import http.server
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import REPO_ROOT, class_images, free_port, load_script, parse_table, save_tiny_model
from PIL import Image
from test_handler import solid_png


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


def error_lines(stderr):
    """The `error:` lines of `stderr`, without what transformers writes there as it loads a model."""
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def answered_images_of(rows):
    """The images that rows of `scripts/predict.py`'s table (`parse_table`) answer, in order."""
    return list(dict.fromkeys(row[0] for row in rows))


def test_bad_files_among_good_ones_are_named_one_line_each_and_the_good_ones_answered(
    model_dir, image_files, tmp_path, capsys
):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(image_files[0].read_bytes()[:100])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing = tmp_path / "missing.jpg"

    good = list(map(str, image_files))
    argv = [str(model_dir), good[0], str(missing), str(corrupt), str(text), good[1], "--top_k", "2"]
    predict = load_predict()
    with pytest.raises(SystemExit) as stopped:  # through `run_cli`, as the script runs
        predict.run_cli(predict.main, argv)
    assert stopped.value.code == 1  # some inputs failed
    output = capsys.readouterr()
    rows = parse_table(output.out)
    assert answered_images_of(rows) == good and len(rows) == 4
    # The endpoint's and the demo's messages: the three decode an image one way (`endpoint.handler.load_image`).
    assert error_lines(output.err) == [
        f"error: {missing}: no such file",
        f"error: {corrupt}: the image could not be decoded (image file is truncated)",
        f"error: {text}: the bytes are not in any image format PIL can read",
    ]


def test_when_no_input_decodes_each_is_named_and_the_model_is_never_loaded(model_dir, tmp_path, monkeypatch, capsys):
    def pipeline(*args, **kwargs):
        raise AssertionError("the model was loaded with nothing to classify")

    monkeypatch.setattr("transformers.pipeline", pipeline)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    predict = load_predict()
    with pytest.raises(SystemExit) as stopped:
        predict.run_cli(predict.main, [str(model_dir), str(missing), str(text)])
    assert stopped.value.code == 2  # nothing was done: a user's mistake, as every script's
    output = capsys.readouterr()
    assert output.out == ""
    assert output.err.splitlines() == [
        f"error: {missing}: no such file",
        f"error: {text}: the bytes are not in any image format PIL can read",
    ]


def test_a_folder_is_read_as_the_image_files_directly_inside_it_sorted_by_name(
    model_dir, image_files, tmp_path, capsys
):
    folder = tmp_path / "photos"
    (folder / "below").mkdir(parents=True)
    for name, source in (("b.png", image_files[0]), ("a.JPG", image_files[1]), ("below/c.png", image_files[0])):
        (folder / name).write_bytes(source.read_bytes())
    (folder / "notes.txt").write_text("not an image, and not read")
    (folder / "._a.JPG").write_bytes(b"macOS metadata, hidden: not read")

    predict = load_predict()
    assert predict.main([str(model_dir), str(folder), str(image_files[0]), "--top_k", "3"])
    rows = parse_table(capsys.readouterr().out)
    assert answered_images_of(rows) == [str(folder / "a.JPG"), str(folder / "b.png"), str(image_files[0])]
    assert [row[1:] for row in rows[3:6]] == [row[1:] for row in rows[6:]]  # b.png is image_files[0]

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(SystemExit) as stopped:
        predict.main([str(model_dir), str(empty)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"error: {empty}: is a directory with no image files directly inside it\n"


@pytest.fixture
def web_server(image_files):
    """An HTTP server on 127.0.0.1, in a thread, for one test: `/<file name>` serves that file of `image_files`,
    `/big` 4 KiB more than a PNG of them and `/declared-big` a Content-Length of 1 GB (and nothing), `/stalled` its
    headers (100 bytes to come) and then nothing; anything else is a 404."""
    release = threading.Event()
    bodies = {f"/{path.name}": path.read_bytes() for path in image_files}
    bodies["/big"] = bodies[f"/{image_files[0].name}"] + bytes(4096)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path in ("/stalled", "/declared-big"):
                self.send_response(200)
                self.send_header("Content-Length", "100" if self.path == "/stalled" else "1000000000")
                self.end_headers()
                self.wfile.flush()
                if self.path == "/stalled":
                    release.wait(10)  # until the test ends
            elif self.path == "/big":  # no Content-Length: only reading it finds the size
                self.send_response(200)
                self.end_headers()
                self.wfile.write(bodies["/big"])
            elif self.path in bodies:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(bodies[self.path])))
                self.end_headers()
                self.wfile.write(bodies[self.path])
            else:
                self.send_error(404)

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_urls_are_fetched_within_a_time_and_size_limit(model_dir, image_files, web_server, monkeypatch, capsys):
    import vtlm.training.prediction

    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(vtlm.training.prediction, "DOWNLOAD_TIMEOUT", 0.5)
    limit = len(image_files[0].read_bytes()) + 1024
    monkeypatch.setattr(vtlm.training.prediction, "MAX_DOWNLOAD_BYTES", limit)
    url = f"{web_server}/{image_files[0].name}"
    refused = f"http://127.0.0.1:{free_port()}/cat.png"
    inputs = [url, f"{web_server}/missing.png", f"{web_server}/big", f"{web_server}/declared-big"]
    inputs += [f"{web_server}/stalled", refused, str(image_files[0])]

    predict = load_predict()
    with pytest.raises(SystemExit) as stopped:
        predict.main([str(model_dir), *inputs, "--top_k", "3"])
    assert stopped.value.code == 1
    output = capsys.readouterr()
    rows = parse_table(output.out)
    assert answered_images_of(rows) == [url, str(image_files[0])]
    assert [row[1:] for row in rows[:3]] == [row[1:] for row in rows[3:]]  # the URL serves that file
    errors = error_lines(output.err)
    assert errors[:4] == [
        f"error: {web_server}/missing.png: the server answered HTTP 404 Not Found",
        f"error: {web_server}/big: the answer is larger than the {limit:,} bytes downloaded at most",
        f"error: {web_server}/declared-big: the answer is larger than the {limit:,} bytes downloaded at most",
        f"error: {web_server}/stalled: no complete answer within 0.5 s",
    ]
    assert errors[4].startswith(f"error: {refused}: could not be fetched (") and len(errors) == 5


@pytest.mark.slow  # decodes an 8000 x 8000 PNG
def test_a_huge_png_is_classified_by_predict_and_refused_by_the_endpoint(model_dir, tmp_path, monkeypatch, capsys):
    """8,000 x 8,000 pixels: above the endpoint's full-size decoding limit, which a local command line need not
    keep; decoded, it is shrunk as a JPEG of that size is."""
    from vtlm.endpoint.handler import EndpointHandler, load_image

    colour = (120, 30, 200)
    huge, small = tmp_path / "huge.png", tmp_path / "small.png"
    huge.write_bytes(solid_png(8_000, 8_000, rows=8_000, rgb=colour))
    Image.new("RGB", (64, 64), colour).save(small)

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the handler sets it for the process
    handler = EndpointHandler(str(model_dir))
    with pytest.raises(ValueError, match="the image is 8000x8000; a PNG image is decoded at full size"):
        handler({"inputs": huge.read_bytes()})
    with pytest.raises(ValueError, match="is decoded at full size"):
        load_image(huge.read_bytes())  # the default, as the demo decodes

    assert load_predict().main([str(model_dir), str(huge), str(small), "--top_k", "3"])
    rows = parse_table(capsys.readouterr().out)
    assert answered_images_of(rows) == [str(huge), str(small)]
    assert [row[1:] for row in rows[:3]] == [row[1:] for row in rows[3:]]  # one colour, at any size


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
    from vtlm.endpoint.handler import load_image
    from vtlm.training.data import _decode_image

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
