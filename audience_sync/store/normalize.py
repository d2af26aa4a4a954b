"""What a user id and an email become on their way into staging, and which ones the state database can hold.

The streamed path (``sources/rows.py``) calls these per row in Python; the pushed-down path calls the same
functions from SQL on SQLite (registered by ``store/sqlfuncs.py``) and their SQL twins on PostgreSQL
(``sources/pushdown.py``), so both paths stage the same ids and emails. They live in the store because the
store's connections register them; the sources import them from here.
"""

from __future__ import annotations

import math
from typing import Any

#: the longest user id taken, in UTF-8 bytes. PostgreSQL keeps (destination, key, user id) in b-tree indexes
#: whose entries hold at most about 2,700 bytes; destination names (200) and keys (150) take the rest.
MAX_USER_ID_BYTES = 2000


def normal_user_id(raw: Any) -> str | None:
    """The user id ``raw`` stands for: None for a null, a NaN or a blank text; an integral float as an integer."""
    if raw is None:
        return None
    if isinstance(raw, float):
        if math.isnan(raw):
            return None
        if raw.is_integer():
            return str(int(raw))
    text = str(raw)
    return text if text.strip() else None


def normal_email(raw: Any) -> str | None:
    """The email ``raw`` stands for, stripped: None for a null, a NaN or a blank text."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    text = str(raw).strip()
    return text or None


def user_id_problem(user_id: str) -> str | None:
    """Why the state database cannot take ``user_id`` (a normalised, non-empty id), or None when it can."""
    if "\x00" in user_id:
        return "its user_id contains a NUL byte, which the state database cannot store"
    size = len(user_id.encode("utf-8", "surrogatepass"))
    if size > MAX_USER_ID_BYTES:
        return f"its user_id is {size} bytes long (UTF-8); the state database takes at most {MAX_USER_ID_BYTES}"
    return None


def email_problem(email: str | None) -> str | None:
    """Why the state database cannot take ``email`` (normalised), or None when it can."""
    if email is not None and "\x00" in email:
        return "its email contains a NUL byte, which the state database cannot store"
    return None


def checked_user_id(raw: Any) -> str | None:
    """:func:`normal_user_id`, raising for an id the streamed path skips: a pushed-down statement calling it
    fails, and the run streams the computation instead, to report the user."""
    uid = normal_user_id(raw)
    if uid is not None and user_id_problem(uid) is not None:
        raise ValueError("a user id the state database cannot take: streaming, to report it")
    return uid


def checked_email(raw: Any) -> str | None:
    """:func:`normal_email`, raising for an email the streamed path skips (as :func:`checked_user_id`)."""
    email = normal_email(raw)
    if email_problem(email) is not None:
        raise ValueError("an email the state database cannot take: streaming, to report it")
    return email
