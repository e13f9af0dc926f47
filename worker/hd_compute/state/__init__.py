"""The state store: item memories and classifiers as an ordered log in a database, and the in-memory copy of
each process as a cache that follows it (docs/state.md).

    store = StateStore.open(database_url=url)          # PostgreSQL, shared; or state_dir=... (SQLite, one process)
    follower = Follower(store, device)
    follower.catch_up()
    written = store.add_items("animals", items, keys)  # acknowledged once committed
    follower.wait_for(written.version, timeout=5.0)    # read-your-writes
    follower.memory("animals").memory.search(query)

Layer 4 (beside monitoring/): imports the engine and SQLAlchemy, never the service.
"""

from .cache import CachedClassifier, CachedMemory
from .errors import (
    AlreadyExists,
    IdempotencyKeyReused,
    NotCaughtUp,
    NotFound,
    SchemaMismatch,
    StateDirLocked,
    StateError,
    StoreUnavailable,
)
from .follower import Follower, FollowerStatus
from .importer import ImportResult, import_snapshot_files
from .schema import Kind, Op
from .store import Answered, StateStore
from .writes import Committed, IdempotentRequest, RecordedAnswer, Transaction

__all__ = [
    "AlreadyExists",
    "Answered",
    "CachedClassifier",
    "CachedMemory",
    "Committed",
    "Follower",
    "FollowerStatus",
    "IdempotencyKeyReused",
    "IdempotentRequest",
    "ImportResult",
    "Kind",
    "NotCaughtUp",
    "NotFound",
    "Op",
    "RecordedAnswer",
    "SchemaMismatch",
    "StateDirLocked",
    "StateError",
    "StateStore",
    "StoreUnavailable",
    "Transaction",
    "import_snapshot_files",
]
