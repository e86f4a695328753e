"""Namespaces: classes of channels with rules of their own (``MARTD_NAMESPACES``).

A channel named ``NS:rest`` belongs to namespace ``NS``. The setting is a JSON
object, or the path of a file holding one, mapping each namespace to:

- ``size``, ``life``, ``one2one``, ``presence``: what a server's push that omits
  the attribute gets instead of the global default;
- ``private``: whether its channels need a subscribe grant, instead of what
  ``MARTD_PRIVATE`` says about them;
- ``max_subscribers``: subscribers of one of its channels in one process
  (``0``: no limit), instead of ``MARTD_MAX_SUBSCRIBERS``.

Anything else, or a value out of range, is refused when the settings are read,
with a one-line message naming the namespace, the key and the value.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .channels import MAX_LIFE, MAX_SIZE

NAME_RE = re.compile(r"[A-Za-z0-9_.@~\-]{1,64}\Z")
SEPARATOR = ":"
# The channel attributes a namespace gives defaults for, in the order they are checked.
DEFAULTS = ("size", "life", "one2one", "presence")
_RANGES = {"size": (1, MAX_SIZE), "life": (1, MAX_LIFE), "max_subscribers": (0, 10**9)}
_BOOLS = ("one2one", "presence", "private")

A = TypeVar("A")


@dataclasses.dataclass(frozen=True)
class Namespace:
    """One namespace's settings; ``None`` where it leaves the global behaviour alone."""

    name: str
    size: int | None = None
    life: int | None = None
    one2one: bool | None = None
    presence: bool | None = None
    private: bool | None = None
    max_subscribers: int | None = None

    def defaults(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in DEFAULTS if getattr(self, key) is not None}


KEYS = tuple(f.name for f in dataclasses.fields(Namespace) if f.name != "name")


def namespace_of(channel: str) -> str | None:
    """The namespace a channel name belongs to, by its prefix before ``:``."""
    name, sep, _ = channel.partition(SEPARATOR)
    return name if sep and name else None


class Namespaces(Mapping[str, Namespace]):
    """Every configured namespace, by name; empty when none is."""

    __slots__ = ("_by_name", "_defaults")

    def __init__(self, found: Iterable[Namespace] = ()) -> None:
        self._by_name = {ns.name: ns for ns in found}
        self._defaults = {ns.name: ns.defaults() for ns in self._by_name.values()}

    def __getitem__(self, name: str) -> Namespace:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __hash__(self) -> int:
        return hash(tuple(self._by_name.values()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Namespaces) and self._by_name == other._by_name

    def __repr__(self) -> str:
        return f"Namespaces({sorted(self._by_name)})"

    def of(self, channel: str) -> Namespace | None:
        """The namespace of ``channel``, if it is one of these."""
        if not self._by_name:
            return None
        name = namespace_of(channel)
        return None if name is None else self._by_name.get(name)

    def apply(self, channel: str, attrs: A) -> A:
        """``attrs`` (a push's attributes) with the namespace's defaults where it gave none.

        Only attributes that ``attrs`` has are filled in, so a default for one that
        this server does not know yet is kept and used once it does.
        """
        name = namespace_of(channel) if self._by_name else None
        defaults = self._defaults.get(name) if name is not None else None
        if not defaults:
            return attrs
        missing = {
            key: value
            for key, value in defaults.items()
            if getattr(attrs, key, False) is None  # given by the push: kept
        }
        return dataclasses.replace(attrs, **missing) if missing else attrs  # type: ignore[type-var]

    def counts(
        self, by_channel: Mapping[str, Mapping[Any, Any]], stored: Iterable[str] = ()
    ) -> dict[str, dict[str, int]]:
        """Per namespace: channels this process stores or has subscribers for, and
        their subscribers here."""
        out = {name: {"channels": 0, "subscribers": 0} for name in sorted(self._by_name)}
        if not out:
            return out
        for channel, subs in by_channel.items():
            name = namespace_of(channel)
            if name in out:
                out[name]["channels"] += 1
                out[name]["subscribers"] += len(subs)
        for channel in stored:
            name = namespace_of(channel)
            if name in out and channel not in by_channel:
                out[name]["channels"] += 1
        return out


EMPTY = Namespaces()


def parse(value: Any, label: str = "MARTD_NAMESPACES") -> Namespaces:
    """Namespaces from a JSON object (text or mapping) or the path of a JSON file.

    Raises ``ValueError`` with one line that names ``label``, the namespace and
    the key or value at fault.
    """
    if isinstance(value, Namespaces):
        return value
    if value is None:
        return EMPTY
    if isinstance(value, str | Path):
        value = _load(str(value), label)
    if not isinstance(value, Mapping):
        raise ValueError(f"{label}: must be a JSON object mapping namespace names to settings")
    found = []
    for name, settings in value.items():
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError(
                f"{label}: {str(name)[:70]!r} is not a namespace name"
                " (1 to 64 characters of A-Z a-z 0-9 _ . @ ~ -; channels are named NS:...)"
            )
        if not isinstance(settings, Mapping):
            raise ValueError(f"{label}: {name!r} must map to an object of settings")
        found.append(_namespace(name, settings, label))
    return Namespaces(found)


def _load(text: str, label: str) -> Any:
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        path = Path(stripped).expanduser()
        try:
            stripped = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(
                f"{label}: no such file {str(path)[:200]!r}"
                " (give a JSON object, or the path of a file holding one)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{label}: cannot read {str(path)[:200]!r}: {exc}") from None
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{label}: not valid JSON ({exc})") from None


def _show(value: Any) -> str:
    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):
        return repr(value)[:60]


def _namespace(name: str, settings: Mapping[str, Any], label: str) -> Namespace:
    values: dict[str, Any] = {}
    for key, value in settings.items():
        where = f"{label}: namespace {name!r}"
        shown = _show(value)
        if key not in KEYS:
            raise ValueError(f"{where}: unknown key {str(key)[:60]!r} (known: {', '.join(KEYS)})")
        if key in _BOOLS:
            if not isinstance(value, bool):
                raise ValueError(f"{where}: {key} must be true or false, not {shown}")
        else:
            low, high = _RANGES[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"{where}: {key} must be a whole number from {low} to {high}, not {shown}"
                )
        values[key] = value
    return Namespace(name, **values)


__all__ = ["EMPTY", "Namespace", "Namespaces", "namespace_of", "parse"]
