"""The package's layers point one way: a module imports only its own layer and the layers below it.

A module's layer is the first component of its path under ``src/lmobjectives``: ``data/chat.py`` is in
``data``, a top-level ``x.py`` is layer ``x``. ``__main__.py`` belongs to ``cli``. The package's
``__init__.py`` sits with ``constants`` at the bottom: it imports only the constants and loads the rest
lazily, by name, on first use.

``LAYERS`` gives each layer the layers it may import directly; it may import anything reachable
through them too, and itself. Every import counts, wherever it is: at module level, inside a function,
under ``if TYPE_CHECKING:``. A new top-level module or folder must be given a layer here first.

Also here: no cycle among the imports that run when a module is imported (module level, outside
``if TYPE_CHECKING:``, with the packages each one enters); every module imports as the first one in a fresh
interpreter; only objectives/ and recipes/ name an objective. Each file is read from disk and parsed, so
the tests hold for whatever the tree holds when they run.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import tokenize
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import pytest

import lmobjectives

# layer -> the layers it may import directly (bottom first)
LAYERS: dict[str, tuple[str, ...]] = {
    "constants": (),  # also the package's __init__.py
    "vocab": ("constants",),
    "_checks": ("vocab",),
    "batch": ("_checks",),  # Batch and attention_mask_4d
    "_option": (),  # option(): a dataclass field that carries its help text
    "ops": ("constants", "_checks"),  # fused linear cross-entropy
    "losses": ("ops",),  # losses of hidden states
    "data": ("batch",),  # text in, token tensors out
    "objectives": ("data", "_option"),  # pure seeded transforms ids -> Batch
    "models": ("batch",),  # modules that read a Batch
    "recipes": ("objectives", "models", "losses"),  # how each objective is trained
    "training": ("recipes",),  # the generic loop, streams, checkpoints, the run folder
    "hf": ("training",),  # Hugging Face integration: collators and a Trainer
    "evaluation": ("training",),  # score a finished run
    "compare": ("evaluation",),  # train N objectives, evaluate, report
    "cli": ("compare",),  # one file per lmobj command; also __main__.py
}

PACKAGE = Path(lmobjectives.__file__).parent
ROOT = "lmobjectives"
OPTIONAL = ("triton", "tokenizers", "transformers", "matplotlib")  # the extras' packages (pyproject.toml)


def layer_of(path: str) -> str | None:
    """The layer of the module at ``path`` (relative to the package), or None if it has none."""
    if path == "__init__.py":
        return "constants"
    if path == "__main__.py":
        return "cli"
    first = PurePosixPath(path).parts[0].removesuffix(".py")
    return first if first in LAYERS else None


def below(layer: str) -> set[str]:
    """``layer`` and every layer reachable from it through ``LAYERS``: what its modules may import."""
    seen, todo = {layer}, [layer]
    while todo:
        for dep in LAYERS[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


# --- reading the imports ---------------------------------------------------------------------------


def module_files(root: Path) -> dict[str, str]:
    """Dotted name -> path relative to ``root`` of every module of the package (packages by their own name)."""
    found = {}
    for file in sorted(root.rglob("*.py")):
        path = file.relative_to(root).as_posix()
        parts = path.removesuffix(".py").split("/")
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([ROOT, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _scoped(nodes: Iterable[ast.AST], top: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``nodes``, with whether it runs when the module is imported."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, top
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _scoped(ast.iter_child_nodes(node), False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _scoped(node.body, False)
            yield from _scoped(node.orelse, top)
        else:
            yield from _scoped(ast.iter_child_nodes(node), top)


def _ours(name: str | None) -> bool:
    return name is not None and (name == ROOT or name.startswith(ROOT + "."))


def lazy_names(root: Path) -> dict[str, str]:
    """The names the package's ``__init__`` loads on first use (its ``_LAZY`` table) -> their module."""
    init = root / "__init__.py"
    for node in ast.parse(init.read_text()).body if init.exists() else []:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if not any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in targets):
                continue
            table = ast.literal_eval(node.value)
            return {name: ROOT + module if module.startswith(".") else module for name, module in table.items()}
    return {}


def resolve(
    node: ast.Import | ast.ImportFrom, importer: str, modules: dict[str, str], lazy: dict[str, str]
) -> list[str]:
    """Dotted names of the package's modules that one import statement in module ``importer`` loads.

    ``from P import name`` is the submodule ``P.name`` when there is one, else ``P`` itself; for the
    package root, a name that ``__init__`` loads lazily is the module it comes from.
    """
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if _ours(alias.name)]
    base = node.module
    if node.level:
        package = importer if modules.get(importer, "").endswith("__init__.py") else importer.rpartition(".")[0]
        parts = package.split(".")
        if node.level > len(parts):
            return []  # above the package: not ours
        base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
    if not _ours(base):
        return []
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in modules:
            found.append(sub)
        elif base == ROOT and alias.name in lazy:
            found.append(lazy[alias.name])
        else:
            found.append(base)
    return found


class Edge(NamedTuple):
    importer: str  # path relative to the package, e.g. "data/tokenizers.py"
    imported: str  # same ("x/y.py" for a module that does not exist)
    exists: bool  # the imported module is a file of the package
    top: bool  # runs when the importer is imported: module level, not under `if TYPE_CHECKING:`


def edges(root: Path = PACKAGE) -> list[Edge]:
    """Every import of one of the package's modules by another, once per (importer, imported, top)."""
    modules = module_files(root)
    lazy = lazy_names(root)
    found = set()
    for dotted, path in modules.items():
        for node, top in _scoped(ast.parse((root / path).read_text(), path).body, True):
            for target in resolve(node, dotted, modules, lazy):
                missing = "/".join(target.split(".")[1:]) + ".py"  # where it would be
                found.add(Edge(path, modules.get(target, missing), target in modules, top))
    return sorted(found)


def packages_entered(importer: str, imported: str) -> list[str]:
    """The ``__init__.py`` of each package that Python runs before ``imported`` when ``importer`` imports it;
    not those that hold ``importer``, which are running already."""
    mine, theirs = PurePosixPath(importer).parent.parts, PurePosixPath(imported).parent.parts
    return [f"{'/'.join(theirs[:i])}/__init__.py" for i in range(1, len(theirs) + 1) if theirs[:i] != mine[:i]]


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules that importing it runs: its module-level imports and the packages they enter."""
    graph: dict[str, set[str]] = {}
    for edge in edges(root):
        if edge.top and edge.exists:
            found = {edge.imported, *packages_entered(edge.importer, edge.imported)} - {edge.importer}
            graph.setdefault(edge.importer, set()).update(found)  # a name from itself is no cycle
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as the path that closes it (``[a, b, a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:  # back on the current path: the cycle runs from nxt to here
                walk = [*path, node]
                return [*walk[walk.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


# --- the tests --------------------------------------------------------------------------------------


def test_the_layer_table_is_one_way():
    assert all(dep in LAYERS for deps in LAYERS.values() for dep in deps), "a layer depends on an undeclared one"
    assert all(layer not in below(dep) for layer, deps in LAYERS.items() for dep in deps), "LAYERS has a cycle"


def test_imports_point_down():
    problems = []
    for path in sorted(module_files(PACKAGE).values()):
        if layer_of(path) is None:
            problems.append(f"{path}: in no layer (declare its layer in LAYERS)")
    for edge in edges():
        a, b = layer_of(edge.importer), layer_of(edge.imported)
        if not edge.exists:
            problems.append(f"{edge.importer} -> {edge.imported} (no such module)")
        if a is not None and b is not None and b not in below(a):
            problems.append(f"{edge.importer} -> {edge.imported} (layer {a} may not import layer {b})")
    problems = list(dict.fromkeys(problems))  # an edge found both at module level and in a function: once
    assert not problems, f"{len(problems)} imports against the layers:\n" + "\n".join(problems)


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle or [])


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / ROOT / name).parent.mkdir(parents=True, exist_ok=True)
        (root / ROOT / name).write_text(text)
    return root / ROOT


def test_the_scan_sees_every_kind_of_import(tmp_path):
    """The checker itself, on a made-up package: relative, absolute, lazy, in functions, TYPE_CHECKING."""
    root = _write_package(
        tmp_path,
        {
            "__init__.py": "from .constants import X\n_LAZY = {'Batch': '.batch'}\n",
            "constants.py": "X = 1\n",
            "batch.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .data import chat\n",
            "data/__init__.py": "from . import chat, helper\nfrom .. import Batch\n",
            "data/chat.py": "import lmobjectives.constants\n\ndef f():\n    from lmobjectives.models.gone import y\n",
            "data/help.py": "from .chat import *\nfrom ...outside import z\n",
        },
    )
    assert set(edges(root)) == {
        Edge("__init__.py", "constants.py", True, True),
        Edge("batch.py", "data/chat.py", True, False),
        Edge("data/__init__.py", "data/chat.py", True, True),
        Edge("data/__init__.py", "data/__init__.py", True, True),  # `helper` is a name of the package
        Edge("data/__init__.py", "batch.py", True, True),  # lazily loaded by the root: the module it comes from
        Edge("data/chat.py", "constants.py", True, True),
        Edge("data/chat.py", "models/gone.py", False, False),
        Edge("data/help.py", "data/chat.py", True, True),
    }
    assert import_graph(root)["data/help.py"] == {"data/chat.py"}  # its own package runs already
    assert find_cycle(import_graph(root)) is None


def test_the_cycle_finder_sees_a_cycle_through_a_package(tmp_path):
    """Importing a submodule runs its package's __init__ first: the cycle that once broke `import lmobjectives.sft`."""
    root = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "sft.py": "from .objectives.sft import ASSISTANT\n",
            "objectives/__init__.py": "from ..sft import CHAT_TOKENS\n",
            "objectives/sft.py": "ASSISTANT = 'assistant'\n",
        },
    )
    assert find_cycle(import_graph(root)) == ["objectives/__init__.py", "sft.py", "objectives/__init__.py"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _needs(path: str) -> list[str]:
    """The optional packages that the module at ``path`` imports at module level."""
    tree = ast.parse((PACKAGE / path).read_text())
    names = set()
    for node, top in _scoped(tree.body, True):
        if not top:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return sorted(names & set(OPTIONAL))


@pytest.mark.parametrize("module, path", [pytest.param(m, p, id=m) for m, p in sorted(module_files(PACKAGE).items())])
def test_every_module_imports_first(module, path, tmp_path):
    """Each module imports as the first one in a fresh interpreter: no cycle that only the usual import
    order hides, no import that works only because another module ran first."""
    missing = [name for name in _needs(path) if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{module} needs {', '.join(missing)}, not installed")
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        check=False,
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    tail = "\n".join(result.stderr.strip().splitlines()[-12:])
    if result.returncode != 0:
        pytest.fail(f"python -c 'import {module}' failed (rc {result.returncode}):\n{tail}", pytrace=False)


def _objective_names() -> list[str]:
    """The registry's names: in recipes/ once it exists, in objectives/ before."""
    home = "lmobjectives.recipes" if importlib.util.find_spec("lmobjectives.recipes") else "lmobjectives.objectives"
    return sorted(importlib.import_module(home).OBJECTIVES)


def _code_lines(path: Path) -> list[str]:
    """The lines of ``path`` without their comments and docstrings (prose and examples may name an objective;
    every other string stays)."""
    text = path.read_text()
    lines = text.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            lines[row - 1] = lines[row - 1][:col]
    for node in ast.walk(ast.parse(text)):  # a string statement: a docstring, of a module, class, function or name
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for row in range(node.lineno - 1, node.end_lineno):
                lines[row] = ""
    return lines


def test_no_objective_names_outside_objectives_and_recipes():
    """The trainer, the CLI and everything else read recipes, never names: no quoted objective name in
    code outside objectives/ and recipes/ (a comment or a docstring may mention one)."""
    quoted = re.compile(rf"""["']({"|".join(map(re.escape, _objective_names()))})["']""")
    hits = []
    for path in sorted(module_files(PACKAGE).values()):
        if PurePosixPath(path).parts[0] in ("objectives", "recipes"):
            continue
        for number, line in enumerate(_code_lines(PACKAGE / path), 1):
            if quoted.search(line):
                hits.append(f"{path}:{number} names an objective: {line.strip()}")
    assert not hits, f"{len(hits)} lines name an objective:\n" + "\n".join(hits)
