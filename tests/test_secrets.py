"""Secrets never leave through text that comes from outside: a destination echoing our request in a 4xx body, a
driver quoting a URL's query-string password, a header secret that cannot be sent. Nothing stored (``diffs.error``,
``sync_runs.error``), logged or printed (``run``, ``--json``, ``diff``, ``runs``, logs at debug, text or JSON)
shows any of them, in any form they come back in."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from audience_sync.redact import forms, remember, scrub, url_secrets
from audience_sync.store.engine import redact_url
from tests.fakes.echo import EchoServer
from tests.harness import Harness
from tests.processes import run_cli

SECRETS = {
    "GIST_API_KEY": 'gk+sec/ret=Key&"1\\z',
    "SEGMENT_WRITE_KEY": "sw+write/key=with&specials",
    "HOOK_TOKEN": "Bearer hk+token/abc=def",
    "HOOK_SECRET": "signing+secret/xyz",
}


def encodings(secret: str) -> set[str]:
    """The forms a secret may come back in, worked out here independently of the code under test."""
    found = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    for raw in (secret.encode(), secret.encode() + b":"):
        found |= {base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("=")}
    return found


def assert_no_secret(dump: str, secrets: list[str]) -> None:
    for secret in secrets:
        for form in encodings(secret):
            assert form not in dump, f"{form!r} (a form of a secret) leaked"


def cli(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--config", "c.toml", cwd=project, env=env if env is not None else SECRETS, timeout=300)


def test_a_destination_echoing_our_request_leaks_no_secret(harness: Harness, state_url: str) -> None:
    if state_url.startswith("postgresql"):  # a password in the query string too (trust auth ignores it)
        state_url = make_url(state_url).update_query_dict({"password": "pg-query-password"}).render_as_string(False)
        harness.state_url = state_url
    echo = EchoServer(status=400).start()
    try:
        harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
        harness.config_file(
            f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{echo.url}"\n'
            f'[[destinations]]\nname = "segment"\ntype = "segment"\nwrite_key_env = "SEGMENT_WRITE_KEY"\n'
            f'endpoint = "{echo.url}"\n'
            f'[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "{echo.url}/hook"\n'
            f'headers_env = {{ "X-Api-Token" = "HOOK_TOKEN" }}\nsigning_secret_env = "HOOK_SECRET"\n'
            + harness.audience("VIP"),
            name="c.toml",
        )
        outputs = []
        for args in (
            ["run", "--json", "--log-level", "debug"],
            ["run", "--log-level", "debug", "--log-format", "json"],
            ["run"],
            ["diff", "--format", "json"],
            ["diff"],
            ["runs", "--format", "json"],
        ):
            proc = cli(harness.tmp_path, *args)
            assert "Traceback" not in proc.stderr, proc.stderr
            outputs += [proc.stdout, proc.stderr]
        assert echo.requests >= 3
    finally:
        echo.stop()
    diff = json.loads(cli(harness.tmp_path, "diff", "--format", "json").stdout)
    assert {r["status"] for r in diff} == {"failed"} and all("request rejected" in r["error"] for r in diff)
    assert any("***" in r["error"] for r in diff)  # the echo was kept, with our secrets masked
    engine = create_engine(state_url)
    with engine.connect() as conn:
        stored = [*conn.execute(text("SELECT error FROM diffs")).scalars()]
        stored += [*conn.execute(text("SELECT error FROM sync_runs")).scalars()]
    engine.dispose()
    dump = "\n".join(outputs) + "\n".join(e for e in stored if e)
    assert_no_secret(dump, [*SECRETS.values(), "hk+token/abc=def", "pg-query-password"])


@pytest.mark.parametrize(
    ("which", "url"),
    [
        ("state", "postgresql+psycopg://reader@127.0.0.1:1/db?password=qs-hunter2&sslpassword=ssl-hunter3"),
        ("source", "postgresql+psycopg://reader:pw-hunter4@127.0.0.1:1/db?sslpassword=ssl-hunter5"),
    ],
)
def test_a_query_string_password_is_never_printed(tmp_path: Path, which: str, url: str) -> None:
    state = url if which == "state" else f"sqlite:///{tmp_path / 'state.db'}"
    source = url if which == "source" else f"sqlite:///{tmp_path / 'w.db'}"
    (tmp_path / "c.toml").write_text(
        f'[state]\nurl = "{state}"\n[source]\nurl = "{source}"\n'
        '[[destinations]]\nname = "file"\ntype = "jsonl"\n'
        '[[audiences]]\nname = "VIP"\nsql = "SELECT 1 AS user_id"\n'
    )
    outputs = []
    for args in (["run", "--log-level", "debug"], ["run", "--json", "--log-format", "json"], ["runs"]):
        proc = cli(tmp_path, *args, env={})
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode == (0 if args == ["runs"] and which == "source" else 1), proc.stderr
        outputs += [proc.stdout, proc.stderr]
    assert "127.0.0.1" in outputs[1]  # the database is named, its secrets masked
    assert_no_secret("\n".join(outputs), ["qs-hunter2", "ssl-hunter3", "pw-hunter4", "ssl-hunter5"])


@pytest.mark.parametrize(
    ("destination", "variable"),
    [
        ('type = "gist"\napi_key_env = "KEY"\n', "KEY"),
        ('type = "segment"\nwrite_key_env = "KEY"\n', "KEY"),
        ('type = "webhook"\nurl = "http://127.0.0.1:9/h"\nheaders_env = { "X-Token" = "KEY" }\n', "KEY"),
    ],
)
def test_a_header_secret_that_is_not_ascii_is_a_config_error(tmp_path: Path, destination: str, variable: str) -> None:
    (tmp_path / "c.toml").write_text(
        f'[state]\nurl = "sqlite:///{tmp_path / "state.db"}"\n'
        f'[[destinations]]\nname = "d"\n{destination}'
        '[[audiences]]\nname = "VIP"\nsql = "SELECT 1 AS user_id"\n'
    )
    for value in ("clé-secrète-123", "line\nbreak-123"):
        proc = cli(tmp_path, "run", env={variable: value})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"environment variable {variable}" in proc.stderr and "HTTP header" in proc.stderr
        assert value not in proc.stderr and "secrète" not in proc.stderr
    assert not (tmp_path / "state.db").exists()  # stopped before anything was opened or sent


def test_scrub_finds_every_form_and_leaves_other_text_alone() -> None:
    secret = "Zx9+/s3cr=t&Key"
    remember([secret, "abc"])  # too short to tell from text: not searched for
    lower_hex = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(secret, safe=""))
    for form in encodings(secret) | {lower_hex}:
        assert scrub(f"before {form} after") == "before *** after", form
    assert scrub("abc and Basic " + base64.b64encode(f"{secret}:".encode()).decode()) == "abc and Basic ***"
    assert scrub(None) is None and scrub("nothing here") == "nothing here"
    assert forms(secret) >= {secret, quote(secret, safe="")}


def test_urls_give_up_their_secrets_and_are_redacted() -> None:
    url = (
        "postgresql+psycopg://u:p%40ss-word@h:5432/db?password=q-secret&sslpassword=s-secret&options=-csearch_path%3Dx"
    )
    assert {"p%40ss-word", "p@ss-word", "q-secret", "s-secret"} <= set(url_secrets(url))
    shown = redact_url(url)
    assert "ss-word" not in shown and "q-secret" not in shown and "s-secret" not in shown
    assert shown.startswith("postgresql+psycopg://u:***@h:5432/db?") and "password=***" in shown
    assert "options=-csearch_path" in shown
    hook = "https://hooks.example.test/services/T0/B0/abcdef"
    assert {hook, "/services/T0/B0/abcdef"} <= set(url_secrets(hook, whole=True))
