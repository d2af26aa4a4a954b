"""The scale benchmark at 10k memberships: keeps benchmarks/scale.py and the bulk code paths working.

Not a timing test: ``--smoke`` only checks that each run succeeded and sent what the bare-SQL baseline sent.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from tests.harness import PG_URL

pytestmark = pytest.mark.slow  # three runs over 10k memberships per engine

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "scale.py"


def _scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _check(rows: list[dict[str, object]]) -> None:
    assert [r["phase"] for r in rows] == ["initial", "no change", "5 % churn"]
    initial, unchanged, churn = (int(str(r["changes"])) for r in rows)
    assert initial > 9_000 and unchanged == 0 and 0 < churn < initial // 10


def _pg_args() -> list[str]:
    """A schema of its own on the test server (and, for ``--source postgres-db``, a database ``<schema>_source``)."""
    url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    return ["--pg-url", url, "--schema", f"as_bench_{uuid.uuid4().hex[:12]}"]


@pytest.mark.parametrize(
    "source", ["state", "sqlite-file", "duckdb", pytest.param("postgres-db", marks=pytest.mark.postgres)]
)
def test_scale_benchmark_sqlite(tmp_path: Path, source: str, request: pytest.FixtureRequest) -> None:
    args = ["--engine", "sqlite", "--source", source, "--memberships", "10000", "--smoke"]
    if source == "postgres-db":
        request.getfixturevalue("pg_server")
        args += _pg_args()
    _check(_scale().main([*args, "--workdir", str(tmp_path)]))


@pytest.mark.postgres
@pytest.mark.parametrize("source", ["state", "duckdb", "postgres-db"])
def test_scale_benchmark_postgres(tmp_path: Path, pg_server: str, source: str) -> None:
    args = ["--engine", "postgresql", "--source", source, "--memberships", "10000", "--smoke"]
    _check(_scale().main([*args, "--workdir", str(tmp_path), *_pg_args()]))
