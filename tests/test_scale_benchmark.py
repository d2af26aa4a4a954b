"""The scale benchmark at 2,000 memberships: keeps benchmarks/scale.py and the bulk code paths working.

Its commands are forked from the tests' fork server (``tests/processes.py``) rather than started as fresh
interpreters: the same process and output, without a second of start-up per phase.

Not a timing test: ``--smoke`` only checks that each run succeeded and sent what the bare-SQL baseline sent.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.harness import PG_URL
from tests.processes import run_cli

pytestmark = pytest.mark.slow  # three runs per source and engine

#: enough for every phase to send something (the churn touches one membership in 40) in a single chunk
MEMBERSHIPS = 2_000

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "scale.py"


def _forked_run(
    config: Path,
    cwd: Path,
    profile: Path | None = None,
    log: list[str] | None = None,
    io: dict[str, float] | None = None,
    statements: Path | None = None,
) -> tuple[float, float, dict[str, Any]]:
    """The benchmark's ``timed_run``, its command forked from the tests' fork server: the same ``audience-sync run
    --json`` process, without an interpreter's start-up and imports per phase (nothing here is timed, nor
    counted: the runs that use ``--io`` or ``--statements`` are not forked)."""
    assert profile is None and io is None and statements is None
    args = ["run", "--json", "--config", str(config)] + (["--log-level", "info"] if log is not None else [])
    done = run_cli(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    if log is not None:
        log.extend(done.stderr.splitlines())
    return 0.0, 0.0, json.loads(done.stdout)


def _scale(forked: bool = True) -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    if forked:
        module.timed_run = _forked_run  # type: ignore[attr-defined]
    return module


def _check(rows: list[dict[str, object]], skip_unchanged: bool) -> None:
    """Every phase run, and what each sent. ``skip_unchanged``: no no-change phase (``--smoke`` has checked that
    the churn's run sent exactly the baseline's changes, so nothing unchanged)."""
    phases = ["initial", "5 % churn"] if skip_unchanged else ["initial", "no change", "5 % churn"]
    assert [r["phase"] for r in rows] == phases
    sent = {str(r["phase"]): int(str(r["changes"])) for r in rows}
    initial, churn = sent["initial"], sent["5 % churn"]
    assert initial > MEMBERSHIPS * 9 // 10 and sent.get("no change", 0) == 0 and 0 < churn < initial // 10


def _phases(source: str) -> list[str]:
    """Each engine runs every phase on its own tables; the other sources run the initial and the churn's."""
    return [] if source == "state" else ["--skip-unchanged"]


def _pg_args() -> list[str]:
    """A schema of its own on the test server (and, for ``--source postgres-db``, a database ``<schema>_source``)."""
    url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    return ["--pg-url", url, "--schema", f"as_bench_{uuid.uuid4().hex[:12]}"]


@pytest.mark.parametrize(
    "source", ["state", "sqlite-file", "duckdb", pytest.param("postgres-db", marks=pytest.mark.postgres)]
)
def test_scale_benchmark_sqlite(tmp_path: Path, source: str, request: pytest.FixtureRequest) -> None:
    args = ["--engine", "sqlite", "--source", source, "--memberships", str(MEMBERSHIPS), "--smoke", *_phases(source)]
    if source == "postgres-db":
        request.getfixturevalue("pg_server")
        args += _pg_args()
    # one source runs its commands as the benchmark does, fresh interpreters timed by a wrapper process (under the
    # per-statement timing aid), and counts what each side wrote and read
    real = source == "sqlite-file"
    options = ["--io", "--statements"] if real else []
    rows = _scale(forked=not real).main([*args, "--workdir", str(tmp_path), *options])
    _check(rows, source != "state")
    if real:  # the initial phase writes every change as a line on both sides, and ours reads its own modules
        initial = rows[0]
        assert float(str(initial["ours_written_mb"])) > 0 and float(str(initial["baseline_written_mb"])) > 0
        assert float(str(initial["ours_read_mb"])) > float(str(initial["baseline_read_mb"])) >= 0
        for phase in ("initial", "5_pct_churn"):
            table = (tmp_path / f"statements-{phase}.md").read_text()
            assert table.startswith("# the command:") and "`INSERT INTO diffs" in table and "`COMMIT`" in table


@pytest.mark.parametrize(
    ("options", "needs"), [(["--engine", "postgresql", "--io"], "--io"), (["--statements"], "--workdir")]
)
def test_scale_benchmark_refuses_options_it_cannot_honour(
    options: list[str], needs: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _scale().main(options)
    assert exc.value.code == 2 and needs in capsys.readouterr().err


@pytest.mark.postgres
@pytest.mark.parametrize("source", ["state", "duckdb", "postgres-db"])
def test_scale_benchmark_postgres(tmp_path: Path, pg_server: str, source: str) -> None:
    args = [
        "--engine",
        "postgresql",
        "--source",
        source,
        "--memberships",
        str(MEMBERSHIPS),
        "--smoke",
        *_phases(source),
    ]
    _check(_scale().main([*args, "--workdir", str(tmp_path), *_pg_args()]), source != "state")
