"""Requests and answers on the wire: the transport chosen for the caller, and the answers read into typed results.

Requests: an operation's arrays travel in their storage form (what the worker computes on, nothing converted)
as application/x-npy when the operation takes its one array alone (routes.Route.npy) and the call has one,
else as an application/x-npz archive, with the scalar fields in the query string; a call without arrays is a
JSON body (or no body). Inputs are hd.Hypervectors (their model and dimension are sent along where the
operation takes them), torch tensors or numpy arrays, both read as the storage form (BSC: int64 words, so the
dimension must be given or be the worker's default).

Answers: hypervectors are asked for as .npz (Accept: application/x-npz: exact, and no dense form to build on
either side); an answer of numbers (similarities, ids, labels, probabilities) as JSON up to
JSON_ANSWER_MAX_NUMBERS numbers (cheaper to encode and read than an archive for a small answer, and exact: the
worker writes float32 values as the doubles they equal), else as .npz.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

import numpy as np
import orjson
import torch

from hd_compute.hypervectors import Hypervectors

from . import results
from .errors import ProtocolError
from .routes import ROUTES, Route

JSON_TYPE = "application/json"
NPZ_TYPE = "application/x-npz"
NPY_TYPE = "application/x-npy"
JSON_ANSWER_MAX_NUMBERS = 1 << 16  # larger answers of numbers come as .npz

T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as both transports hand it over; `headers` is case-insensitive."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Request(Generic[T]):
    """One call of an operation, ready to send (and to send again, unchanged, on a retry)."""

    operation: str
    route: Route
    target: str  # path and query string
    body: bytes | None
    content_type: str | None
    accept: str
    decode: Callable[[Answer], T]


def storage_array(value: Any, field: str) -> np.ndarray:
    """The storage-form array of an input: hd.Hypervectors' data, a torch tensor or a numpy array."""
    if isinstance(value, Hypervectors):
        value = value.data
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"{field} must be hd.Hypervectors, a torch.Tensor or a numpy.ndarray, got {type(value).__name__}")


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def npy_body(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz_body(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def request(
    operation: str,
    values: dict[str, Any],
    decode: Callable[[Answer], T],
    *,
    name: str | None = None,
    binary_answer: bool = False,
) -> Request[T]:
    """The request of `operation` with `values` (None: left out, the worker's default applies).

    Arrays go in a binary body (see the module's docstring) and the other fields in its query string; without
    arrays the fields are a JSON body. A Hypervectors input supplies `vsa` and `dimension` when the operation takes
    them and the caller left them out."""
    route = ROUTES[operation]
    path = route.path.format(name=quote(name, safe="")) if name is not None else route.path
    given = {k: v for k, v in values.items() if v is not None}
    for field in ("vsa", "dimension"):
        if field in route.fields and field not in given:
            source = next((given[a] for a in route.arrays if isinstance(given.get(a), Hypervectors)), None)
            if source is not None:
                given[field] = source.vsa.name if field == "vsa" else source.dim
    arrays = {f: _array(f, given.pop(f)) for f in route.arrays if f in given}
    accept = NPZ_TYPE if binary_answer else JSON_TYPE
    if arrays:
        query = urlencode({k: _query_value(v) for k, v in given.items()})
        target = f"{path}?{query}" if query else path
        if route.npy and len(arrays) == 1:
            return Request(operation, route, target, npy_body(next(iter(arrays.values()))), NPY_TYPE, accept, decode)
        return Request(operation, route, target, npz_body(arrays), NPZ_TYPE, accept, decode)
    if route.method == "POST":
        return Request(operation, route, path, orjson.dumps(given), JSON_TYPE, accept, decode)
    return Request(operation, route, path, None, None, accept, decode)


def _array(field: str, value: Any) -> np.ndarray:
    if field == "keys":
        return np.asarray(list(value), dtype=str)
    if field == "y":  # class labels: any integer sequence
        return np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value, dtype=np.int64)
    return storage_array(value, field)


def rows(value: Any) -> int:
    """How many hypervectors an input holds (the product of its batch shape, the storage axis aside)."""
    shape = value.shape if isinstance(value, Hypervectors) else storage_array(value, "input").shape[:-1]
    return int(np.prod(shape, dtype=np.int64))


def wants_binary(numbers: int) -> bool:
    """Whether an answer of about `numbers` numbers is asked for as .npz rather than JSON."""
    return numbers > JSON_ANSWER_MAX_NUMBERS


# -- answers -----------------------------------------------------------------------------------------------------


def fields(answer: Answer) -> dict[str, Any]:
    """The answer's fields: a JSON object, or an .npz archive's arrays (0-d arrays as their scalar)."""
    content_type = answer.headers.get("Content-Type", "").split(";")[0].strip()
    try:
        if content_type == NPZ_TYPE:
            with np.load(io.BytesIO(answer.body), allow_pickle=False) as archive:
                return {k: (a.item() if a.ndim == 0 else a) for k, a in ((k, archive[k]) for k in archive.files)}
        parsed = orjson.loads(answer.body)
    except (ValueError, OSError) as exc:
        raise ProtocolError(f"HTTP {answer.status}: an answer that is not {content_type or 'JSON'} ({exc})") from None
    if not isinstance(parsed, dict):
        raise ProtocolError(f"HTTP {answer.status}: expected a JSON object, got {type(parsed).__name__}")
    return parsed


def _tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value)).to(dtype)


def _strings(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [str(k) for k in (value.tolist() if isinstance(value, np.ndarray) else value)]


def hypervectors(answer: Answer) -> Hypervectors:
    f = fields(answer)
    vsa, dim, vectors = str(f["vsa"]), int(f["dimension"]), f["vectors"]
    if isinstance(vectors, np.ndarray):  # the storage form
        return Hypervectors(torch.from_numpy(vectors), vsa, dim)
    dense = np.asarray(vectors, dtype=np.float32)  # a JSON answer: the dense form
    if vsa == "FHRR":
        dense = dense[..., 0] + 1j * dense[..., 1]
    return Hypervectors.from_dense(torch.from_numpy(dense), vsa)


def similarities(answer: Answer) -> results.Similarities:
    f = fields(answer)
    return results.Similarities(str(f["metric"]), _tensor(f["similarities"], torch.float32))


def memory_info(answer: Answer) -> results.MemoryInfo:
    return _memory(fields(answer))


def _memory(f: dict[str, Any]) -> results.MemoryInfo:
    return results.MemoryInfo(
        str(f["name"]), str(f["vsa"]), int(f["dimension"]), int(f["size"]), _strings(f.get("keys"))
    )


def memory_list(answer: Answer) -> list[results.MemoryInfo]:
    return [_memory(m) for m in fields(answer)["memories"]]


def deleted(answer: Answer) -> str:
    return str(fields(answer)["deleted"])


def added(answer: Answer) -> results.Added:
    f = fields(answer)
    return results.Added(str(f["name"]), _tensor(f["ids"], torch.int64), int(f["size"]))


def query_result(answer: Answer) -> results.QueryResult:
    f = fields(answer)
    return results.QueryResult(
        str(f["name"]),
        int(f["k"]),
        _tensor(f["similarities"], torch.float32),
        _tensor(f["indices"], torch.int64),
        _strings(f.get("keys")),
    )


def _classifier(f: dict[str, Any]) -> results.ClassifierInfo:
    return results.ClassifierInfo(
        str(f["name"]),
        str(f["vsa"]),
        int(f["dimension"]),
        int(f["num_classes"]),
        bool(f["fitted"]),
        int(f["samples_seen"]),
    )


def classifier_info(answer: Answer) -> results.ClassifierInfo:
    return _classifier(fields(answer))


def classifier_list(answer: Answer) -> list[results.ClassifierInfo]:
    return [_classifier(c) for c in fields(answer)["classifiers"]]


def prediction(answer: Answer) -> results.Prediction:
    f = fields(answer)
    return results.Prediction(
        str(f["name"]), _tensor(f["labels"], torch.int64), _tensor(f["probabilities"], torch.float32)
    )


def readiness(answer: Answer) -> results.Readiness:
    f = fields(answer)
    return results.Readiness(bool(f.get("ready")), f.get("reason"))


def health(answer: Answer) -> results.Health:
    f = fields(answer)
    return results.Health(str(f.get("status")), dict(f.get("checks") or {}), f.get("timestamp"))


def alive(answer: Answer) -> bool:
    return fields(answer).get("status") == "alive"


def text(answer: Answer) -> str:
    return answer.body.decode("utf-8")


def document(answer: Answer) -> dict[str, Any]:
    return fields(answer)
