"""/v1/classifiers: centroid classifiers (create, list, get, delete; fit; predict)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from aiohttp import web

from hd_compute.hypervectors import Hypervectors
from hd_compute.models import Centroid
from hd_compute.vsa import get_model

from ..codec import ApiError, invalid
from ..openapi import MAX_CLASSES, MAX_EPOCHS, MAX_LEARNING_RATE, MIN_TEMPERATURE
from ..operations import Op, operation, vsa_and_dimension
from ..payload import Payload
from ..responses import check_response_size, number_bytes
from ..state import ClassifierEntry
from .named import NamedKind, add_named_routes

routes = web.RouteTableDef()

PROTOTYPE_BYTES = 8  # per element of the (num_classes, D) prototypes and the fit's per-class sums


def _build(op: Op, p: Payload) -> Callable[[], ClassifierEntry]:
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
    return lambda: ClassifierEntry(
        Centroid(num_classes, dimension, device=op.worker.device, temperature=temperature), model.name
    )


def _info(name: str, entry: ClassifierEntry) -> dict[str, Any]:
    return {
        "name": name,
        "vsa": entry.vsa,
        "dimension": entry.model.dim,
        "num_classes": entry.model.num_classes,
        "fitted": entry.model.weights is not None,
        "samples_seen": entry.samples_seen,
    }


CLASSIFIERS: NamedKind[ClassifierEntry] = NamedKind(
    kind="classifier",
    collection="/v1/classifiers",
    list_field="classifiers",
    entries=lambda worker: worker.classifiers,
    build=_build,
    save=lambda worker, name, entry: worker.store.save_classifier(name, entry),
    info=_info,
)
add_named_routes(routes, CLASSIFIERS)


async def _samples(op: Op, p: Payload, entry: ClassifierEntry) -> Hypervectors:
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
    await op.worker.wait_state()
    name = op.path_name()
    p = await op.read()
    entry = op.worker.classifiers.get(name)
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

    def fit() -> ClassifierEntry:
        current = op.worker.classifiers.get(name)
        if partial:
            current.model.partial_fit(x, y, adaptive=adaptive, lr=lr)
            current.samples_seen += x.shape[0]
        else:
            current.model.fit(x, y, epochs=epochs, adaptive=adaptive, lr=lr)
            current.samples_seen = x.shape[0]
        op.worker.store.save_classifier(name, current)
        return current

    entry = await op.kernel(fit)
    return await op.respond(_info(name, entry))


@routes.post("/v1/classifiers/{name}/predict")
@operation("classifier_predict")
async def classifier_predict(op: Op) -> web.Response:
    await op.worker.wait_state()
    name = op.path_name()
    p = await op.read()
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
