"""Shared by the builder's tests: a generated source in one storage layout, and the compiled-vs-reference helpers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from audience_sync.config import Config, parse_config
from audience_sync.sources.builder import BuilderSource
from audience_sync.sources.builder.definitions import AudienceDefinition, TraitDefinition
from audience_sync.sources.builder.source import exact_in_sql
from audience_sync.store.engine import create_state_engine
from audience_sync.values import encode
from tests.builder_data import AS_OF, all_layouts, events_table, generate, load_pg, load_sqlite, read_back
from tests.builder_reference import Reference

#: (backend, layout) parameters for a module-scoped ``source`` fixture; PostgreSQL ones carry the marker
LAYOUTS = [pytest.param(p, marks=[pytest.mark.postgres] if p[0] == "postgres" else []) for p in all_layouts()]


def layout_id(param: tuple[str, str]) -> str:
    return "-".join(param)


@dataclass
class Source:
    backend: str
    layout: str
    url: str
    engine: Engine
    reference_data: tuple[Any, Any]

    def config(self, body: str) -> Config:
        head = f'[state]\nurl = "{self.url}"\n' + events_table(self.layout)
        return parse_config(head + '[[destinations]]\nname = "f"\ntype = "jsonl"\n' + body, environ={})

    def reference(self, config: Config) -> Reference:
        profiles, events = self.reference_data
        audiences = {c.key: c.builder for c in config.computations if isinstance(c.builder, AudienceDefinition)}
        sqlite = self.backend == "sqlite"
        return Reference(
            events,
            profiles,
            audiences,
            AS_OF,
            event_ints_are_booleans=sqlite and self.layout == "columns",
            profile_ints_are_booleans=sqlite,
        )


def open_source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """The generated log loaded in ``request.param``'s (backend, layout); for a module-scoped fixture."""
    backend, layout = request.param
    profiles, events = generate()
    admin: Engine | None = None
    schema = f"as_builder_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("builder") / "source.db"
        load_sqlite(str(path), layout, profiles, events)
        url = f"sqlite:///{path}"
    else:
        server = request.getfixturevalue("pg_server")
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(server).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
        load_pg(url, layout, profiles, events)
    engine = create_state_engine(url)
    try:
        yield Source(backend, layout, url, engine, read_back(url, layout))
    finally:
        engine.dispose()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


def compiled_rows(src: Source, config: Config, key: str) -> list[tuple[Any, ...]]:
    """The statement's rows, run as the pushdown runs it (SQL text and bound parameters)."""
    comp = config.computation(key)
    builder = BuilderSource(config, src.engine, [comp], AS_OF)
    sql = builder.sql(comp)
    with src.engine.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql(sql.text, sql.params)]
    streamed = [row for chunk in builder.read_rows(comp, 7) for row in chunk]
    decoded = [(r[0], r[1], json.loads(r[2]) if len(r) > 2 and r[2] is not None else None) for r in rows]
    assert sorted(map(repr, streamed)) == sorted(map(repr, decoded)), "streamed rows differ from the statement's"
    return rows


def members(src: Source, body: str, key: str = "under_test") -> tuple[set[str], set[str]]:
    """(compiled members, reference members) of the audience ``key`` defined in ``body``."""
    config = src.config(body)
    rows = compiled_rows(src, config, key)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), "a member is listed twice"
    definition = config.computation(key).builder
    assert isinstance(definition, AudienceDefinition)
    return set(ids), src.reference(config).members(definition.condition)


def trait_values(src: Source, body: str, key: str = "under_test") -> tuple[dict[str, str], dict[str, str]]:
    """(compiled values, reference values) of trait ``key``, both as canonical JSON text."""
    config = src.config(body)
    comp = config.computation(key)
    rows = compiled_rows(src, config, key)
    got: dict[str, str] = {}
    for user_id, email, value in rows:
        canonical = encode(json.loads(value))
        assert canonical is not None
        if src.backend == "sqlite" or exact_in_sql(comp):
            assert value == canonical, f"{user_id}: SQL wrote {value!r}, canonical JSON is {canonical!r}"
        got[user_id] = canonical
        profile = next(p for p in src.reference_data[0] if p.id == user_id)
        assert email == profile.email
    definition = comp.builder
    assert isinstance(definition, TraitDefinition)
    expected = {u: encode(v) for u, v in src.reference(config).trait(definition.compute).items()}
    return got, {u: v for u, v in expected.items() if v is not None}


def audience(condition: str) -> str:
    return f'[[audiences]]\nname = "Under Test"\ncondition = {condition}\n'


def trait(compute: str) -> str:
    return f'[[computed_traits]]\nname = "Under Test"\ncompute = {compute}\n'
