"""A run's builder computations on the source database: checked once, compiled as of one instant, then streamed
or pushed down like a ``sql`` computation's query.

:meth:`BuilderSource.check` inspects the source (every table and column the computations name) before anything
is staged; :meth:`read_rows` streams a computation's rows as ``(user_id, email, value)`` (the value decoded from
its canonical JSON, for :func:`audience_sync.sources.rows.normalize`); :meth:`plan` gives the pushed-down form
when the source is the state database.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ...errors import SourceError
from .. import pushdown
from ..rows import RawRow
from .compile import SqlText, compile_statement, to_sql
from .definitions import TraitDefinition
from .schema import SourceSchema, inspect_source

if TYPE_CHECKING:
    from ...config import Computation, Config


#: trait forms whose values are integers: their SQL text is canonical on PostgreSQL too
_INTEGER_FORMS = ("count", "unique_count")


def exact_in_sql(comp: Computation) -> bool:
    """Whether ``comp``'s compiled values are canonical JSON on PostgreSQL (audiences, integer traits)."""
    return not isinstance(comp.builder, TraitDefinition) or comp.builder.compute.form in _INTEGER_FORMS


def _reason(exc: SQLAlchemyError) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())[:500]


class BuilderSource:
    """The builder computations of one run, evaluated as of ``as_of`` on ``source``."""

    def __init__(self, config: Config, source: Engine, comps: Sequence[Computation], as_of: dt.datetime) -> None:
        self.config = config
        self.source = source
        self.comps = [c for c in comps if c.builder is not None]
        self.as_of = as_of
        self._schema: SourceSchema | None = None
        self._compiled: dict[str, Any] = {}

    def check(self) -> SourceSchema:
        """Inspect the source once: SourceError (naming computation, table and column) when something is missing."""
        if self._schema is None:
            try:
                with self.source.connect() as conn:
                    self._schema = inspect_source(conn, self.config, self.comps)
                    if conn.dialect.name == "postgresql":
                        self._check_float_digits(conn)
            except SQLAlchemyError as exc:
                raise SourceError(
                    f"builder computations: cannot reach the source database: {_reason(exc)}",
                    computation=self.comps[0].key if self.comps else "",
                ) from None
        return self._schema

    def _check_float_digits(self, conn: Connection) -> None:
        # floats are rendered from PostgreSQL's shortest round-trip text, which needs extra_float_digits >= 1
        digits = int(conn.exec_driver_sql("SHOW extra_float_digits").scalar_one())
        if digits < 1:
            raise SourceError(
                f"the source database sets extra_float_digits = {digits}: builder computations need 1 (the "
                f"default), so that floats keep every digit; reset it for this database or role",
                computation=self.comps[0].key if self.comps else "",
            )

    def statement(self, comp: Computation) -> Any:
        """The compiled statement of ``comp`` (cached)."""
        if comp.key not in self._compiled:
            self._compiled[comp.key] = compile_statement(comp, self.config, self.check(), self.as_of)
        return self._compiled[comp.key]

    def sql(self, comp: Computation) -> SqlText:
        """``comp``'s statement as SQL text for the source's dialect, with its parameters."""
        return to_sql(self.statement(comp), self.check().dialect)

    def scalar(self, comp: Computation, query: Any) -> Any:
        """Run ``query`` (built on ``comp``'s statement) on the source; SourceError naming ``comp`` if it fails."""
        try:
            with self.source.connect() as conn:
                return conn.execute(query).scalar_one()
        except SQLAlchemyError as exc:
            raise SourceError(
                f"{comp.label}: the builder's statement failed: {_reason(exc)}",
                computation=comp.key,
            ) from None

    def read_rows(self, comp: Computation, chunk_size: int) -> Iterator[list[RawRow]]:
        """``comp``'s rows in chunks, streamed from the source; SourceError naming it when the statement fails."""
        statement = self.statement(comp)
        is_trait = comp.computation_class == "trait"
        try:
            with self.source.connect() as conn:
                result = conn.execution_options(stream_results=True, max_row_buffer=chunk_size).execute(statement)
                while chunk := result.fetchmany(chunk_size):
                    yield [(r[0], r[1], json.loads(r[2]) if is_trait and r[2] is not None else None) for r in chunk]
        except SQLAlchemyError as exc:
            raise SourceError(
                f"{comp.label}: the builder's statement failed: {_reason(exc)}",
                computation=comp.key,
            ) from None

    def plan(self, conn: Connection, comp: Computation) -> pushdown.Pushdown | None:
        """``comp`` pushed down into ``conn`` (the state database, which is the source), or None to stream it.

        On PostgreSQL a trait whose values may hold floats is streamed: only Python writes floats canonically
        (see :func:`.properties.pg_float_json`). Audiences and integer traits are pushed down on both backends.
        """
        if conn.dialect.name == "postgresql" and not exact_in_sql(comp):
            return None
        sql = self.sql(comp)
        return pushdown.plan_statement(conn, comp, sql.text, sql.params)
