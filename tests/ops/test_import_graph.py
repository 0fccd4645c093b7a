"""The imports between the modules of ``lmobjectives.ops`` point one way (no cycle), counting
the imports inside functions too (see the graph in ``ops/_common.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

import lmobjectives.ops

OPS = Path(lmobjectives.ops.__file__).parent
PACKAGE = "lmobjectives.ops"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Names (``__init__`` for the package itself) of the ops modules that ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == PACKAGE:  # from lmobjectives.ops import _triton / linear_cross_entropy
                found |= {a.name if a.name in modules else "__init__" for a in node.names}
                continue
            names = [node.module]
        else:
            continue
        for name in names:
            if name.startswith(PACKAGE + "."):
                found.add(name[len(PACKAGE) + 1 :].split(".")[0])
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in OPS.glob("*.py")}
    return {m: _imports(OPS / f"{m}.py", modules) for m in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_ops_imports_point_one_way():
    graph = import_graph()
    assert "_custom_ops" in graph["linear_cross_entropy"]  # the scan sees lazy imports
    assert "_vocab_chunked" in graph["_custom_ops"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert graph["_common"] == set()  # the bottom layer imports nothing from ops


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
