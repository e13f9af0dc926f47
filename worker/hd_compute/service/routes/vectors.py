"""/v1/hypervectors and /v1/ops: random hypervectors, bind, bundle, permute and similarity (micro-batched)."""

from __future__ import annotations

import functools
import hashlib

import torch
from aiohttp import web

import hd_compute.functional as F
from hd_compute.hypervectors import Hypervectors

from ..codec import invalid
from ..operations import Op, count, operation, vectors_fields, vsa_and_dimension

routes = web.RouteTableDef()


@routes.post("/v1/hypervectors/random")
@operation("random")
async def random_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = vsa_and_dimension(op, p)
    dimension = dim or op.settings.dimension
    raw = p.fields.get("num")
    if isinstance(raw, list):
        if not raw or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw):
            raise invalid("num", "must be a non-negative int or a non-empty list of them (a batch shape)")
        shape = tuple(raw)
    else:
        shape = (p.int("num", required=True, minimum=0),)
    n = 1
    for s in shape:
        n *= s
    limit = op.settings.max_body_bytes
    if n * dimension > limit:
        raise invalid(
            "num",
            f"{n} hypervectors x dimension {dimension} exceeds the response limit of {limit} "
            "elements (HDC_MAX_BODY_BYTES); request fewer",
        )
    seed = p.int("seed", None, minimum=0)
    op.dimension, op.input_count = dimension, n
    hv = await op.kernel(lambda: F.random(shape, dimension, model, device=op.worker.device, seed=seed))
    return op.respond(vectors_fields(hv))


@routes.post("/v1/ops/bind")
@operation("bind")
async def bind_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = vsa_and_dimension(op, p)
    a = p.vectors("a", model, dim, default_dim=op.settings.dimension)
    b = p.vectors("b", model, a.dim)
    op.dimension, op.input_count = a.dim, count(a) + count(b)
    fn = F.unbind if p.bool("unbind", False) else F.bind
    hv = await op.kernel(lambda: fn(op.on_device(a), op.on_device(b)))
    return op.respond(vectors_fields(hv))


@routes.post("/v1/ops/bundle")
@operation("bundle")
async def bundle_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = vsa_and_dimension(op, p)
    x = p.vectors("vectors", model, dim, default_dim=op.settings.dimension)
    if x.data.dim() < 2 or x.data.shape[-2] == 0:
        raise invalid(
            "vectors",
            f"must be a non-empty batch (..., n, D) to bundle over its last batch axis, "
            f"got batch shape {list(x.shape)}",
            error="invalid_shape",
        )
    op.dimension, op.input_count = x.dim, count(x)
    hv = await op.kernel(lambda: F.multiset(op.on_device(x)))
    return op.respond(vectors_fields(hv))


@routes.post("/v1/ops/permute")
@operation("permute")
async def permute_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = vsa_and_dimension(op, p)
    x = p.vectors("vectors", model, dim, default_dim=op.settings.dimension)
    shifts = p.int("shifts", 1)
    op.dimension, op.input_count = x.dim, count(x)
    hv = await op.kernel(lambda: F.permute(op.on_device(x), shifts))
    return op.respond(vectors_fields(hv))


_METRICS = {"cosine": F.cosine_similarity, "dot": F.dot_similarity, "hamming": F.hamming_similarity}


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
    metric = p.str("metric", "cosine", choices=tuple(_METRICS))
    queries = p.vectors("queries", model, dim, default_dim=op.settings.dimension)
    others = p.vectors("others", model, queries.dim)
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
    op.dimension, op.input_count = queries.dim, n
    queries, others = op.on_device(queries), op.on_device(others)
    digest = hashlib.blake2b(others.data.cpu().numpy().tobytes(), digest_size=16).hexdigest()
    key = ("similarity", metric, model.name, others.dim, str(others.dtype), tuple(others.shape), digest)
    scores = await op.batched(key, max(n, 1), queries, functools.partial(_similarity_batch, metric, others))
    return op.respond({"metric": metric, "similarities": scores})
