"""The exception tree of audience-sync.

Every error the library raises on purpose derives from :class:`AudienceSyncError`, carries its culprit
(file, key, audience, user, destination) as attributes and in its message, and maps to one exit code::

    AudienceSyncError                    exit 1 unless stated
    ├── ConfigError                      exit 2  bad TOML, unknown key, missing env var, bad value
    │   └── KeyCollisionError            exit 2  two computations on one key, or a retired key reused
    ├── SourceError                      exit 1  failing query, missing column, unreadable file, bad data
    ├── StoreError                       exit 1  state database unreachable, too new, or inconsistent
    ├── LockHeld                         exit 1  another run holds the run lock
    ├── LockLost                         exit 1  the run lost its lock while it ran; it stopped sending and recording
    ├── GuardTripped                     exit 1  an audience would lose too many members at once
    ├── DestinationError                         a destination refused or failed a call
    │   ├── TransientDestinationError            worth retrying; the change stays pending
    │   │   └── RetryAfterTooLong        exit 3  asked to wait longer than the cap: nothing more sent this run
    │   └── PermanentDestinationError            not worth retrying; the change is failed
    │       └── CredentialsRejected      exit 1  401/403: the destination refused our credentials
    ├── RunFailed                        exit 1  the run stopped; says what is pending and how to look
    │   └── RunStopped                   exit 3  SIGTERM/SIGINT before the changes were computed; nothing sent
    └── NotReadable                      exit 4  verify / adopt: the destination cannot be read back

Messages never contain secrets: configuration holds them as ``pydantic.SecretStr`` and nothing formats them.
"""

from __future__ import annotations

from typing import Any


class AudienceSyncError(Exception):
    """Root of every error audience-sync raises on purpose."""

    exit_code: int = 1


class ConfigError(AudienceSyncError):
    """The configuration cannot be used; raised before anything is computed or sent."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, problems: list[str] | None = None) -> None:
        self.path = path
        self.problems = problems or []
        super().__init__(message)


class KeyCollisionError(ConfigError):
    """Two computations map to one trait key, or a key that belonged to a retired computation is reused."""

    def __init__(self, message: str, *, key: str, names: tuple[str, ...] = ()) -> None:
        self.key = key
        self.names = names
        super().__init__(message)


class SourceError(AudienceSyncError):
    """A computation's source failed or returned unusable data; no diff of the run was stored."""

    def __init__(self, message: str, *, computation: str, user_id: str | None = None) -> None:
        self.computation = computation
        self.user_id = user_id
        super().__init__(message)


class StoreError(AudienceSyncError):
    """The state database cannot be used as it is."""


class LockHeld(AudienceSyncError):
    """Another run holds the lock for this state database."""

    def __init__(self, message: str, *, holder: str) -> None:
        self.holder = holder
        super().__init__(message)


class LockLost(AudienceSyncError):
    """The run lost a lock it held (its lease was taken over, its PostgreSQL session ended, the server restarted).

    Raised by the fence check before a send attempt or by the compare-and-set in a recording transaction: the run
    sends nothing more and records nothing more (the transaction rolls back). ``lock`` names the lock
    (``destination:<name>``), ``run_id`` the run (None before its row was opened), ``how`` says how it was lost.
    """

    def __init__(self, message: str, *, lock: str, run_id: int | None, how: str) -> None:
        self.lock = lock
        self.run_id = run_id
        self.how = how
        super().__init__(message)

    @property
    def destination(self) -> str:
        """The destination whose lock it was."""
        return self.lock.removeprefix("destination:")


class GuardTripped(AudienceSyncError):
    """An audience would lose more than its allowed share of members in one run; nothing of it was sent."""

    def __init__(self, message: str, *, computation: str, share: float) -> None:
        self.computation = computation
        self.share = share
        super().__init__(message)


class DestinationError(AudienceSyncError):
    """A destination failed or refused a call."""

    #: True for failures that stop every further call to the destination in this run (what is left stays pending)
    stops_destination: bool = False

    def __init__(self, message: str, *, destination: str, status_code: int | None = None) -> None:
        self.destination = destination
        self.status_code = status_code
        #: outcomes of the changes a destination handled before it had to stop (``diff_id`` -> Outcome);
        #: None: nothing is known to have been acknowledged
        self.partial: dict[int, Any] | None = None
        super().__init__(message)


class TransientDestinationError(DestinationError):
    """A failure worth retrying (network error, timeout, 408, 429, most 5xx)."""

    def __init__(
        self,
        message: str,
        *,
        destination: str,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, destination=destination, status_code=status_code)


class RetryAfterTooLong(TransientDestinationError):
    """The destination asked us (``Retry-After``) to wait longer than the cap: retrying earlier would ignore it, so
    nothing more is sent to it in this run and the changes left stay pending for the next run (exit 3)."""

    stops_destination = True


class PermanentDestinationError(DestinationError):
    """A failure that retrying will not fix (most 4xx); carries the destination's own reason."""


class CredentialsRejected(PermanentDestinationError):
    """The destination answered 401 or 403: every further call would fail the same way."""

    stops_destination = True


class RunFailed(AudienceSyncError):
    """A run stopped before it finished; the message says what is still pending and how to inspect it."""

    def __init__(self, message: str, *, run_id: int | None) -> None:
        self.run_id = run_id
        super().__init__(message)


class RunStopped(RunFailed):
    """The run was asked to stop (SIGTERM/SIGINT) while reading its sources: nothing was sent, no diff stored;
    the next run starts over."""

    exit_code = 3


class NotReadable(AudienceSyncError):
    """``verify`` or ``adopt`` was asked to read back a destination that offers no way to read what it holds
    (Segment, a webhook, a JSONL file): nothing was compared or changed."""

    exit_code = 4

    def __init__(self, message: str, *, destination: str) -> None:
        self.destination = destination
        super().__init__(message)
