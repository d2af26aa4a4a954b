"""The bundled demo: a small generated shop in SQLite (users, orders, a ``tracks`` event log in Segment's
warehouse layout, a newsletter CSV) and a clock to move it.

``build_shop`` creates the warehouse as of day 0; ``advance_day`` moves the shop's clock one day and adds
that day's orders, events and sign-ups, so that the audiences in ``config/audience_sync.toml`` see real churn.
Every order is also an ``Order Completed`` event; ``Product Viewed`` events come on their own. Builder
computations are evaluated at the end of the shop's day (:func:`shop_instant`). Everything is seeded: the
same calls give the same shop.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import sqlite3
from pathlib import Path

START = dt.date(2026, 1, 1)
USERS = 300
COUNTRIES = ("FR", "DE", "US", "GB", "ES", "NL")
CATEGORIES = ("coffee", "tea", "mugs", "grinders", "gift cards")

SCHEMA = """
CREATE TABLE clock (today TEXT NOT NULL);
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, name TEXT, country TEXT, created_at TEXT);
CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),
                     amount REAL NOT NULL, category TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX ix_orders_user ON orders(user_id);
CREATE TABLE tracks (user_id INTEGER, event TEXT NOT NULL, timestamp TEXT NOT NULL, properties TEXT);
CREATE INDEX ix_tracks_event ON tracks(event, timestamp);
"""


def _orders_for_day(rng: random.Random, day: dt.date, count: int, first_id: int) -> list[tuple[object, ...]]:
    return [
        (
            first_id + i,
            rng.randint(1, USERS),
            round(rng.lognormvariate(3.6, 0.8), 2),
            rng.choice(CATEGORIES),
            day.isoformat(),
        )
        for i in range(count)
    ]


def _events_for_day(
    rng: random.Random, day: dt.date, orders: list[tuple[object, ...]]
) -> list[tuple[object, str, str, str]]:
    """The day's ``tracks`` rows: an ``Order Completed`` per order, and some ``Product Viewed``."""

    def at() -> str:
        return f"{day.isoformat()} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"

    rows = [
        (user, "Order Completed", at(), json.dumps({"order_id": oid, "revenue": amount, "category": category}))
        for oid, user, amount, category, _ in orders
    ]
    for _ in range(rng.randint(30, 60)):
        rows.append((rng.randint(1, USERS), "Product Viewed", at(), json.dumps({"category": rng.choice(CATEGORIES)})))
    return rows


def build_shop(path: Path, newsletter_csv: Path, *, seed: int = 7) -> None:
    """Create the warehouse at ``path`` (replacing it) with 60 days of history up to day 0, and the CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    rng = random.Random(seed)
    events_rng = random.Random(seed + 1)  # its own draws: the orders stay what they were before events existed
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        db.execute("INSERT INTO clock VALUES (?)", (START.isoformat(),))
        users = [
            (
                i,
                None if i % 17 == 0 else f"user{i}@example.com",
                f"User {i}",
                rng.choice(COUNTRIES),
                (START - dt.timedelta(days=rng.randint(60, 400))).isoformat(),
            )
            for i in range(1, USERS + 1)
        ]
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", users)
        order_id = 1
        for back in range(60, -1, -1):
            day_orders = _orders_for_day(rng, START - dt.timedelta(days=back), rng.randint(10, 20), order_id)
            db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", day_orders)
            events = _events_for_day(events_rng, START - dt.timedelta(days=back), day_orders)
            db.executemany("INSERT INTO tracks VALUES (?, ?, ?, ?)", events)
            order_id += len(day_orders)
    write_newsletter(newsletter_csv, rng.sample(range(1, USERS + 1), 40))


def write_newsletter(path: Path, user_ids: list[int]) -> None:
    """Write the newsletter subscribers file (``user_id,email``) the demo's file-based audience reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "email"])
        for uid in sorted(user_ids):
            writer.writerow([uid, f"user{uid}@example.com"])


def advance_day(path: Path, newsletter_csv: Path) -> dt.date:
    """Move the shop one day forward: new orders, a few newsletter sign-ups and opt-outs. Returns the new day."""
    with sqlite3.connect(path) as db:
        today = dt.date.fromisoformat(db.execute("SELECT today FROM clock").fetchone()[0]) + dt.timedelta(days=1)
        rng = random.Random(today.toordinal())
        db.execute("UPDATE clock SET today = ?", (today.isoformat(),))
        next_id = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM orders").fetchone()[0]
        day_orders = _orders_for_day(rng, today, rng.randint(6, 14), next_id)
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", day_orders)
        events = _events_for_day(random.Random(-today.toordinal()), today, day_orders)
        db.executemany("INSERT INTO tracks VALUES (?, ?, ?, ?)", events)
    with newsletter_csv.open(encoding="utf-8") as f:
        subscribers = {int(row["user_id"]) for row in csv.DictReader(f)}
    leaving = set(rng.sample(sorted(subscribers), 2)) if len(subscribers) > 2 else set()
    joining = set(rng.sample(range(1, USERS + 1), 3))
    write_newsletter(newsletter_csv, sorted((subscribers - leaving) | joining))
    return today


def shop_instant(path: Path) -> dt.datetime:
    """The end of the shop's current day (UTC): the instant the demo evaluates builder computations at."""
    return dt.datetime.combine(shop_day(path), dt.time(23, 59, 59), tzinfo=dt.UTC)


def shop_day(path: Path) -> dt.date:
    """The shop's current day."""
    with sqlite3.connect(path) as db:
        return dt.date.fromisoformat(db.execute("SELECT today FROM clock").fetchone()[0])
