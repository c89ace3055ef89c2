"""Security promises checked on the source: what the shipped remote code may do, and that no pickle is ever loaded."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ["modeling/configuration_vtlm.py", "modeling/modeling_vtlm.py"]
PROJECT_SOURCES = [
    os.path.relpath(os.path.join(folder, name), REPO)
    for top in ("modeling", "training", "scripts", "endpoint")
    for folder, _, names in os.walk(os.path.join(REPO, top))
    for name in names
    if name.endswith(".py")
]
# Calls that would let `trust_remote_code` files touch the network, the disk or run generated code.
FORBIDDEN_CALLS = {"eval", "exec", "compile", "open", "__import__", "getattr_static", "system", "popen", "urlopen"}


def parse(path):
    with open(os.path.join(REPO, path)) as file:
        return ast.parse(file.read(), filename=path)


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_files_import_only_torch_transformers_and_each_other(path):
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {"." if node.level else node.module.split(".")[0]}
        else:
            continue
        assert roots <= {"torch", "transformers", "."}, f"{path}:{node.lineno} imports {roots}"


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_files_only_define_at_import(path):
    """At module level: imports, assignments of literals, classes and functions. No calls that do work."""
    module = parse(path)
    for node in module.body:
        allowed = (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef, ast.Assign, ast.Try, ast.Expr)
        assert isinstance(node, allowed), f"{path}:{node.lineno} runs {type(node).__name__} at import"
        if isinstance(node, ast.Assign):
            assert not any(isinstance(child, ast.Call) for child in ast.walk(node.value)), f"{path}:{node.lineno}"
        if isinstance(node, ast.Expr):
            assert isinstance(node.value, ast.Constant), f"{path}:{node.lineno} calls at import"
    for node in ast.walk(module):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            assert name not in FORBIDDEN_CALLS, f"{path}:{node.lineno} calls {name}"


@pytest.mark.parametrize("path", PROJECT_SOURCES)
def test_no_pickle_is_ever_loaded(path):
    """Weights are read with safetensors only: no torch.load, pickle or unsafe numpy loading in the project."""
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            assert (owner, node.func.attr) not in {("torch", "load"), ("pickle", "load"), ("pickle", "loads")}, (
                f"{path}:{node.lineno}"
            )
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            assert "pickle" not in names and "dill" not in names, f"{path}:{node.lineno} imports pickle"
