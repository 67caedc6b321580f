"""The catalog's boundary: every statement on the catalog file is a named method of ``Catalog`` (its modules
are store/catalog*.py), and no code outside them asks which catalog schema it reads."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "crossgap_index"
# The inversion cache is its own SQLite file (cache.sqlite), not the catalog.
OWN_DATABASES = {"store/cache.py"}


@functools.cache  # parsed once for both tests
def _outside_the_catalog() -> list[tuple[str, ast.AST]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name.startswith("store/catalog") or name in OWN_DATABASES:
            continue
        found += [(name, node) for node in ast.walk(ast.parse(path.read_text(), name))]
    return found


def test_no_sql_statement_runs_outside_the_catalog():
    calls = [
        f"{name}:{node.lineno}"
        for name, node in _outside_the_catalog()
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("execute", "executemany", "executescript")
    ]
    assert calls == []


def test_no_code_outside_the_catalog_reaches_its_connection_or_asks_its_schema():
    uses = [
        f"{name}:{node.lineno}: .{node.attr}"
        for name, node in _outside_the_catalog()
        if isinstance(node, ast.Attribute) and node.attr in ("conn", "legacy", "_layout")
    ]
    assert uses == []
