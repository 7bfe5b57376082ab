"""The code's shape, checked: no import cycle between harness modules, no private name used across modules.

The stage layering itself (front ends > report > run > scenario > guest > artifacts > hosttools >
config > oracles > errors/paths) is an import-linter contract in pyproject.toml (`lint-imports`,
run by the lint tox env); this file covers what a layers contract cannot see:
- cycles inside one stage (e.g. debian.py <-> kernels/source.py, once hidden by a lazy import);
- `from harness.x import _name`, `module._name` and `obj._name` from outside the module that owns
  `_name`: a private name is an implementation detail, so a caller needing it means a public seam
  is missing.
Function-level (lazy) imports count like top-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "harness"
CHECKED = [PACKAGE, ROOT / "tests", ROOT / "benchmarks"]
# Private by convention but meant for callers (namedtuple API, os._exit in a forked child).
ALLOWED_ATTRIBUTES = {"_replace", "_asdict", "_fields", "_make", "_exit"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def harness_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Harness modules imported anywhere in a file (top level, lazy, or under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {name for name in found if name in modules}


def test_no_import_cycle_between_harness_modules() -> None:
    modules = harness_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    own = module_name(path) if path.is_relative_to(PACKAGE) else ""
    imported_modules: dict[str, str] = {}  # local name -> module it stands for
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                dunder = alias.name.startswith("__") and alias.name.endswith("__")  # __version__: public
                private = alias.name.startswith("_") and not dunder
                if private and node.module != own and node.module.startswith("harness"):
                    problems.append(f"{path}:{node.lineno}: imports {node.module}.{alias.name}")
                imported_modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                imported_modules[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.startswith("__") or attr in ALLOWED_ATTRIBUTES:
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            continue
        if (
            isinstance(base, ast.Name)
            and base.id in imported_modules
            and not imported_modules[base.id].startswith("harness")
        ):
            continue  # a third-party or stdlib module's business (e.g. pexpect internals we tune)
        problems.append(f"{path}:{node.lineno}: uses {ast.unparse(node)}")
    return problems


def test_no_private_name_used_across_modules() -> None:
    problems = [p for folder in CHECKED for path in sorted(folder.rglob("*.py")) for p in private_uses(path)]
    assert not problems, "private names used outside their module:\n" + "\n".join(problems)


def test_machine_barrier_is_the_ssh_transports() -> None:
    # machine.py keeps its own copy so that reading the console does not import the SSH client.
    from harness.guest import machine
    from harness.guest.transport import ssh

    assert machine.BARRIER == ssh.BARRIER
