"""The package keeps the shape ARCHITECTURE.md draws: rooms, imports pointing down, small modules.

Read from the source alone (no import runs): every `import launcher...` and
`from launcher... import` statement, wherever it stands in a module (lazy and
TYPE_CHECKING imports count: they are dependencies too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "launcher"
MAX_LINES = 700  # the hard limit; ~600 is the aim
MAX_ENTRIES = 16  # files and folders directly in launcher/


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(path: Path) -> Iterator[str]:
    """The launcher modules `path` imports, resolved to modules (not names in them)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "launcher":
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    yield name if name in MODULES else node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "launcher":
                    yield alias.name


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges[name] = {target for target in imported(path) if target != name}
    return edges


def cycle_in(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def room(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_module_imports_itself_through_others() -> None:
    """No import cycle between modules: each can be read and tested from the bottom up."""
    assert cycle_in(graph()) is None


def test_no_room_imports_itself_through_others() -> None:
    """Rooms form layers: no cycle between folders either (`run` → `scale` → `run`, say)."""
    rooms: dict[str, set[str]] = {}
    for source, targets in graph().items():
        rooms.setdefault(room(source), set()).update(
            room(target) for target in targets if room(target) != room(source)
        )
    assert cycle_in(rooms) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_fits_in_one_head(name: str) -> None:
    """No module over 700 lines (the aim is ~600)."""
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


def test_the_package_reads_as_its_rooms() -> None:
    """`ls launcher/` shows at most 16 entries: the rooms and the shared vocabulary."""
    entries = [entry.name for entry in PACKAGE.iterdir() if entry.name != "__pycache__"]
    assert len(entries) <= MAX_ENTRIES, sorted(entries)


def test_the_cli_is_imported_by_nobody_but_the_entry_point() -> None:
    """Commands are the top of the stack: no room below depends on them."""
    for source, targets in graph().items():
        if room(source) not in ("cli", "__main__"):
            assert not [t for t in targets if room(t) == "cli"], source


def _enum_classes() -> set[str]:
    """The names of the package's enum classes (bases named *Enum or Flag)."""
    names = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(base).split(".")[-1] in {"Enum", "StrEnum", "IntEnum", "Flag"}
                for base in node.bases
            ):
                names.add(node.name)
    return names


ENUMS = _enum_classes()


def _module_level_enum_copies(tree: ast.Module) -> list[str]:
    """Module-level `NAME = Enum.MEMBER` assignments (an enum member copied to a global)."""
    return [
        ast.unparse(node)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Attribute)
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id in ENUMS
    ]


def _tricks(path: Path) -> set[str]:
    """Which measured speed tricks (benchmarks/RESULTS.md) the module at `path` plays."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    if _module_level_enum_copies(tree):
        found.add("enum member as a global")
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "sys.modules":
            if isinstance(getattr(node, "ctx", None), ast.Store):
                found.add("sys.modules entry replaced")
        elif isinstance(node, ast.Attribute) and ast.unparse(node) in {
            "gc.set_threshold",
            "gc.freeze",
        }:
            found.add("collector tuning")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
            if {ast.unparse(node.left), ast.unparse(node.right)} & {"54", "92", "0x36", "0x5C"}:
                found.add("hand-rolled HMAC pads")
        elif isinstance(node, ast.Attribute) and ast.unparse(node) == "tuple.__new__":
            found.add("tuple.__new__ for named tuples")
    return found


# Each trick, the one module allowed to play it, and the test that shows it equivalent to
# the plain form it replaces.
TRICK_HOMES = {
    "enum member as a global": "launcher.flow.policy",  # tests/test_models.py
    "sys.modules entry replaced": "launcher.logs",  # tests/test_logs.py
    "collector tuning": "launcher.run.runner",  # (no result changes: only when it collects)
    "hand-rolled HMAC pads": "launcher.dlf.signing",  # tests/dlf/test_signing.py
    "tuple.__new__ for named tuples": "launcher.models",  # tests/test_models.py
}


def test_each_speed_trick_stays_in_its_one_module() -> None:
    """A micro-optimisation that costs clarity lives in one module, next to its reason."""
    assert {"Verdict", "Failure", "Next"} <= ENUMS
    homes: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        for trick in _tricks(path):
            homes.setdefault(trick, []).append(name)
    assert homes == {trick: [home] for trick, home in TRICK_HOMES.items()}
