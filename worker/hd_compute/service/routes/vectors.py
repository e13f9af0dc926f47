"""/v1/hypervectors and /v1/ops: random hypervectors, bind, bundle, permute and similarity (micro-batched)."""

from __future__ import annotations

import functools
import hashlib
import math

import torch
from aiohttp import web

import hd_compute.functional as F
from hd_compute.hypervectors import Hypervectors
from hd_compute.vsa import VSAModel

from ..codec import invalid
from ..openapi import INT64_MAX, MAX_BATCH_AXES, METRICS
from ..operations import Op, count, empty_like, operation, vectors_fields, vsa_and_dimension
from ..responses import check_response_size, hypervector_bytes, number_bytes

routes = web.RouteTableDef()


def _check_result(op: Op, field: str, model: VSAModel, dim: int, n: int) -> None:
    """The response and working-memory bounds of an operation that answers `n` hypervectors."""
    what = f"{n} hypervectors of dimension {dim}"
    check_response_size(
        field, n * hypervector_bytes(model, dim, op.binary_response), op.settings.max_response_bytes, what
    )
    op.check_elements(field, n * dim, what)


@routes.post("/v1/hypervectors/random")
@operation("random")
async def random_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = vsa_and_dimension(op, p)
    dimension = dim or op.settings.dimension
    raw = p.raw("num", required=True)
    if isinstance(raw, list):
        if not 1 <= len(raw) <= MAX_BATCH_AXES or not all(type(v) is int and 0 <= v <= INT64_MAX for v in raw):
            raise invalid(
                "num", f"must be a non-negative integer or a list of 1 to {MAX_BATCH_AXES} of them (a batch shape)"
            )
        shape = tuple(raw)
    else:
        shape = (p.integer("num", required=True, minimum=0),)
    n = math.prod(shape)
    _check_result(op, "num", model, dimension, n)
    seed = p.integer("seed", None, minimum=0)
    op.dimension, op.input_count = dimension, n
    hv = await op.kernel(lambda: F.random(shape, dimension, model, device=op.worker.device, seed=seed))
    return await op.respond(vectors_fields(hv))


@routes.post("/v1/ops/bind")
@operation("bind")
async def bind_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = vsa_and_dimension(op, p)
    a = await p.vectors("a", model, dim, default_dim=op.settings.dimension)
    b = await p.vectors("b", model, a.dim)
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise invalid(
            "b", f"batch shapes of a {tuple(a.shape)} and b {tuple(b.shape)} do not broadcast", error="invalid_shape"
        ) from None
    _check_result(op, "b", model, a.dim, math.prod(shape))
    op.dimension, op.input_count = a.dim, count(a) + count(b)
    fn = F.unbind if p.flag("unbind", False) else F.bind
    if math.prod(shape) == 0:
        return await op.respond(vectors_fields(empty_like(a, shape)))
    hv = await op.kernel(lambda: fn(op.on_device(a), op.on_device(b)))
    return await op.respond(vectors_fields(hv))


@routes.post("/v1/ops/bundle")
@operation("bundle")
async def bundle_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = vsa_and_dimension(op, p)
    x = await p.vectors("vectors", model, dim, default_dim=op.settings.dimension)
    if x.data.dim() < 2 or x.data.shape[-2] == 0:
        raise invalid(
            "vectors",
            f"must be a non-empty batch (..., n, D) to bundle over its last batch axis, "
            f"got batch shape {list(x.shape)}",
            error="invalid_shape",
        )
    op.check_elements("vectors", count(x) * x.dim, f"bundling {count(x)} hypervectors of dimension {x.dim}")
    op.dimension, op.input_count = x.dim, count(x)
    if count(x) == 0:  # bundles of nothing: (0, ..., n, D) -> (0, ..., D)
        return await op.respond(vectors_fields(empty_like(x, tuple(x.shape[:-1]))))
    hv = await op.kernel(lambda: F.multiset(op.on_device(x)))
    return await op.respond(vectors_fields(hv))


@routes.post("/v1/ops/permute")
@operation("permute")
async def permute_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = vsa_and_dimension(op, p)
    x = await p.vectors("vectors", model, dim, default_dim=op.settings.dimension)
    shifts = p.integer("shifts", 1)  # any int64: the engine reduces a cyclic shift modulo the dimension
    op.check_elements("vectors", count(x) * x.dim, f"permuting {count(x)} hypervectors of dimension {x.dim}")
    op.dimension, op.input_count = x.dim, count(x)
    if count(x) == 0:
        return await op.respond(vectors_fields(x))
    hv = await op.kernel(lambda: F.permute(op.on_device(x), shifts))
    return await op.respond(vectors_fields(hv))


_METRICS = dict(zip(METRICS, (F.cosine_similarity, F.dot_similarity, F.hamming_similarity), strict=True))


def _similarity_batch(metric: str, others: Hypervectors, items: list[Hypervectors]) -> list[torch.Tensor]:
    """One kernel call for all queries of the coalesced requests; each gets its rows back."""
    flat = [q.data.reshape(-1, q.data.shape[-1]) for q in items]
    queries = Hypervectors(torch.cat(flat) if len(flat) > 1 else flat[0], others.vsa, others.dim)
    scores = _METRICS[metric](queries, others)  # (total, *others.shape)
    out, start = [], 0
    for q, rows in zip(items, flat, strict=True):
        n = rows.shape[0]
        out.append(scores[start : start + n].reshape(*q.shape, *others.shape).cpu())
        start += n
    return out


@routes.post("/v1/ops/similarity")
@operation("similarity")
async def similarity_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = vsa_and_dimension(op, p)
    metric = p.text("metric", "cosine", choices=METRICS)
    queries = await p.vectors("queries", model, dim, default_dim=op.settings.dimension)
    others = await p.vectors("others", model, queries.dim)
    if others.data.dim() > 2:
        raise invalid(
            "others",
            f"must be one hypervector or a list of them, got batch shape {list(others.shape)}",
            error="invalid_shape",
        )
    if metric == "hamming" and not model.supports_hamming:
        raise invalid("metric", f"hamming is defined for MAP and BSC, not {model.name}")
    if queries.dtype != others.dtype:
        raise invalid("others", f"has dtype {others.dtype} but queries have {queries.dtype}")
    n = count(queries)
    scores = n * max(count(others), 1)
    what = f"{n} queries x {count(others)} others"
    check_response_size("queries", scores * number_bytes(op.binary_response, 4), op.settings.max_response_bytes, what)
    op.check_elements("queries", scores, what)
    op.dimension, op.input_count = queries.dim, n
    queries, others = op.on_device(queries), op.on_device(others)
    digest = hashlib.blake2b(others.data.cpu().numpy().tobytes(), digest_size=16).hexdigest()
    key = ("similarity", metric, model.name, others.dim, str(others.dtype), tuple(others.shape), digest)
    similarities = await op.batched(key, max(n, 1), queries, functools.partial(_similarity_batch, metric, others))
    return await op.respond({"metric": metric, "similarities": similarities})
