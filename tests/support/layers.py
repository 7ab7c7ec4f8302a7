"""The structure check: ``python -m tests.support.layers`` (and ``tests/test_layers.py``).

Fails, naming each offence, on:

- an import circle among the modules of ``cas`` and ``descriptor``, lazy
  imports and ``TYPE_CHECKING`` imports included;
- a module using another module's underscore name (``from m import _x``,
  or ``obj._x`` on anything but ``self`` and ``cls``);
- an import against the layers (base, local cache, repository, sync,
  interfaces; docs/architecture.md's layout table): a module may import only from its
  own layer and the layers below it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cas", "descriptor")

# Lowest first; a module's layer is the first whose prefixes match its name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("cas.errors", "cas.content", "cas.system", "cas.trust.keys", "cas.trust.documents", "cas.trust.policy")),
    ("local cache", ("cas.local",)),
    ("repository", ("cas.repo",)),
    ("sync", ("cas.sync", "cas.trust")),
    ("interfaces", ("cas.cache", "cas.foreign", "cas.cli", "cas.server", "cas.__main__", "cas", "descriptor")),
]  # fmt: skip


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the packages under ``root`` by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def layer(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise KeyError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def imports(module: str, path: Path, known: dict[str, Path]) -> tuple[set[str], list[str]]:
    """The package modules ``module`` imports, and its reaches into other modules' underscore names."""
    edges: set[str] = set()
    reaches: list[str] = []
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    foreign = _foreign_names(tree, known)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(module, node.level, node.module, is_package)
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                if target in known and target != module:
                    edges.add(target)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        reaches.append(f"{path}:{node.lineno}: imports {alias.name} from {target}")
        elif isinstance(node, ast.Import):
            edges |= {a.name for a in node.names if a.name in known and a.name != module}
        elif isinstance(node, ast.Attribute) and _private(node.attr) and not _own(node.value, foreign):
            reaches.append(f"{path}:{node.lineno}: uses {ast.unparse(node)}")
    return edges, reaches


def _foreign_names(tree: ast.Module, known: dict[str, Path]) -> set[str]:
    """Names bound to modules outside the packages (``os._exit`` is the standard library's own business)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] not in PACKAGES}
    return out


def _absolute(module: str, level: int, name: str | None, is_package: bool) -> str:
    if level == 0:
        return name or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


def _private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__")


def _own(value: ast.expr, foreign: set[str]) -> bool:
    return isinstance(value, ast.Name) and (value.id in ("self", "cls") or value.id in foreign)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def problems(root: Path = ROOT) -> list[str]:
    known = modules(root)
    graph: dict[str, set[str]] = {}
    out: list[str] = []
    for module, path in known.items():
        graph[module], reaches = imports(module, path, known)
        out += reaches
        for target in sorted(graph[module]):
            if layer(target) > layer(module) and not module.startswith(target + "."):
                out.append(f"{module} ({LAYERS[layer(module)][0]}) imports {target} ({LAYERS[layer(target)][0]}), "
                           "a layer above it")  # fmt: skip
    out += [f"import circle: {' <-> '.join(c)}" for c in circles(graph)]
    return out


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    print(f"{len(modules())} modules, {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
