"""The consensus core is pure: no I/O, no clock, no threads, no global randomness.

import-linter checks the same contract in `make check`; this test keeps it
true even for whoever runs only pytest, and it also catches a call to the
``random`` module's global functions smuggled in through another name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import quorumfs.raft

FORBIDDEN = {
    "asyncio",
    "concurrent",
    "datetime",
    "multiprocessing",
    "os",
    "pathlib",
    "random",
    "secrets",
    "selectors",
    "socket",
    "subprocess",
    "threading",
    "time",
    "uuid",
}
CORE = Path(quorumfs.raft.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Absolute module names imported by ``path`` (relative imports stay in the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_core_imports_nothing_that_does_io_or_reads_a_clock() -> None:
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) >= 8
    for path in modules:
        bad = {name.split(".")[0] for name in _imported_modules(path)} & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_core_imports_nothing_from_the_layers_above() -> None:
    for path in sorted(CORE.glob("*.py")):
        ours = {name for name in _imported_modules(path) if name.split(".")[0] == "quorumfs"}
        outside = {name for name in ours if not name.startswith("quorumfs.raft")}
        assert not outside, f"{path.name} imports {sorted(outside)}"
