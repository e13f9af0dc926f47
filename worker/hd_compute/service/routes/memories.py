"""/v1/memories: item memories (create, list, get, delete; add items; query by similarity, micro-batched)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from aiohttp import web

from hd_compute.hypervectors import Hypervectors
from hd_compute.state import CachedMemory, Committed
from hd_compute.structures import ItemMemory

from ..codec import ApiError, invalid
from ..operations import Op, count, operation, vsa_and_dimension
from ..payload import Payload
from ..responses import check_response_size, hypervector_bytes, number_bytes
from ..worker import Worker
from .named import NamedKind, Write, add_named_routes, current, read_state, write_state

routes = web.RouteTableDef()

INITIAL_CAPACITY = 1024  # items a memory has room for in a replica's cache when it is created (state/cache.py)


def _build(op: Op, p: Payload, name: str) -> tuple[Write, dict[str, Any]]:
    model, dim = vsa_and_dimension(op, p)
    dimension = dim or op.settings.dimension
    reserved = INITIAL_CAPACITY * hypervector_bytes(model, dimension, binary=True)
    op.check_allocation(
        "dimension",
        reserved,
        f"an item memory of dimension {dimension} (room for {INITIAL_CAPACITY} items at creation)",
    )
    op.dimension = dimension
    info = {"name": name, "vsa": model.name, "dimension": dimension, "size": 0}
    return (lambda tx: tx.create_memory(name, dimension, model.name)), info


def _info(name: str, entry: CachedMemory) -> dict[str, Any]:
    return {"name": name, "vsa": entry.memory.vsa.name, "dimension": entry.memory.dim, "size": len(entry.memory)}


def _details(entry: CachedMemory) -> dict[str, Any]:
    return {"keys": list(entry.keys)} if any(entry.keys) else {}


MEMORIES: NamedKind[CachedMemory] = NamedKind(
    kind="memory",
    collection="/v1/memories",
    list_field="memories",
    entries=lambda worker: worker.memories,
    build=_build,
    info=_info,
    details=_details,
)
add_named_routes(routes, MEMORIES)


def _as_memory_dtype(hv: Hypervectors, memory: ItemMemory, field: str) -> Hypervectors:
    """`hv` in the memory's storage dtype. A conversion can take valid values out of range (float64 HRR values
    within float64's bound overflow float32), so the converted data are validated again, naming `field`."""
    if hv.dtype == memory.dtype:
        return hv
    data = hv.data.to(memory.dtype)
    try:
        memory.vsa.validate(data, memory.dim, field)
    except ValueError as exc:
        raise invalid(field, str(exc).removeprefix(f"{field}: ")) from None
    return Hypervectors(data, memory.vsa, memory.dim)


@routes.post("/v1/memories/{name}/items")
@operation("memory_add")
async def memory_add(op: Op) -> web.Response:
    name = op.path_name()
    p = await op.read()
    await read_state(op)
    memory = (await current(op, op.worker.memories, name)).memory
    items = await p.vectors("vectors", memory.vsa, memory.dim)
    if items.data.dim() > 2:
        raise invalid(
            "vectors",
            f"must be one hypervector or a list of them, got batch shape {list(items.shape)}",
            error="invalid_shape",
        )
    items = _as_memory_dtype(items, memory, "vectors")
    n = count(items)
    keys = p.strings("keys")
    if keys is not None and len(keys) != n:
        raise invalid("keys", f"must be a list of {n} strings, one per item, got {len(keys)}")
    op.dimension, op.input_count = memory.dim, n

    def answer(committed: Committed) -> dict[str, Any]:
        return {"name": name, "ids": list(committed.ids), "size": committed.size}

    return await write_state(op, lambda tx: tx.add_items(name, items, keys), answer)


def _query_batch(
    worker: Worker, name: str, items: list[tuple[Hypervectors, int]]
) -> list[tuple[np.ndarray, np.ndarray, list[str] | None]]:
    """One search for the queries of all the coalesced requests against memory `name` (kernel thread); each
    request gets its own rows back: (similarities, indices, keys or None)."""
    entry = worker.memories.get(name)
    memory = entry.memory
    k_max = max(k for _, k in items)
    if k_max > len(memory):
        raise ApiError(
            400, "invalid_field", f"k: {k_max} is larger than the number of items ({len(memory)})", field="k"
        )
    flat = [q.data.reshape(-1, q.data.shape[-1]) for q, _ in items]
    queries = Hypervectors(torch.cat(flat) if len(flat) > 1 else flat[0], memory.vsa, memory.dim)
    result = memory.search(queries, k=k_max)
    # One device-to-host copy for the whole batch; each request's rows are numpy views of it.
    all_sims = result.similarities.reshape(-1, k_max).cpu().numpy()
    all_ids = result.indices.reshape(-1, k_max).cpu().numpy()
    has_keys = any(entry.keys)
    out, start = [], 0
    for (q, k), rows in zip(items, flat, strict=True):
        n = rows.shape[0]
        sims = all_sims[start : start + n, :k].reshape(*q.shape, k)
        ids = all_ids[start : start + n, :k].reshape(*q.shape, k)
        keys = [entry.keys[i] for i in ids.reshape(-1).tolist()] if has_keys else None
        out.append((sims, ids, keys))
        start += n
    return out


@routes.post("/v1/memories/{name}/query")
@operation("memory_query")
async def memory_query(op: Op) -> web.Response:
    name = op.path_name()
    p = await op.read()
    await read_state(op)
    memory = op.worker.memories.get(name).memory
    queries = await p.vectors("queries", memory.vsa, memory.dim)
    k = p.integer("k", 1, minimum=1)
    if len(memory) == 0:
        raise ApiError(
            409, "memory_empty", f"name: item memory {name!r} is empty; add items before querying", field="name"
        )
    if k > len(memory):
        raise invalid("k", f"{k} is larger than the number of items ({len(memory)})")
    queries = _as_memory_dtype(queries, memory, "queries")
    n = count(queries)
    what = f"{n} queries x k={k}"
    # the search itself works in chunks of bounded size; its result is a similarity and an index per query and k
    check_response_size("queries", n * k * 2 * number_bytes(op.binary_response), op.settings.max_response_bytes, what)
    op.dimension, op.input_count = memory.dim, n
    if n == 0:  # no queries: an empty answer, without the search (which needs at least one)
        nothing = np.zeros((*queries.shape, k))
        return await op.respond(
            {"name": name, "k": k, "similarities": nothing.astype(np.float32), "indices": nothing.astype(np.int64)}
        )
    sims, ids, keys = await op.batched(
        ("memory", name), max(n, 1), (op.on_device(queries), k), functools.partial(_query_batch, op.worker, name)
    )
    fields: dict[str, Any] = {"name": name, "k": k, "similarities": sims, "indices": ids}
    if keys is not None:
        fields["keys"] = keys
    return await op.respond(fields)
