"""Create, list, get and delete of a kind of named entry (item memories, classifiers): one set of handlers for both.

A kind differs only in how an entry is built from a create request, described, and saved; the rest (name checks,
404 and 409 answers, the kernel thread as the one writer, snapshots before the answer) is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web

from ..entries import NamedEntries
from ..operations import Op, entry_name, operation
from ..payload import Payload
from ..worker import Worker

T = TypeVar("T")


@dataclass(frozen=True)
class NamedKind(Generic[T]):
    """What the shared handlers need to know about one kind of entry."""

    kind: str  # "memory": operations memory_create, memory_list, ...; state store kind
    collection: str  # "/v1/memories"
    list_field: str  # "memories": the list's field in GET <collection>
    entries: Callable[[Worker], NamedEntries[T]]
    build: Callable[[Op, Payload], Callable[[], T]]  # parses a create request; the factory runs on the kernel thread
    save: Callable[[Worker, str, T], None]  # writes the entry's snapshot (kernel thread)
    info: Callable[[str, T], dict[str, Any]]  # what create, get and list answer about an entry
    details: Callable[[T], dict[str, Any]] = lambda entry: {}  # what GET <collection>/{name} adds to info


def add_named_routes(routes: web.RouteTableDef, named: NamedKind[T]) -> None:
    """Adds POST/GET <collection> and GET/DELETE <collection>/{name} for `named` to `routes`."""

    @routes.post(named.collection)
    @operation(f"{named.kind}_create")
    async def create(op: Op) -> web.Response:
        p = await op.read()
        name = entry_name(p.text("name", required=True))
        factory = named.build(op, p)
        await op.worker.wait_state()
        entries = named.entries(op.worker)

        def create_entry() -> T:
            entries.check_free(name)
            entry = factory()
            named.save(op.worker, name, entry)
            entries.add(name, entry)
            return entry

        entry = await op.kernel(create_entry)
        return await op.respond(named.info(name, entry), status=201)

    @routes.get(named.collection, allow_head=False)
    @operation(f"{named.kind}_list")
    async def list_entries(op: Op) -> web.Response:
        await op.worker.wait_state()
        listed = [named.info(name, entry) for name, entry in named.entries(op.worker).sorted_items()]
        return await op.respond({named.list_field: listed})

    @routes.get(named.collection + "/{name}", allow_head=False)
    @operation(f"{named.kind}_get")
    async def get(op: Op) -> web.Response:
        await op.worker.wait_state()
        name = op.path_name()
        entry = named.entries(op.worker).get(name)
        return await op.respond({**named.info(name, entry), **named.details(entry)})

    @routes.delete(named.collection + "/{name}")
    @operation(f"{named.kind}_delete")
    async def delete(op: Op) -> web.Response:
        await op.worker.wait_state()
        name = op.path_name()
        entries = named.entries(op.worker)
        entries.get(name)

        def delete_entry() -> None:
            entries.get(name)
            op.worker.store.delete(named.kind, name)
            entries.remove(name)

        await op.kernel(delete_entry)
        op.worker.update_state_gauges()
        return await op.respond({"deleted": name})
