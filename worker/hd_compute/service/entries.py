"""The worker's named entries (item memories, classifiers): one view of both kinds over the state's cache.

Invariants: the entries are the follower's cache (service/state.py), never changed here: writes go through the
state store and reach every replica's cache by the log. A lookup of a missing name raises the 404 ApiError of its
kind (`memory_not_found`, `classifier_not_found`), and the store's refusal of a taken name becomes the 409
`already_exists`, both naming the field `name`, so every route answers the same way for both kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from .codec import ApiError

T = TypeVar("T")


class NamedEntries(Generic[T]):
    """Entries of one kind by name. `kind` is the state store's kind and the error codes' prefix ("memory"),
    `described` how a message names one ("item memory"); `lookup(name)` raises LookupError for a missing name and
    `listing()` returns every entry by name."""

    def __init__(
        self, kind: str, described: str, lookup: Callable[[str], T], listing: Callable[[], Mapping[str, T]]
    ) -> None:
        self.kind = kind
        self.described = described
        self._lookup = lookup
        self._listing = listing

    def get(self, name: str) -> T:
        try:
            return self._lookup(name)
        except LookupError:
            raise self.not_found(name) from None

    def not_found(self, name: str) -> ApiError:
        return ApiError(404, f"{self.kind}_not_found", f"name: no {self.described} named {name!r}", field="name")

    def already_exists(self, name: str) -> ApiError:
        article = "an" if self.described[0] in "aeiou" else "a"
        return ApiError(
            409,
            "already_exists",
            f"name: {article} {self.described} named {name!r} exists; delete it first",
            field="name",
        )

    def sorted_items(self) -> list[tuple[str, T]]:
        return sorted(self._listing().items())

    def values(self) -> list[T]:
        return list(self._listing().values())

    def __contains__(self, name: object) -> bool:
        return name in self._listing()

    def __len__(self) -> int:
        return len(self._listing())

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._listing()))
