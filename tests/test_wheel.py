"""A wheel install (`pip install .`, not `-e`) trains, renders its card and publishes, with no checkout in sight.

The wheel is built from this checkout and installed into a folder of its own; the scripts it puts on PATH run from
another folder with that folder first on `sys.path`, and every module they import is checked to come from it.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, TINY_RUN

# Publishing from the installed package, against a stand-in for the Hub that records what each upload holds.
PUBLISH = """
import json, pathlib, sys
import vtlm.modeling as modeling, vtlm.training as training, vtlm.training.hub as hub
installed = sys.argv[1]
assert all(module.__file__.startswith(installed) for module in (modeling, training, hub)), (training.__file__,)

class Hub:
    uploads = {}
    def create_repo(self, *args, **kwargs):
        pass
    def upload_folder(self, repo_id, folder_path, **kwargs):
        folder = pathlib.Path(folder_path)
        files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
        texts = {name: (folder / name).read_text() for name in files if name.endswith((".txt", ".md"))}
        self.uploads[repo_id] = {**texts, "files": files}
        return type("Commit", (), {"commit_url": "https://huggingface.co/" + repo_id})()

api = Hub()
hub.check_can_publish = lambda *args, **kwargs: api
hub.publish_run(sys.argv[2], hub_model_id="someone/tiny", token="hf_not_a_real_token", space_id="someone/demo")
print(json.dumps(api.uploads))
"""


@pytest.mark.slow  # builds and installs a wheel, then trains in a fresh interpreter
def test_a_wheel_install_trains_renders_its_card_and_publishes(cifar100_dir, tmp_path):
    wheels, installed, elsewhere = tmp_path / "wheels", tmp_path / "installed", tmp_path / "elsewhere"
    elsewhere.mkdir()
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run([*build, str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("vtlm-*.whl")
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(installed), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    # One name of its own: nothing that another project's `training` or `modeling` would collide with.
    assert {path.name for path in installed.iterdir() if not path.name.endswith(".dist-info")} == {"vtlm", "bin"}

    # The checkout is not importable from there: only the installed folder is first on the path.
    environment = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    run_dir = elsewhere / "run"
    train = [sys.executable, str(installed / "bin" / "train.py"), f"--dataset_name={cifar100_dir}",
             "--validation_split_size=100", "--num_train_epochs=1", f"--output_dir={run_dir}", *TINY_RUN]  # fmt: skip
    result = subprocess.run(train, cwd=elsewhere, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    card = (run_dir / "README.md").read_text()
    assert "trust_remote_code=True" in card and "{{" not in card  # rendered from the installed template

    publish = [sys.executable, "-c", PUBLISH, str(installed), str(run_dir)]
    result = subprocess.run(publish, cwd=elsewhere, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    uploads = json.loads(result.stdout.strip().splitlines()[-1])
    model, space = uploads["someone/tiny"], uploads["someone/demo"]
    assert {"handler.py", "requirements.txt", "README.md", "model.safetensors"} <= set(model["files"])
    assert model["requirements.txt"] == (REPO_ROOT / "endpoint" / "requirements.txt").read_text()
    assert {"app.py", "handler.py", "requirements.txt"} <= set(space["files"])
    assert "gradio" not in space["requirements.txt"] and "transformers==" in space["requirements.txt"]
