"""Check that segbalance's imports flow one way and have no cycle.

    python -m segbalance.pipeline.import_layers      # exit 1 and one line per violation

Layers, top to bottom (a module may import its own layer or any layer below it)::

    segbalance.kubeflow, segbalance.pipeline   (command line, configuration, DAG, reports)
    segbalance.components                      (TFX components and their Beam / NumPy cores)
    segbalance.trainer                         (Keras losses, model, input pipeline, run_fn)
    segbalance.contract                        (record keys, file and type names: no TF, no TFX)

Every ``import`` / ``from ... import`` statement counts, including the ones inside functions
(a deferred import is still a dependency), and a cycle between two modules is an error even
inside one layer. Names the root package exports lazily (``segbalance.ClassStats``) are not
imports. The check reads the source with ``ast``: it imports nothing.
"""
from __future__ import annotations

import ast
import os
import sys
from typing import Dict, Iterator, List, Optional, Set, Tuple

PACKAGE = "segbalance"
# sub-package -> layer (higher may import lower or equal)
LAYERS = {"kubeflow": 3, "pipeline": 3, "components": 2, "trainer": 1, "contract": 0}


def package_folders() -> Dict[str, str]:
    """{package name: folder} as installed (a checkout's folders for an editable install, see
    pyproject.toml [tool.setuptools.package-dir]; site-packages for a wheel)."""
    import importlib.util

    names = [PACKAGE] + [f"{PACKAGE}.{n}" for n in ("pipeline", "components", "trainer", "kubeflow")]
    return {name: list(importlib.util.find_spec(name).submodule_search_locations)[0] for name in names}


def modules(folders: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """{module name: file} of every module of the package (not sub-folders of a folder)."""
    found = {}
    for package, folder in (folders or package_folders()).items():
        for entry in sorted(os.listdir(folder)):
            if entry.endswith(".py"):
                stem = entry[:-3]
                found[package if stem == "__init__" else f"{package}.{stem}"] = os.path.join(folder, entry)
    return found


def _imports(name: str, path: str) -> Iterator[Tuple[str, int]]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from segbalance.trainer import losses` depends on the module `losses`; `from m import f`
            # on `m` (graph() keeps only the names that are modules of ours)
            yield target, node.lineno
            for alias in node.names:
                yield f"{target}.{alias.name}", node.lineno


def graph(found: Dict[str, str]) -> Dict[str, Dict[str, int]]:
    """{module: {imported module of ours: line}}."""
    edges: Dict[str, Dict[str, int]] = {}
    for name, path in found.items():
        targets = edges.setdefault(name, {})
        imports = list(_imports(name, path))
        submodules = {t.rpartition(".")[0] for t, _ in imports if t in found}
        for target, line in imports:
            # `from package import module`: the module is the dependency, not the package too
            if target in found and target != name and not (target in submodules and _is_package(found[target])):
                targets.setdefault(target, line)
    return edges


def _is_package(path: str) -> bool:
    return os.path.basename(path) == "__init__.py"


def layer(module: str) -> Optional[int]:
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None  # the root package: lazy exports only
    return LAYERS.get(parts[1])


def upward_imports(edges, found) -> List[str]:
    problems = []
    for source, targets in sorted(edges.items()):
        for target, line in sorted(targets.items()):
            low, high = layer(source), layer(target)
            if low is not None and high is not None and high > low:
                problems.append(f"{found[source]}:{line}: {source} imports {target} (a higher layer)")
    return problems


def cycles(edges) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    result: List[List[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return result


def check(folders: Optional[Dict[str, str]] = None) -> List[str]:
    """Every violation as one line (empty: the imports flow one way)."""
    found = modules(folders)
    edges = graph(found)
    problems = upward_imports(edges, found)
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    return problems


def main() -> int:
    problems = check()
    for line in problems:
        print(line)
    if not problems:
        print(f"imports flow one way: {len(modules())} modules, no cycle, no upward import")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
