"""The project's structure: imports run one way (no module imports one that imports it, not even inside a function),
each file of a run folder is named in one place (`training.run_record`), and the reliability doc names tests that
exist."""

import ast
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "modeling", "endpoint", "space")


def module_name(path):
    """The name the module at `path` is imported by: each package's folder is installed under `vtlm`."""
    parts = ("vtlm", *path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules():
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO_ROOT / package).glob("*.py"))}


def imported_modules(name, path, modules):
    """The project's modules that the module `name` (at `path`) imports anywhere in it, functions included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # `from package import module` imports the module; `from module import name`, the module.
            targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules] or [base]
        else:
            continue
        imported |= {target for target in targets if target in modules and target != name}
    return imported


def import_cycle(graph):
    """One cycle of `graph` ({module: modules it imports}) as a list of modules, or None."""
    visiting, done = [], set()

    def visit(module):
        if module in visiting:
            return visiting[visiting.index(module) :] + [module]
        if module in done:
            return None
        visiting.append(module)
        for other in sorted(graph[module]):
            if cycle := visit(other):
                return cycle
        visiting.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if cycle := visit(module):
            return cycle
    return None


def test_no_module_imports_one_that_imports_it():
    modules = project_modules()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph["vtlm.training.rerun"], "the import graph found no imports: the test reads nothing"
    cycle = import_cycle(graph)
    assert cycle is None, f"an import circle: {' -> '.join(cycle)}"


def test_the_cycle_finder_finds_one_inside_a_function(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import y\n")
    modules = {"pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py"}
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert import_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


# The files of a run folder that `training.run_record` names: no other module may type them.
RUN_FOLDER_NAMES = (
    "run_info.json",
    "run_arguments.json",
    "_results.json",  # every split's: all_results.json, test_results.json, ...
    "trainer_state.json",
    "training_curves.png",
)


@pytest.mark.parametrize("name", RUN_FOLDER_NAMES)
def test_each_run_folder_file_is_named_once_in_the_code(name):
    sources = [path for package in (*PACKAGES, "scripts") for path in sorted((REPO_ROOT / package).glob("*.py"))]
    literal = re.compile(rf"""["'][^"'\s]*{re.escape(name)}["']""")  # a string that ends with the name
    typed = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert len(typed) == 1 and typed[0].startswith("training/run_record.py:"), typed


def named_tests(text):
    """The tests a document names, as (file, test): `test_x.py::test_name[...]`, and a bare `test_other` after it in
    the same line for another test of that file."""
    named = []
    for line in text.splitlines():
        current = None
        for token in re.findall(r"`([^`]+)`", line):
            if match := re.fullmatch(r"(test_\w+\.py)(?:::(test_\w+)(?:\[[^\]]*\])?)?", token):
                current = match.group(1)
                named.append((current, match.group(2)))
            elif current and (match := re.fullmatch(r"(test_\w+)(?:\[[^\]]*\])?", token)):
                named.append((current, match.group(1)))
    return named


def test_every_test_the_reliability_doc_names_exists():
    """docs/reliability.md says which test checks each promise: a renamed or merged test must not leave it naming one
    that is gone."""
    named = named_tests((REPO_ROOT / "docs" / "reliability.md").read_text())
    assert len(named) > 100
    missing = []
    for file, test in named:
        path = REPO_ROOT / "tests" / file
        if not path.is_file() or (test and not re.search(rf"^def {test}\(", path.read_text(), re.MULTILINE)):
            missing.append(f"{file}::{test}" if test else file)
    assert missing == []


def test_a_bare_test_name_belongs_to_the_file_named_before_it():
    line = "| a promise | `test_a.py::test_one[x]`, `test_two`, `test_b.py` and `test_three` | pass |"
    assert named_tests(line) == [("test_a.py", "test_one"), ("test_a.py", "test_two"), ("test_b.py", None),
                                 ("test_b.py", "test_three")]  # fmt: skip
