"""The stairs go one way: no module of encsteal imports, through any chain, a module that imports it back; and
`import encsteal` stays light, so a server worker loads only what serving needs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import encsteal

PACKAGE = Path(encsteal.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The encsteal modules a file imports anywhere (inside functions too, but not under TYPE_CHECKING), with the
    packages whose __init__ such an import runs first (those the file is not itself inside)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    targets: set[str] = set()
    for node in ast.walk(tree):
        if _under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets.add(base)
            targets |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
    found = set()
    for target in targets:
        parts = target.split(".")
        for depth in range(1, len(parts) + 1):
            ancestor = ".".join(parts[:depth])
            if ancestor in modules and ancestor != name and not name.startswith(ancestor + "."):
                found.add(ancestor)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_finds_a_cycle_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    graph = import_graph()
    assert "encsteal.config" in graph["encsteal.experiments.sweep"]
    assert "encsteal.experiments.pipeline" in graph["encsteal.cli"]  # imported inside a command
    assert {"encsteal.data.offline", "encsteal.data.common"} <= graph["encsteal.data"]


def test_no_module_imports_itself_through_another():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_config_and_the_training_helpers_import_no_layer_above_them():
    graph = import_graph()
    assert not {m for m in graph["encsteal.config"] if m.startswith(("encsteal.attacks", "encsteal.pretrain"))}
    for low in ("encsteal.training", "encsteal.distributed"):
        assert "encsteal.config" not in graph[low]


def test_import_encsteal_loads_no_server_database_or_pipeline():
    code = ("import sys, encsteal\n"
            "heavy = [m for m in ('fastapi', 'uvicorn', 'sqlalchemy', 'torch', 'encsteal.config', 'encsteal.api',\n"
            "         'encsteal.experiments') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert encsteal.ConfigError is sys.modules['encsteal.errors'].ConfigError\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_server_worker_loads_no_pipeline_config_or_plots():
    code = ("import sys, encsteal.service.server\n"
            "heavy = [m for m in ('encsteal.experiments', 'encsteal.config', 'encsteal.attacks', 'matplotlib')\n"
            "         if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_lazy_names_resolve_and_config_error_keeps_its_old_home():
    from encsteal.config import ConfigError, load_config

    assert encsteal.load_config is load_config
    assert encsteal.ConfigError is ConfigError
    assert callable(encsteal.run) and callable(encsteal.evaluate_run)
    assert set(encsteal.__all__) <= set(dir(encsteal))
