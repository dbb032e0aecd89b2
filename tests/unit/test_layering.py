"""The packages import only downwards: cli -> web -> ui -> api -> spark -> screening -> fhir ->
ruleset -> mapping. Every import counts, in a function or under TYPE_CHECKING too; the modules
outside these packages (settings, errors, catalog, console, state, ...) are followed through, so
that none of them carries an upward import in."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ORDER = ("mapping", "ruleset", "fhir", "screening", "spark", "api", "ui", "web", "cli")
RANK = {package: rank for rank, package in enumerate(ORDER)}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(path): path for path in (ROOT / "service").rglob("*.py")}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in MODULES}


GRAPH = {module: _imports(path) for module, path in MODULES.items()}


def _layer(module: str) -> str | None:
    """The layer of a module of one of the ordered packages (service/web.py is ``web``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def test_packages_import_only_the_layers_below_them() -> None:
    upward: list[str] = []
    for module in MODULES:
        own = _layer(module)
        if own is None:
            continue
        seen: set[str] = set()
        stack = [[module, target] for target in GRAPH[module]]
        while stack:
            chain = stack.pop()
            target = chain[-1]
            if target in seen:
                continue
            seen.add(target)
            layer = _layer(target)
            if layer is None:  # a helper module: what it imports counts for its importer
                stack += [[*chain, further] for further in GRAPH[target]]
            elif RANK[layer] > RANK[own]:
                upward.append(" -> ".join(chain))
    assert upward == []


def test_nothing_imports_the_command_line_but_python_m_service() -> None:
    importers = {module for module, targets in GRAPH.items() if "service.cli" in targets}
    assert importers == {"service.__main__"}
