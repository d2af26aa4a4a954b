"""Our own secrets, scrubbed out of every text that comes from outside.

A destination may echo our request (its Authorization header included) in an error body, a database driver may
quote its connection string, a URL may carry a password in its query string. :func:`scrub` replaces every secret
of every configuration loaded in this process, in each form it may come back in, by ``***``; it is applied to
destination bodies and driver errors where they enter, and again where text is stored (``diffs.error``,
``sync_runs.error``), logged or printed. :func:`url_secrets` finds the secrets a URL holds by their place in it
(``store.engine.redact_url`` masks them there).

Forms of a secret that are found: as given; percent-encoded (``quote``, ``quote_plus``, upper- or lower-case
hex); base64 (standard and URL-safe, padded or not) of the secret and of ``secret:``, which is the HTTP Basic
credential of a key with an empty password; JSON- and HTML-escaped. Secrets shorter than :data:`MIN_LENGTH`
characters cannot be told from ordinary text and are not searched for (a URL's password is still masked where the
URL is printed).

Configurations register their secrets with :func:`remember` when they are loaded; the process never forgets one
(a text can quote an older configuration's secret as well as the current one's).
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
from collections.abc import Iterable
from typing import overload
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

MASK = "***"
MIN_LENGTH = 4
#: query-string parameters of a URL whose value is a secret (``?password=``, ``?sslpassword=``, ``?token=``, ...)
SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|api[_-]?key|access[_-]?key|credential", re.IGNORECASE)
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*:([^@]*)@")

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def forms(secret: str) -> set[str]:
    """Every form of ``secret`` that :func:`scrub` looks for (those at least :data:`MIN_LENGTH` long)."""
    found = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        html.escape(secret),
    }
    found |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text) for text in found}
    raw = secret.encode()
    for data in (raw, raw + b":"):
        for encoded in (base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode()):
            found |= {encoded, encoded.rstrip("=")}
    return {text for text in found if len(text) >= MIN_LENGTH}


def url_secrets(url: str | None, *, whole: bool = False) -> list[str]:
    """The secrets a URL holds: its password (as written and decoded), and the values of query parameters named
    like secrets. With ``whole`` (a URL that is itself a secret, such as an incoming-webhook URL), the URL and its
    path too."""
    if not url:
        return []
    found = [url] if whole else []
    # the password as SQLAlchemy reads it (up to the first "@") and as urllib does (up to the last one)
    userinfo = _USERINFO.match(url)
    if userinfo:
        found += [userinfo.group(1), unquote(userinfo.group(1))]
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can take apart further
        return found
    if password:
        found += [password, unquote(password)]
    for name, value in parse_qsl(parts.query):
        if SECRET_PARAMETER.search(name):
            found += [value, quote_plus(value), quote(value, safe="")]
    if whole and len(parts.path) > 1:
        found.append(parts.path + (f"?{parts.query}" if parts.query else ""))
    return found


def is_secret_parameter(name: str) -> bool:
    """Whether a URL's query parameter ``name`` holds a secret (``password``, ``sslpassword``, ``token``, ...)."""
    return SECRET_PARAMETER.search(name) is not None


def remember(secrets: Iterable[str | None]) -> None:
    """Add ``secrets`` to those :func:`scrub` removes (for the rest of the process)."""
    global _pattern
    new = {s for s in secrets if s and len(s) >= MIN_LENGTH}
    with _lock:
        if new <= _secrets:
            return
        _secrets.update(new)
        texts = sorted({text for secret in _secrets for text in forms(secret)}, key=lambda t: (-len(t), t))
        _pattern = re.compile("|".join(map(re.escape, texts)))


@overload
def scrub(text: str) -> str: ...
@overload
def scrub(text: None) -> None: ...
def scrub(text: str | None) -> str | None:
    """``text`` with every form of every remembered secret replaced by ``***`` (None stays None)."""
    pattern = _pattern
    if text is None or pattern is None:
        return text
    return pattern.sub(MASK, text)
