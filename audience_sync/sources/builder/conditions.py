"""Audience conditions as SQL predicates over the profile row ``p``: each is true or false for every profile.

- ``performed``: ``p.id IN (SELECT user_id FROM events WHERE <qualifying> [GROUP BY user_id HAVING count(*) ...])``;
- ``did_not_perform``: the negation of ``performed`` with ``at_least = 1``;
- a trait condition: the filter on the profile's column;
- ``in_audience``: the other audience's condition, inlined (same as-of, same statement);
- ``all`` / ``any`` / ``not``: AND / OR / NOT, which are intersection, union and complement within the profiles
  because every part is true or false, never NULL (the subqueries never return a NULL user id).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, and_, bindparam, func, not_, or_, select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import FromClause

from .condition_models import AllOf, Condition, DidNotPerform, Events, InAudience, Not, Performed, TraitIs
from .context import Context
from .filters import filter_expr


def _performers(ctx: Context, events: Events, bound: str = "at_least", count: int = 1) -> Any:
    """The users with qualifying events whose number satisfies ``bound`` ``count`` (and is at least 1)."""
    e = ctx.events()
    user = ctx.event_user(e)
    query = select(user).where(*ctx.qualifying(e, events))
    if bound == "at_least" and count == 1:
        return query
    n = bindparam(bound, count, type_=Integer(), unique=True)
    having = {"at_least": func.count() >= n, "at_most": func.count() <= n, "exactly": func.count() == n}[bound]
    return query.group_by(user).having(having)


def condition_expr(ctx: Context, p: FromClause, condition: Condition) -> ColumnElement[Any]:
    """The predicate of ``condition`` on profile row ``p``."""
    if isinstance(condition, Performed):
        return ctx.profile_id(p).in_(_performers(ctx, condition.events, condition.bound, condition.count))
    if isinstance(condition, DidNotPerform):
        return not_(ctx.profile_id(p).in_(_performers(ctx, condition.events)))
    if isinstance(condition, TraitIs):
        return filter_expr(ctx.profile_value(p, condition.filter.property), condition.filter)
    if isinstance(condition, InAudience):
        inner = condition_expr(ctx, p, ctx.audiences[condition.key].condition)
        return not_(inner) if condition.negated else inner
    if isinstance(condition, Not):
        return not_(condition_expr(ctx, p, condition.part))
    parts = [condition_expr(ctx, p, part) for part in condition.parts]
    return and_(*parts) if isinstance(condition, AllOf) else or_(*parts)


def audience_statement(ctx: Context, condition: Condition) -> Any:
    """``SELECT user_id, email FROM profiles WHERE <condition>``: the audience's members as of ``ctx.as_of``."""
    p = ctx.profiles()
    uid = ctx.profile_id(p)
    # a profile without an id is no one's: left out here rather than dropped (and counted) by staging
    return select(uid.label("user_id"), ctx.profile_email(p).label("email")).where(
        uid.is_not(None), condition_expr(ctx, p, condition)
    )
