"""Where a measurement comes from: the commit of the code that made it and the machine it ran on."""

import os
import platform
import re
import subprocess

import torch
import transformers
from torch.utils import collect_env

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit():
    """The commit of this checkout, with '-dirty' when tracked files have uncommitted changes (untracked files, such
    as run outputs, do not count: setuptools-scm's rule); None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def machine_info(device):
    """The machine a measurement ran on, from `torch.utils.collect_env` (what PyTorch's bug reports use), plus what
    bounds a CPU run: the CPUs this process may use, torch's threads, and the load when it was asked."""
    env = collect_env.get_env_info()
    cpu_model = re.search(r"Model name:\s*(.+)", env.cpu_info or "")
    cpu_model = cpu_model.group(1).strip() if cpu_model else platform.processor()
    return {
        "device_type": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model,
        "cpu_model": cpu_model,
        "cpus_available": len(os.sched_getaffinity(0)),
        "torch_num_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],  # other jobs on the machine slow every measurement alike
        "os": env.os,
        "python": env.python_version.split()[0],
        "torch": env.torch_version,
        "cuda": torch.version.cuda,  # the CUDA this torch was built for: None on a CPU-only build (not the host's nvcc)
        "transformers": transformers.__version__,
    }


def device_name(device):
    """A run's device as its record names it: the GPU's model, or `cpu`."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
