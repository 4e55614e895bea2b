"""Disjoint sets (union-find): items that must stay together, such as a patient's images or copies of one image."""

from __future__ import annotations

from typing import Callable, Hashable, Iterable

__all__ = ["DisjointSets"]


class DisjointSets:
    """Union-find over hashable keys, with path halving.

    Args:
        order: sort key choosing each set's representative (the smallest member); default the keys themselves.
    """

    def __init__(self, order: Callable[[Hashable], object] | None = None) -> None:
        self.parent: dict[Hashable, Hashable] = {}
        self.order = order or (lambda key: key)

    def find(self, key: Hashable) -> Hashable:
        """The representative of ``key``'s set (a new key is its own set)."""
        parent = self.parent
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def union(self, a: Hashable, b: Hashable) -> Hashable:
        """Merge the sets of ``a`` and ``b``; returns the representative (the smaller by ``order``)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        low, high = sorted((ra, rb), key=self.order)
        self.parent[high] = low
        return low

    def representatives(self, keys: Iterable[Hashable] | None = None) -> dict[Hashable, Hashable]:
        """``{key: representative}`` for ``keys`` (default every key seen)."""
        return {k: self.find(k) for k in (list(self.parent) if keys is None else keys)}
