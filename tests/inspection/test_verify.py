"""Read-back: ``verify`` against a real loopback fake Gist whose contacts were edited by hand lists exactly those
users and keys (paged listing, and ``--sample`` one by one through 404s and a 429), ``--repair`` makes the next run
send them the truth, and destinations that cannot be read exit 4; ``adopt`` seeds the snapshot from what Gist
holds so that the first run sends only the real differences. Real CLI, SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_cli import cli
from tests.fakes.gist import FakeGist
from tests.harness import Harness

ENV = {"GIST_API_KEY": "gist-test-key"}


def project(harness: Harness, gist: FakeGist) -> Path:
    body = (
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{gist.url}"\n'
        "max_retries = 2\n" + harness.jsonl_destination() + harness.audience("VIP") + harness.trait("Score")
    )
    return harness.config_file(body)


def run(path: Path, *args: str) -> Any:
    return cli(*args, "--config", str(path), cwd=path.parent, env=ENV)


def posts(gist: FakeGist) -> list[dict[str, Any]]:
    return [json.loads(r["body"]) for r in gist.requests if r.get("method") != "GET" and r["path"] == "/contacts"]


def found(out: Any) -> set[tuple[str, str, str, str, str]]:
    return {
        (d["user_id"], d["computation_key"], json.dumps(d["expected"]), json.dumps(d["actual"]), d["kind"])
        for d in json.loads(out.stdout)
    }


def test_verify_finds_hand_edits_and_repair_sends_the_truth(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {f"u{i}": f"u{i}@x.io" for i in range(1, 7)})
    harness.warehouse.set_trait("Score", {"u1": ("u1@x.io", 3), "u3": ("u3@x.io", 7), "u4": ("u4@x.io", "gold")})
    path = project(harness, gist)
    assert run(path, "run").returncode == 0
    clean = run(path, "verify", "--destination", "gist", "--format", "json")
    assert clean.returncode == 0 and json.loads(clean.stdout) == [], clean.stderr

    # edits by hand in Gist
    gist.contacts["u1"]["custom_properties"]["vip"] = False  # unticked
    del gist.contacts["u2"]  # contact deleted
    del gist.contacts["u3"]["custom_properties"]["score"]  # property cleared
    gist.contacts["u4"]["custom_properties"]["score"] = "silver"  # value retyped
    gist.contacts["u9"] = {"user_id": "u9", "email": "u9@x.io", "custom_properties": {"vip": True}}  # added
    expected = {
        ("u1", "vip", "true", "false", "value differs"),
        ("u2", "vip", "true", "null", "contact missing"),
        ("u3", "score", "7", "null", "key missing"),
        ("u4", "score", '"gold"', '"silver"', "value differs"),
        ("u9", "vip", "null", "true", "unexpected"),
    }
    gist.fail_next(1, 429, headers={"Retry-After": "0"})  # a rate limit while reading: retried as in delivery
    listed = run(path, "verify", "--format", "json")  # every destination: the JSONL file is noted, not read
    assert listed.returncode == 1, listed.stderr
    assert found(listed) == expected
    assert "destination 'file' cannot be read back" in listed.stderr

    sampled = run(path, "verify", "--destination", "gist", "--sample", "50", "--format", "json")
    assert sampled.returncode == 1, sampled.stderr
    assert found(sampled) == expected - {("u9", "vip", "null", "true", "unexpected")}  # not a snapshot user
    assert any("user_id=u2" in r["path"] for r in gist.requests if r.get("method") == "GET")  # a 404, handled

    table = run(path, "verify", "--destination", "gist")
    assert table.returncode == 1 and "value differs" in table.stdout

    repaired = run(path, "verify", "--destination", "gist", "--repair", "--format", "json")
    assert repaired.returncode == 1 and "5 marked for the next run" in repaired.stderr
    before = len(posts(gist))
    assert run(path, "run").returncode == 0
    sent = {(p["user_id"], k): v for p in posts(gist)[before:] for k, v in p["custom_properties"].items()}
    assert sent == {("u1", "vip"): True, ("u2", "vip"): True, ("u3", "score"): 7, ("u4", "score"): "gold"} | {
        ("u9", "vip"): False
    }
    healed = run(path, "verify", "--destination", "gist", "--format", "json")
    assert healed.returncode == 0 and json.loads(healed.stdout) == [], healed.stdout

    unreadable = run(path, "verify", "--destination", "file")
    assert unreadable.returncode == 4 and "cannot be read back" in unreadable.stderr


def test_adopt_seeds_the_snapshot_so_the_first_run_sends_only_differences(harness: Harness, gist: FakeGist) -> None:
    # what Segment Engage left in Gist
    for i in range(1, 5):
        gist.contacts[f"u{i}"] = {
            "user_id": f"u{i}",
            "email": f"u{i}@x.io",
            "custom_properties": {"vip": True, "score": i, "unrelated": "kept"},
        }
    harness.warehouse.set_members("VIP", {f"u{i}": f"u{i}@x.io" for i in (1, 2, 3, 5)})  # u4 left, u5 new
    harness.warehouse.set_trait("Score", {f"u{i}": (f"u{i}@x.io", i) for i in (1, 2, 3)} | {"u4": ("u4@x.io", 40)})
    path = project(harness, gist)
    adopted = run(path, "adopt", "--destination", "gist")
    assert adopted.returncode == 0, adopted.stderr
    assert "read 4 contacts, adopted 8 values" in adopted.stdout
    assert posts(gist) == []
    assert run(path, "run", "--destination", "gist").returncode == 0
    sent = {(p["user_id"], k): v for p in posts(gist) for k, v in p["custom_properties"].items()}
    assert sent == {("u4", "vip"): False, ("u5", "vip"): True, ("u4", "score"): 40}
    assert run(path, "verify", "--destination", "gist").returncode == 0
    story = json.loads(run(path, "user", "u1", "--format", "json").stdout)
    assert [h["status"] for h in story["history"] if h["destination"] == "gist"] == ["adopted", "adopted"]

    refused = run(path, "adopt", "--destination", "file")
    assert refused.returncode == 4 and "cannot be read back" in refused.stderr


@pytest.mark.parametrize("list_values", ["join", "json"])
def test_a_list_value_is_compared_and_adopted_in_the_form_gist_holds_it(list_values: str) -> None:
    """Gist holds a list as `list_values` wrote it: verify compares in that form, adopt reads the list back."""
    from audience_sync.destinations.gist import list_from_property, property_value
    from audience_sync.inspection.verify import _compare
    from audience_sync.values import encode

    wanted = ["grinders", "tea"]
    held = property_value(wanted, list_values)
    assert list_from_property(held, list_values) == wanted
    want = {"cats": encode(wanted)}
    contact = {"user_id": "u1", "custom_properties": {"cats": held}}
    assert list(_compare("gist", "u1", ["cats"], want, contact, list_values)) == []
    edited = {"user_id": "u1", "custom_properties": {"cats": property_value(["tea"], list_values)}}
    (difference,) = _compare("gist", "u1", ["cats"], want, edited, list_values)
    assert difference.kind == "value differs" and difference.expected == wanted
