"""The package's shape, read from its source with ``ast``: imports go one way (no circles, layers
never import modeling, the dense mask head never imports the IUQ loss), modules stay short,
Triton helpers are written once, and removed config keys are refused by name."""

import ast
import os
from collections import Counter
from typing import Dict, List, Set

import pytest

from iuq_d2.config import REMOVED_KEYS
from iuq_d2.engine.config_loader import load_config

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "iuq_d2")
MAX_LINES = 400


def _modules() -> Dict[str, str]:
    """Dotted module name -> file path, for every module of the package."""
    modules = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")]
            parts = rel.split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> List[str]:
    """Absolute names an ``import from`` statement may refer to (the module and its names)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the package modules it imports (at any depth of its code)."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        is_package = path.endswith("__init__.py")
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = _resolve(module, is_package, node)
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            edges.update(n for n in names if n in modules and n != module)
        graph[module] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import circle as a list of modules, or [] when there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def _is_package_parent(importer: str, imported: str) -> bool:
    """A package importing its own submodules (``__init__`` re-exports) is not a circle."""
    return imported.startswith(importer + ".")


def test_no_import_circles():
    graph = import_graph()
    # Edges from a package to its own parents are what Python resolves while importing it.
    graph = {
        m: {n for n in edges if not _is_package_parent(n, m) and not m.startswith(n + ".")}
        for m, edges in graph.items()
    }
    assert find_cycle(graph) == []


def test_find_cycle_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_import_direction():
    graph = import_graph()
    for module, edges in graph.items():
        if module.startswith("iuq_d2.layers"):
            assert not any(e.startswith("iuq_d2.modeling") for e in edges), module
        if module.startswith("iuq_d2.layers.dense_mask_head"):
            assert not any(e.startswith("iuq_d2.layers.inter_scene_loss") for e in edges), module
    # The analysis tools stay outside: nothing in the package imports them.
    assert not any("tools" in e.split(".")[0] for edges in graph.values() for e in edges)


def test_modules_are_short():
    long = {}
    for module, path in _modules().items():
        with open(path) as f:
            lines = sum(1 for _ in f)
        if lines > MAX_LINES:
            long[module] = lines
    assert long == {}


def test_triton_helpers_are_defined_once():
    """No function name is defined at module level (or under an ``if triton`` guard) in two
    modules of ``layers/``: a helper shared by the kernels lives in ``triton_support``."""
    names: Counter = Counter()
    for module, path in _modules().items():
        if not module.startswith("iuq_d2.layers"):
            continue
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        defs = set()
        for node in tree.body:
            body = node.body if isinstance(node, ast.If) else [node]
            defs.update(n.name for n in body if isinstance(n, ast.FunctionDef))
        names.update(defs)
    allowed = {"forward", "backward"}
    assert {n: c for n, c in names.items() if c > 1 and n not in allowed} == {}


@pytest.mark.parametrize("key", REMOVED_KEYS)
def test_removed_keys_are_refused_by_name(key, tmp_path):
    leaf = key if key != "MODEL.IUQ.CONTRAST" else key + ".ENABLED"
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + ".*01a7ce5"):
        load_config(None, [leaf, "1"])
    # The same in a yaml file, nested as users write it.
    parts = leaf.split(".")
    text = "".join("  " * i + p + ":\n" for i, p in enumerate(parts[:-1]))
    text += "  " * (len(parts) - 1) + parts[-1] + ": 1\n"
    path = tmp_path / "old.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path}.*{key}"):
        load_config(str(path))


def test_iuq_keys_are_the_methods():
    cfg = load_config(None)
    keys = []
    for name, node in cfg.MODEL.IUQ.items():
        keys += [f"{name}.{k}" for k in node] if isinstance(node, dict) else [name]
    assert len(keys) == 21, sorted(keys)
