"""One small, lazy registry for backbones, weight sources and datasets.

A :class:`Registry` maps names to objects. Objects come from two places:

* cxrkit itself registers with the :meth:`Registry.register` decorator inside
  the modules listed as ``builtin_modules``; those modules are imported the
  first time the registry is consulted, not when cxrkit is imported;
* any installed distribution may declare an entry point in the registry's
  group (``cxrkit.weights``, ``cxrkit.backbones``, ``cxrkit.datasets``). Entry
  points are discovered when first needed and re-scanned on a miss, so a
  package installed after import is still found; each is imported only when
  its name is asked for.

Set ``CXRKIT_DISABLE_PLUGIN_AUTOLOAD=1`` to ignore entry points entirely.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

__all__ = [
    "Registry",
    "RegistryError",
    "PluginLoadWarning",
    "Entry",
    "weights",
    "backbones",
    "datasets",
    "REGISTRIES",
    "plugin_autoload_enabled",
]

logger = logging.getLogger(__name__)

DISABLE_ENV = "CXRKIT_DISABLE_PLUGIN_AUTOLOAD"


class RegistryError(LookupError):
    """An unknown name, or a name claimed by two origins."""


class PluginLoadWarning(UserWarning):
    """A third-party entry point could not be imported; the rest keeps working."""


def plugin_autoload_enabled() -> bool:
    """Whether entry-point discovery is on (``CXRKIT_DISABLE_PLUGIN_AUTOLOAD`` unset or false).

    Raises:
        ValueError: the variable holds no boolean spelling; the message names it.
    """
    from cxrkit import options

    return not options.flag(os.environ.get(DISABLE_ENV), DISABLE_ENV)


@dataclass
class Entry:
    """One registered name.

    Attributes:
        name: the registry key.
        origin: where it comes from, e.g. ``cxrkit.weights.builtin:IMAGENET`` or
            ``entry point 'x = pkg:obj' of distribution 'cxrkit-xrv'``.
        distribution: the providing distribution's name (``cxrkit`` for built-ins).
        obj: the object, once loaded.
        entry_point: the not-yet-loaded entry point, if any.
        conflicts: origins of other registrations of the same name.
    """

    name: str
    origin: str
    distribution: str
    obj: Any = None
    entry_point: md.EntryPoint | None = None
    conflicts: tuple[str, ...] = ()
    error: str | None = None

    @property
    def loaded(self) -> bool:
        return self.entry_point is None


def _describe(obj: Any) -> str:
    text = getattr(obj, "description", None)
    if not isinstance(text, str) or not text:
        text = (getattr(obj, "__doc__", None) or "").strip()
    return text.splitlines()[0].strip() if text else ""


def _ep_origin(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    dist_name = dist.metadata["Name"] if dist is not None else "unknown distribution"
    return f"entry point '{ep.name} = {ep.value}' of distribution '{dist_name}'", dist_name


class Registry:
    """A name -> object map with lazy built-ins and lazy entry points.

    Args:
        kind: human name used in messages, e.g. ``"weight source"``.
        group: entry-point group, e.g. ``"cxrkit.weights"``.
        builtin_modules: modules imported on first use; they register with
            :meth:`register`.

    Example:
        >>> reg = Registry("thing", "example.things")
        >>> @reg.register("one")
        ... def make_one():
        ...     "Makes one."
        ...     return 1
        >>> reg.get("one")()
        1
    """

    def __init__(self, kind: str, group: str, builtin_modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.group = group
        self.builtin_modules = tuple(builtin_modules)
        self._entries: dict[str, Entry] = {}
        self._builtins_loaded = False
        self._seen_eps: set[tuple[str, str, str]] = set()
        self._lock = threading.RLock()

    # -- registration -------------------------------------------------------------
    def register(self, name: str | None = None, obj: Any = None, *, origin: str | None = None):
        """Register ``obj`` under ``name``; usable as a decorator.

        Args:
            name: the key; defaults to the object's ``name`` attribute or ``__name__``.
            obj: the object. When omitted, returns a decorator.
            origin: override the recorded origin (default: ``module:qualname``).

        Returns:
            ``obj`` (so the decorator leaves the function unchanged).

        Raises:
            RegistryError: the name is already registered; the message names both origins.
        """
        if obj is None and not isinstance(name, str) and name is not None:
            name, obj = None, name  # @register used without parentheses on an object
        if obj is None:
            return lambda o: self.register(name, o, origin=origin)
        key = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
        if not isinstance(key, str) or not key:
            raise RegistryError(f"cannot infer a {self.kind} name for {obj!r}; pass name=")
        where = origin or f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', key)}"
        with self._lock:
            self._add(Entry(key, where, "cxrkit", obj=obj), strict=True)
        return obj

    def _add(self, entry: Entry, strict: bool) -> None:
        old = self._entries.get(entry.name)
        if old is None:
            self._entries[entry.name] = entry
            return
        msg = (
            f"{self.kind} '{entry.name}' is registered twice: by {old.origin} and by {entry.origin}. "
            "Uninstall one of the two distributions, or rename one of them."
        )
        if strict:
            raise RegistryError(msg)
        old.conflicts = old.conflicts + (entry.origin,)
        warnings.warn(msg, PluginLoadWarning, stacklevel=3)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (mainly for tests)."""
        with self._lock:
            self._entries.pop(name, None)

    # -- discovery ----------------------------------------------------------------
    def _ensure_builtins(self) -> None:
        if self._builtins_loaded:
            return
        with self._lock:
            if self._builtins_loaded:
                return
            self._builtins_loaded = True
            for module in self.builtin_modules:
                importlib.import_module(module)

    def _scan_entry_points(self) -> None:
        if not plugin_autoload_enabled():
            return
        importlib.invalidate_caches()
        with self._lock:
            for ep in md.entry_points(group=self.group):
                origin, dist = _ep_origin(ep)
                key = (ep.name, ep.value, dist)
                if key in self._seen_eps:
                    continue
                self._seen_eps.add(key)
                if dist == "cxrkit" and ep.name in self._entries:
                    continue  # cxrkit's own entry points mirror its built-ins
                self._add(Entry(ep.name, origin, dist, entry_point=ep), strict=False)

    def _refresh(self) -> None:
        self._ensure_builtins()
        self._scan_entry_points()

    def _load(self, entry: Entry) -> Any:
        if entry.entry_point is not None:
            ep = entry.entry_point
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break cxrkit
                entry.error = f"{type(exc).__name__}: {exc}"
                raise RegistryError(
                    f"{self.kind} '{entry.name}' from {entry.origin} failed to import: {entry.error}. "
                    f"Reinstall or uninstall the distribution '{entry.distribution}'."
                ) from exc
            entry.obj, entry.entry_point = obj, None
        return entry.obj

    # -- lookup -------------------------------------------------------------------
    def names(self) -> list[str]:
        """Sorted names of everything registered or discoverable (nothing is imported)."""
        self._refresh()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._refresh()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def entry(self, name: str) -> Entry:
        """The :class:`Entry` for ``name`` (not loaded).

        Raises:
            RegistryError: unknown name; the message lists known names and the closest match.
        """
        self._refresh()
        if name not in self._entries:
            self._scan_entry_points()  # installed since the last scan?
        if name not in self._entries:
            known = sorted(self._entries)
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} '{name}'.{hint} Known: {', '.join(known) or '(none)'}."
            )
        return self._entries[name]

    def get(self, name: str) -> Any:
        """The object registered as ``name``, importing its entry point if needed.

        Raises:
            RegistryError: unknown name, a name claimed twice, or a plugin that fails to import.
        """
        entry = self.entry(name)
        if entry.conflicts:
            raise RegistryError(
                f"{self.kind} '{name}' is registered twice: by {entry.origin} and by "
                f"{' and by '.join(entry.conflicts)}. Uninstall one of them."
            )
        return self._load(entry)

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def rows(self) -> list[tuple[str, str, str]]:
        """``(name, description, distribution)`` for every entry, loading each.

        A plugin that fails to import is reported with a :class:`PluginLoadWarning`
        naming its distribution and shown as broken; the others are unaffected.
        """
        out = []
        for name in self.names():
            entry = self._entries[name]
            try:
                obj = self._load(entry)
                desc = _describe(obj)
            except RegistryError as exc:
                warnings.warn(str(exc), PluginLoadWarning, stacklevel=2)
                desc = f"BROKEN: {entry.error}"
            if entry.conflicts:
                desc = f"CLASH with {', '.join(entry.conflicts)}"
            out.append((name, desc, entry.distribution))
        return out

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r})"


weights = Registry("weight source", "cxrkit.weights", ("cxrkit.weights.builtin", "cxrkit.weights.foundation"))
backbones = Registry(
    "backbone", "cxrkit.backbones", ("cxrkit.networks.backbones", "cxrkit.networks.vit", "cxrkit.networks.convnets")
)
datasets = Registry("dataset", "cxrkit.datasets", ("cxrkit.data.builtin",))

REGISTRIES: dict[str, Registry] = {"weights": weights, "backbones": backbones, "datasets": datasets}

