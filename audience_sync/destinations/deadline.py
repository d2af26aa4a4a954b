"""A deadline for a whole HTTP request, which httpx does not have.

httpx's ``timeout`` bounds each network operation (connect, one read, one write, a wait for the pool), so a server
that trickles its status line or its body one byte at a time keeps a request alive for ever. Here every socket
operation of a request gets the smaller of its own timeout and the time left until the request's deadline, and
one that starts after the deadline fails at once: a request made inside :func:`within` ends, answered or with a
timeout, by its deadline, whatever phase it is in (connect, TLS, writing, the headers, the body).

How: :class:`DeadlineTransport` is httpx's own ``HTTPTransport`` whose httpcore pool does its I/O through
:class:`DeadlineBackend`, a wrapper of httpcore's network backend (the seam httpcore offers for this). The
deadline is the calling thread's (sync httpx does a request's I/O on the thread that makes it), so requests on
many threads each keep their own. Name resolution is not a socket operation: the system resolver's own
timeouts apply to it.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

#: a write is split into slices this long, each bounded by the time left, so a slow reader cannot stretch one
WRITE_SLICE = 16 * 1024


class _Deadline(threading.local):
    expires: float | None = None


_current = _Deadline()


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Bound every request this thread makes inside the block to end within ``seconds`` from now."""
    previous = _current.expires
    _current.expires = time.monotonic() + seconds
    try:
        yield
    finally:
        _current.expires = previous


def _budget(timeout: float | None, expired: type[Exception]) -> float | None:
    """The timeout one socket operation gets: its own, cut to the time left; ``expired`` once none is left."""
    expires = _current.expires
    if expires is None:
        return timeout
    left = expires - time.monotonic()
    if left <= 0:
        raise expired("the request ran past its deadline")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every read and write ends by the calling thread's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), WRITE_SLICE):
            self._inner.write(buffer[start : start + WRITE_SLICE], _budget(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        budget = _budget(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, budget))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with every connection's operations bounded by the calling thread's deadline."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        budget = _budget(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.connect_tcp(host, port, budget, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        budget = _budget(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.connect_unix_socket(path, budget, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's HTTP transport (TLS, limits, proxies as httpx does them) whose requests end by their deadline.

    Raises RuntimeError at construction when the installed httpx builds its connection pool in a way this does not
    know, rather than sending requests that could hang.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        pool = getattr(self, "_pool", None)
        if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
            raise RuntimeError(
                f"httpx {httpx.__version__} builds its connection pool differently from what audience-sync knows: "
                f"requests could not be bounded by a deadline"
            )
        pool._network_backend = DeadlineBackend(pool._network_backend)


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, minus
    ``NO_PROXY``), as httpx would pick it without a transport of our own; None for a direct connection."""
    parsed = httpx.URL(url)
    if parsed.host and urllib.request.proxy_bypass(parsed.host):
        return None
    proxies = urllib.request.getproxies_environment()
    return proxies.get(parsed.scheme) or proxies.get("all")


def deadline_client(*, proxy_for: str, limits: httpx.Limits | None = None, **kwargs: Any) -> httpx.Client:
    """An httpx client on a :class:`DeadlineTransport`, through the proxy the environment names for ``proxy_for``
    (the URL the client will call); ``kwargs`` go to ``httpx.Client``."""
    limits = limits or httpx.Limits()
    transport = DeadlineTransport(limits=limits, proxy=environment_proxy(proxy_for))
    return httpx.Client(limits=limits, transport=transport, **kwargs)
