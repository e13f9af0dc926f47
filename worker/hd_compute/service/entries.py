"""The worker's named entries (item memories, classifiers): one generic store for both kinds.

Invariants: a name maps to at most one entry; lookups of a missing name raise the 404 ApiError of its kind
(`memory_not_found`, `classifier_not_found`) and adding a taken name the 409 `already_exists`, both naming the
field `name`, so every route answers the same way for both kinds. Mutations run on the kernel thread (the one
writer), reads on the event loop; each mutation is one dict operation, so a reader sees an entry whole or not at
all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from .codec import ApiError

T = TypeVar("T")


class NamedEntries(Generic[T]):
    """Entries of one kind by name. `kind` is the state store's kind and the error codes' prefix ("memory"),
    `described` how a message names one ("item memory")."""

    def __init__(self, kind: str, described: str) -> None:
        self.kind = kind
        self.described = described
        self._entries: dict[str, T] = {}

    def get(self, name: str) -> T:
        entry = self._entries.get(name)
        if entry is None:
            raise ApiError(404, f"{self.kind}_not_found", f"name: no {self.described} named {name!r}", field="name")
        return entry

    def check_free(self, name: str) -> None:
        """409 when `name` is taken (before anything is built or saved under it)."""
        if name in self._entries:
            article = "an" if self.described[0] in "aeiou" else "a"
            raise ApiError(
                409,
                "already_exists",
                f"name: {article} {self.described} named {name!r} exists; delete it first",
                field="name",
            )

    def add(self, name: str, entry: T) -> None:
        self.check_free(name)
        self._entries[name] = entry

    def remove(self, name: str) -> None:
        self.get(name)
        del self._entries[name]

    def load(self, entries: Mapping[str, T]) -> None:
        """Takes the entries read from the state directory at start-up."""
        self._entries.update(entries)

    def sorted_items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))
