"""/v1/classifiers: centroid classifiers (create, list, get, delete; fit; predict)."""

from __future__ import annotations

from typing import Any

import torch
from aiohttp import web

from hd_compute.hypervectors import Hypervectors
from hd_compute.state import CachedClassifier, Committed, Transaction
from hd_compute.vsa import get_model

from ..codec import ApiError, invalid
from ..openapi import MAX_CLASSES, MAX_EPOCHS, MAX_LEARNING_RATE, MIN_TEMPERATURE
from ..operations import Op, operation, vsa_and_dimension
from ..payload import Payload
from ..responses import check_response_size, number_bytes
from .named import NamedKind, Write, add_named_routes, current, read_state, write_state

routes = web.RouteTableDef()

PROTOTYPE_BYTES = 8  # per element of the (num_classes, D) prototypes and the fit's per-class sums


def _build(op: Op, p: Payload, name: str) -> tuple[Write, dict[str, Any]]:
    model, dim = vsa_and_dimension(op, p)
    dimension = dim or op.settings.dimension
    num_classes = p.integer("num_classes", required=True, minimum=1, maximum=MAX_CLASSES)
    temperature = p.number("temperature", 0.05, minimum=MIN_TEMPERATURE)
    op.check_allocation(
        "num_classes",
        num_classes * dimension * PROTOTYPE_BYTES,
        f"{num_classes} class prototypes of dimension {dimension}",
    )
    op.dimension = dimension
    info = _described(name, model.name, dimension, num_classes, fitted=False, samples_seen=0)
    return (lambda tx: tx.create_classifier(name, num_classes, dimension, model.name, temperature)), info


def _described(
    name: str, vsa: str, dimension: int, num_classes: int, *, fitted: bool, samples_seen: int
) -> dict[str, Any]:
    return {
        "name": name,
        "vsa": vsa,
        "dimension": dimension,
        "num_classes": num_classes,
        "fitted": fitted,
        "samples_seen": samples_seen,
    }


def _info(name: str, entry: CachedClassifier) -> dict[str, Any]:
    model = entry.model
    return _described(
        name, entry.vsa, model.dim, model.num_classes, fitted=model.weights is not None, samples_seen=entry.samples_seen
    )


CLASSIFIERS: NamedKind[CachedClassifier] = NamedKind(
    kind="classifier",
    collection="/v1/classifiers",
    list_field="classifiers",
    entries=lambda worker: worker.classifiers,
    build=_build,
    info=_info,
)
add_named_routes(routes, CLASSIFIERS)


async def _samples(op: Op, p: Payload, entry: CachedClassifier) -> Hypervectors:
    x = await p.vectors("x", get_model(entry.vsa), entry.model.dim)
    if x.data.dim() == 1:
        x = x.reshape(1)
    if x.data.dim() != 2 or x.shape[0] == 0:
        raise invalid(
            "x",
            f"must be a non-empty list of hypervectors (batch, D), got batch shape {list(x.shape)}",
            error="invalid_shape",
        )
    return op.on_device(x)


@routes.post("/v1/classifiers/{name}/fit")
@operation("classifier_fit")
async def classifier_fit(op: Op) -> web.Response:
    name = op.path_name()
    p = await op.read()
    await read_state(op)
    entry = await current(op, op.worker.classifiers, name)
    x = await _samples(op, p, entry)
    y = p.labels("y")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise invalid(
            "y",
            f"must hold {x.shape[0]} labels, one per sample of x, got {y.shape[0] if y.dim() else 0}",
            error="invalid_shape",
        )
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= entry.model.num_classes):
        raise invalid("y", f"labels must be in [0, {entry.model.num_classes}), got {int(y.min())}..{int(y.max())}")
    partial = p.flag("partial", False)
    adaptive = p.flag("adaptive", False)
    epochs = p.integer("epochs", 1, minimum=1, maximum=MAX_EPOCHS)
    lr = p.number("lr", 1.0, minimum=0.0, maximum=MAX_LEARNING_RATE)
    op.dimension, op.input_count = entry.model.dim, x.shape[0]

    vsa, dim, num_classes = entry.vsa, entry.model.dim, entry.model.num_classes

    def answer(committed: Committed) -> dict[str, Any]:
        return _described(name, vsa, dim, num_classes, fitted=True, samples_seen=committed.size)

    def fit(tx: Transaction) -> Committed:
        return tx.fit_classifier(name, x, y, partial=partial, adaptive=adaptive, epochs=epochs, lr=lr)

    return await write_state(op, fit, answer)


@routes.post("/v1/classifiers/{name}/predict")
@operation("classifier_predict")
async def classifier_predict(op: Op) -> web.Response:
    name = op.path_name()
    p = await op.read()
    await read_state(op)
    entry = op.worker.classifiers.get(name)
    if entry.model.weights is None:
        raise ApiError(409, "not_fitted", f"name: classifier {name!r} is not fitted; POST .../fit first", field="name")
    x = await _samples(op, p, entry)
    n, classes = x.shape[0], entry.model.num_classes
    check_response_size(
        "x",
        n * (classes + 1) * number_bytes(op.binary_response),
        op.settings.max_response_bytes,
        f"{n} samples x {classes} classes",
    )
    op.dimension, op.input_count = entry.model.dim, n

    def predict() -> tuple[torch.Tensor, torch.Tensor]:
        proba = entry.model.predict_proba(x)
        return proba.argmax(dim=1).cpu(), proba.cpu()

    labels, probabilities = await op.kernel(predict)
    return await op.respond({"name": name, "labels": labels, "probabilities": probabilities})
