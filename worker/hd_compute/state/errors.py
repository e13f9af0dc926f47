"""The state store's errors, typed so that the service maps each to one HTTP answer without parsing messages.

| error | meaning | the service's answer |
|---|---|---|
| `NotFound(kind, name)` | no live memory or classifier of that name | 404 |
| `AlreadyExists(kind, name)` | create of a name that is live | 409 |
| `IdempotencyKeyReused(key)` | an idempotency key sent again with another request | 422 |
| `StoreUnavailable(operation, reason)` | the database failed for a transient reason | 503, retryable |
| `NotCaughtUp(version, applied, timeout)` | this replica did not apply `version` in time | 503, retryable |
| `StateDirLocked(directory, holder)` | another process holds the SQLite state directory | refuse to start |
| `SchemaMismatch(found, expected)` | the database holds another layout of these tables | refuse to start |

`StoreUnavailable` on a write means the write may or may not have committed when the connection dropped during
COMMIT itself; the log then shows which (a retry of an add whose commit went through adds the items again).
"""

from __future__ import annotations


class StateError(Exception):
    """Base of the state store's errors."""


class NotFound(StateError, LookupError):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"no {kind} named {name!r}")
        self.kind = kind
        self.name = name


class AlreadyExists(StateError):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"a {kind} named {name!r} exists; delete it first")
        self.kind = kind
        self.name = name


class IdempotencyKeyReused(StateError):
    """The key's recorded request (operation, path, body and query) is not this one: nothing was written."""

    def __init__(self, key: str, operation: str, path: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was used for another request ({operation} {path}, or another body); "
            "use a new key for a new request"
        )
        self.key = key
        self.operation = operation
        self.path = path


class StoreUnavailable(StateError):
    """Transient: the same call may succeed later (database restarting, connection dropped, lock timeout)."""

    retryable = True

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(f"state store unavailable during {operation}: {reason}")
        self.operation = operation
        self.reason = reason


class NotCaughtUp(StateError):
    """Transient: this follower had applied `applied` < `version` when `timeout` seconds had passed."""

    retryable = True

    def __init__(self, version: int, applied: int, timeout: float) -> None:
        super().__init__(f"state version {version} not applied within {timeout:g} s (applied: {applied})")
        self.version = version
        self.applied = applied
        self.timeout = timeout


class StateDirLocked(StateError):
    def __init__(self, directory: str, holder: str) -> None:
        super().__init__(
            f"state directory {directory} is in use by another process ({holder}); one process per state "
            f"directory (use PostgreSQL to share state between several workers)"
        )
        self.directory = directory
        self.holder = holder


class SchemaMismatch(StateError):
    def __init__(self, found: int, expected: int) -> None:
        super().__init__(f"the state tables have schema version {found}, this worker reads version {expected}")
        self.found = found
        self.expected = expected
