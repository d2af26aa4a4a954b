"""Computed-trait forms as one statement: ``SELECT user_id, email, value`` with ``value`` canonical JSON text.

The qualifying events (with, for property forms, the property's value, its canonical JSON and its sort keys)
form one subquery ``q``; each form aggregates ``q`` per user; the result is joined to the profiles, so values
belong to profiles only and the email is the profile's. A user with no qualifying event (for property forms:
none whose property holds a number, text or boolean) has no row, hence no value.

Numbers, the same on both backends and in Python:
- ``count``, ``unique_count``: integers;
- ``sum``, ``min``, ``max``: an integer when every counted value is one, else a float;
- ``sum`` adds exactly (each number as its decimal text: ``19.99`` is 19.99, not the double nearest to it) and
  rounds once, so the order the database adds in never changes the result; ``avg`` is that sum as a double
  divided by the count.
SQLite adds through ``as_exact_sum`` (a Python aggregate registered on every connection audience-sync opens).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Text, case, cast, distinct, func, select
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION, aggregate_order_by
from sqlalchemy.sql import sqltypes
from sqlalchemy.sql.elements import ColumnElement

from .condition_models import NUMERIC_FORMS, Compute
from .context import Context
from .properties import cat, const, float_json, number_const, sort_keys

_KEYS = ("k_rank", "k_bool", "k_number", "k_float", "k_text")


def _pg_integer_text(x: ColumnElement[Any]) -> ColumnElement[Any]:
    return cast(func.trunc(x), Text)  # numeric 3.00 -> '3', as an integral Decimal encodes


def _numeric(ctx: Context, q: Any, form: str) -> ColumnElement[Any]:
    """The value of a sum / avg / min / max over ``q``'s ``number``, ``exact`` and ``integral`` columns."""
    sqlite = ctx.dialect == "sqlite"
    if form in ("sum", "avg"):
        total = func.as_exact_sum(q.c.exact) if sqlite else func.sum(q.c.exact)
        if form == "avg":
            return float_json(ctx.dialect, cast(total, sqltypes.REAL if sqlite else DOUBLE_PRECISION) / func.count())
        if sqlite:  # as_exact_sum returns an integer exactly when every value was one
            return case((func.typeof(total) == const("integer"), cast(total, Text)), else_=func.as_json_value(total))
        return case((func.bool_and(q.c.integral), _pg_integer_text(total)), else_=float_json(ctx.dialect, total))
    extreme = (func.min if form == "min" else func.max)(q.c.number)
    if sqlite:
        every_integer = func.min(case((q.c.integral, number_const(1)), else_=number_const(0))) == number_const(1)
        return case((every_integer, cast(extreme, Text)), else_=float_json(ctx.dialect, extreme))
    return case((func.bool_and(q.c.integral), _pg_integer_text(extreme)), else_=float_json(ctx.dialect, extreme))


def _ranked_first(q: Any, order_by: list[Any]) -> Any:
    """Per user, the ``value`` of the first row of ``q`` in ``order_by``."""
    ranked = select(
        q.c.uid, q.c.value, func.row_number().over(partition_by=q.c.uid, order_by=order_by).label("rn")
    ).subquery("ranked")
    return select(ranked.c.uid, ranked.c.value).where(ranked.c.rn == number_const(1))


def _unique_list(ctx: Context, q: Any) -> Any:
    d = select(q.c.uid, q.c.value, *(q.c[k] for k in _KEYS)).distinct().subquery("d")
    order = [d.c[k] for k in _KEYS]
    if ctx.dialect == "postgresql":
        items = func.string_agg(d.c.value, aggregate_order_by(const(","), *order))
        return select(d.c.uid, cat(const("["), items, const("]")).label("value")).group_by(d.c.uid)
    listed = select(
        d.c.uid,
        func.group_concat(d.c.value, const(","))
        .over(partition_by=d.c.uid, order_by=order, rows=(None, None))
        .label("items"),
        func.row_number().over(partition_by=d.c.uid, order_by=order).label("rn"),
    ).subquery("listed")
    return select(listed.c.uid, cat(const("["), listed.c["items"], const("]")).label("value")).where(
        listed.c.rn == number_const(1)
    )


def _per_user(ctx: Context, compute: Compute) -> Any:
    """``SELECT uid, value`` per user with qualifying events: the form's aggregate."""
    e = ctx.events()
    where = ctx.qualifying(e, compute.events)
    user = ctx.event_user(e)
    if compute.form == "count":
        return select(user.label("uid"), cast(func.count(), Text).label("value")).where(*where).group_by(user)
    assert compute.property is not None
    v = ctx.event_value(e, compute.property)
    if compute.form in NUMERIC_FORMS:
        columns = [v.number().label("number"), v.exact().label("exact"), v.integral().label("integral")]
        q = select(user.label("uid"), *columns).where(*where, v.number().is_not(None)).subquery("q")
        return select(q.c.uid, _numeric(ctx, q, compute.form).label("value")).group_by(q.c.uid)
    keys = [k.label(name) for k, name in zip(sort_keys(v), _KEYS, strict=True)]
    q = (
        select(user.label("uid"), ctx.timestamp(e).label("ts"), v.json().label("value"), *keys)
        .where(*where, v.json().is_not(None))
        .subquery("q")
    )
    order = [q.c[k] for k in _KEYS]
    if compute.form == "unique_count":
        return select(q.c.uid, cast(func.count(distinct(q.c.value)), Text).label("value")).group_by(q.c.uid)
    if compute.form == "unique_list":
        return _unique_list(ctx, q)
    if compute.form in ("first", "last"):
        return _ranked_first(q, [q.c.ts.asc() if compute.form == "first" else q.c.ts.desc(), *order])
    assert compute.form == "most_frequent"
    counted = (
        select(q.c.uid, q.c.value, *order, func.count().label("n"))
        .group_by(q.c.uid, q.c.value, *order)
        .subquery("counted")
    )
    frequent = select(counted).where(counted.c.n >= number_const(2)).subquery("frequent")
    return _ranked_first(frequent, [frequent.c.n.desc(), *(frequent.c[k] for k in _KEYS)])


def trait_statement(ctx: Context, compute: Compute) -> Any:
    """``SELECT user_id, email, value``: the trait's value for every profile that has one as of ``ctx.as_of``."""
    agg = _per_user(ctx, compute).subquery("agg")
    p = ctx.profiles()
    uid = ctx.profile_id(p)
    return select(uid.label("user_id"), ctx.profile_email(p).label("email"), agg.c.value.label("value")).select_from(
        p.join(agg, agg.c.uid == uid)
    )
