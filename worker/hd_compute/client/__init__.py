"""hd_compute.client: the worker API (`hdc-worker serve`) from Python, synchronous (Client) and asyncio
(AsyncClient), taking and returning hd.Hypervectors and tensors. docs/client.md has the examples.

Not imported by `import hd_compute` (the engine needs only torch and numpy); it imports the engine's
Hypervectors, urllib3 (Client) and aiohttp (AsyncClient).
"""

from __future__ import annotations

from .aio import AsyncClient
from .core import RetryPolicy, Timeout
from .errors import (
    BadRequest,
    ClientError,
    Conflict,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    ServerError,
    Unavailable,
    UnsupportedMediaType,
    WorkerError,
    WorkerTimeout,
    WorkerUnreachable,
)
from .results import (
    Added,
    ClassifierInfo,
    Health,
    MemoryInfo,
    Prediction,
    QueryResult,
    Readiness,
    Similarities,
)
from .sync import Client

__all__ = [
    "Added",
    "AsyncClient",
    "BadRequest",
    "ClassifierInfo",
    "Client",
    "ClientError",
    "Conflict",
    "Health",
    "MemoryInfo",
    "NotFound",
    "PayloadTooLarge",
    "Prediction",
    "ProtocolError",
    "QueryResult",
    "Readiness",
    "RetryPolicy",
    "ServerError",
    "Similarities",
    "Timeout",
    "Unavailable",
    "UnsupportedMediaType",
    "WorkerError",
    "WorkerTimeout",
    "WorkerUnreachable",
]
