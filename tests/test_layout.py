"""The house rules (docs/ARCHITECTURE.md, "The house"), pinned so that a change that breaks one says so here.

Each rule lists its exemptions by name: an exemption that is no longer needed fails the test too, so the lists only
shrink. Imports are read from the syntax tree, those inside functions included.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "audience_sync"
MAX_LINES = 400

#: modules over MAX_LINES, each with why it stays whole for now
LONG_MODULES: dict[str, str] = {}
#: modules outside store/dialect.py that test the dialect's name: the SQL writers for a source's dialect (the
#: builder and the pushdown render different SQL per dialect by design) and the functions SQLAlchemy compiles per
#: dialect; the store and the run ask store/dialect.py's Backend instead
DIALECT_CHECKS = {
    "sources/builder/compile.py",
    "sources/builder/context.py",
    "sources/builder/filters.py",
    "sources/builder/properties.py",
    "sources/builder/schema.py",
    "sources/builder/source.py",
    "sources/builder/traits.py",
    "sources/pushdown.py",
    "store/sqlfuncs.py",
}
_DIALECT_CHECK = re.compile(
    r"""dialect(\.name)?\s*[!=]=|[!=]=\s*["'](sqlite|postgresql)["']|@compiles\(.*["'](sqlite|postgresql)"""
)


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against its package."""
    package = ["audience_sync", *path.relative_to(PACKAGE).parent.parts]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_rich_and_click_are_imported_only_under_cli() -> None:
    offenders = {
        name: sorted(m for m in imported(path) if m.split(".")[0] in ("rich", "click"))
        for name, path in modules()
        if not name.startswith("cli/")
    }
    assert {n: m for n, m in offenders.items() if m} == {}


def test_store_imports_nothing_above_it() -> None:
    found = {}
    for name, path in modules():
        if name.startswith("store/"):
            up = {
                m
                for m in imported(path)
                if m.startswith(("audience_sync.sources", "audience_sync.destinations", "audience_sync.run"))
                and not any(m.startswith(other + ".") for other in imported(path) if other != m)
            }
            if up:
                found[name] = up
    assert found == {}


#: what config/ may import from the floors above it: the registry (the destination types are config's union) and
#: the builder's definition models (a ``definition`` table in the file is validated by them)
CONFIG_IMPORTS_UP = ("audience_sync.destinations.registry", "audience_sync.sources.builder.definitions")


def test_config_imports_only_the_destination_registry_from_above() -> None:
    for name, path in modules():
        if name.startswith("config/"):
            above = {
                m
                for m in imported(path)
                if m.startswith(
                    ("audience_sync.sources", "audience_sync.store", "audience_sync.run", "audience_sync.destinations")
                )
                and not m.startswith(CONFIG_IMPORTS_UP)
                and m != "audience_sync.sources.builder"  # `from ..sources.builder import definitions`
            }
            assert not above, f"{name} imports {sorted(above)}"
    registry = imported(PACKAGE / "destinations" / "registry.py")
    assert {
        m for m in registry if m.startswith("audience_sync.") and m.split(".")[1] in ("store", "run", "ops")
    } == set()


def test_modules_stay_under_about_400_lines() -> None:
    long = {name for name, path in modules() if len(path.read_text().splitlines()) > MAX_LINES}
    assert long == set(LONG_MODULES)


def test_dialect_checks_stay_where_they_are() -> None:
    found = {name for name, path in modules() if name != "store/dialect.py" and _DIALECT_CHECK.search(path.read_text())}
    assert found <= DIALECT_CHECKS, f"a new dialect check outside store/dialect.py: {sorted(found - DIALECT_CHECKS)}"
    assert found >= DIALECT_CHECKS, f"no longer needed: {sorted(DIALECT_CHECKS - found)}"


_STATEMENTS = ("select", "insert", "update", "delete", "func", "text", "literal_column")


def test_only_the_store_and_the_sources_write_sql() -> None:
    """Every statement on the state tables lives in store/ (and a source's queries in sources/): the run, the
    inspection, the command layer and the shells use the store's functions; they may name an Engine or a Row,
    not build or execute a statement."""
    above = ("run/", "inspection/", "ops/", "cli/", "commands.py")  # demo.py builds the demo's warehouse, a source
    found = {
        name: sorted(m for m in imported(path) if m.startswith("sqlalchemy.") and m.split(".")[-1] in _STATEMENTS)
        + (["execute"] if re.search(r"\.(exec_driver_sql|execute)\(", path.read_text()) else [])
        for name, path in modules()
        if name.startswith(above)
    }
    assert {n: m for n, m in found.items() if m} == {}


#: modules that still take ``table_of(...)`` themselves rather than the handles exported by store/schema.py
TABLE_OF_USERS: set[str] = set()


def test_table_handles_are_exported_once_from_the_schema() -> None:
    found = {name for name, path in modules() if name != "store/schema.py" and "table_of(" in path.read_text()}
    assert found == TABLE_OF_USERS


def test_the_version_is_written_once_and_the_package_is_typed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["hatch"]["version"]["path"] == "audience_sync/__init__.py"
    assert (PACKAGE / "py.typed").exists()
