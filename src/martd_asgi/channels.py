"""Channel names, attributes, etags and messages: pure values and validation."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest
from .wsframe import Outgoing

NAME_RE = re.compile(r"[A-Za-z0-9_.:@~\-]{1,128}\Z")
ETAG_RE = re.compile(r"[A-Za-z0-9._\-]{1,64}\Z")
RESERVED = frozenset({"martd"})

DEFAULT_SIZE = 10
DEFAULT_LIFE = 3600
MAX_SIZE = 10000
MAX_LIFE = 2592000
MAX_KEY = 256


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise BadRequest(
            "channel: a name is 1 to 128 characters of A-Z a-z 0-9 _ . : @ ~ -", field="channel"
        )
    if name in RESERVED:
        raise BadRequest(f"channel: the name {name!r} is reserved", field="channel")
    return name


def parse_channels(spec: str, limit: int) -> list[str]:
    names = spec.split(",")
    if len(names) > limit:
        raise BadRequest(f"channels: at most {limit} channels in one subscription")
    seen: set[str] = set()
    for name in names:
        check_name(name)
        if name in seen:
            raise BadRequest(f"channels: {name!r} is listed twice")
        seen.add(name)
    return names


# ---------------------------------------------------------------- attributes


@dataclass(frozen=True)
class Attributes:
    size: int = DEFAULT_SIZE
    life: int = DEFAULT_LIFE
    one2one: bool = False
    presence: bool = False  # v1.1: subscribers are told who joins and leaves


def _int_attr(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: must be a whole number from {low} to {high}") from None
    if not low <= value <= high or not raw.strip().lstrip("+").isdigit():
        raise BadRequest(f"{name}: must be a whole number from {low} to {high}")
    return value


def parse_bool(name: str, raw: str) -> bool:
    text = raw.lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise BadRequest(f"{name}: must be true, false, 1 or 0")


@dataclass(frozen=True)
class PushAttributes:
    """The attributes a push gave, validated; ``None`` where it gave none."""

    size: int | None = None
    life: int | None = None
    one2one: bool | None = None
    key: str | None = None
    presence: bool | None = None

    def resolved(self) -> Attributes:
        return Attributes(
            size=DEFAULT_SIZE if self.size is None else self.size,
            life=DEFAULT_LIFE if self.life is None else self.life,
            one2one=bool(self.one2one),
            presence=bool(self.presence),
        )

    def agrees_with(self, attrs: Attributes) -> str | None:
        """Name the first given attribute that differs from ``attrs``, if any."""
        for name in ("size", "life", "one2one", "presence"):
            mine = getattr(self, name)
            if mine is not None and mine != getattr(attrs, name):
                return name
        return None


def parse_push_attributes(query: Mapping[str, str]) -> PushAttributes:
    size = life = None
    one2one = None
    key = None
    if "size" in query:
        size = _int_attr("size", query["size"], 1, MAX_SIZE)
    if "life" in query:
        life = _int_attr("life", query["life"], 1, MAX_LIFE)
    if "one2one" in query:
        one2one = parse_bool("one2one", query["one2one"])
    if "key" in query:
        key = query["key"]
        if not 1 <= len(key) <= MAX_KEY:
            raise BadRequest(f"key: must be 1 to {MAX_KEY} characters")
    presence = parse_bool("presence", query["presence"]) if "presence" in query else None
    return PushAttributes(size=size, life=life, one2one=one2one, key=key, presence=presence)


# ---------------------------------------------- v1.1: a message's event name and type

EVENT_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}\Z")
TYPE_RE = re.compile(r"[\x20-\x7e]{1,255}\Z")
# Content types that say nothing about the payload: what curl -d and generic
# byte pushers send by default.
UNTYPED = frozenset({"application/x-www-form-urlencoded", "application/octet-stream"})


def check_event(raw: str) -> str:
    if not EVENT_RE.match(raw):
        raise BadRequest(
            "event: an event name is 1 to 64 characters of A-Z a-z 0-9 _ . : -", field="event"
        )
    if raw in RESERVED:
        # ``event: martd`` is how SSE carries control events.
        raise BadRequest(f"event: the name {raw!r} is reserved", field="event")
    return raw


def message_type(raw: str | None) -> str | None:
    """The ``type`` a push's Content-Type gives its message (None: it gives none)."""
    if raw is None:
        return None
    text = raw.strip()
    if not text or text.partition(";")[0].strip().lower() in UNTYPED:
        return None
    if not TYPE_RE.match(text):
        raise BadRequest(
            "type: a content type is 1 to 255 printable ASCII characters", field="type"
        )
    return text


def hash_key(key: str) -> str:
    """Channel keys are stored as SHA-256 digests, never as given."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(stored_hash: str | None, given: str | None) -> bool:
    if stored_hash is None:
        return given is None
    if given is None:
        return False
    return hmac.compare_digest(stored_hash, hash_key(given))


def key_refusal(given: str | None) -> str:
    """Why a push into a keyed channel was refused: no key, or another one."""
    if given is None:
        return "key: this channel needs its key to push"
    return "key: wrong key for this channel"


# ---------------------------------------------------------------------- etags

EtagKey = tuple[int, int]
ZERO: EtagKey = (0, 0)


def check_etag(raw: str) -> str:
    if raw != "0" and not ETAG_RE.match(raw):
        raise BadRequest("etag: an etag is 1 to 64 characters of A-Z a-z 0-9 . _ -")
    return raw


def etag_key(etag: str) -> EtagKey | None:
    """The order of an etag that martd made (``MS-SEQ``); None for anything else."""
    ms, sep, seq = etag.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        return None
    return (int(ms), int(seq))


def format_etag(key: EtagKey) -> str:
    return f"{key[0]}-{key[1]}"


class EtagClock:
    """Etags ``MS-SEQ``: milliseconds since the epoch and a sequence within them.

    They only grow within a process, and since they carry wall-clock time a
    restarted process does not give out an etag again. The Redis backend uses
    stream ids, which have the same shape.
    """

    def __init__(self) -> None:
        self._last: EtagKey = ZERO
        self._lock = threading.Lock()

    def next(self, floor: EtagKey = ZERO) -> EtagKey:
        with self._lock:
            now = int(time.time() * 1000)
            last = max(self._last, floor)
            key = (now, 0) if now > last[0] else (last[0], last[1] + 1)
            self._last = key
            return key


# ------------------------------------------------------------------- messages


class Message:
    """One pushed message. Encodings are made once, on first use, and shared."""

    __slots__ = ("_cache", "channel", "data", "etag", "event", "expires", "key", "type")

    def __init__(
        self,
        channel: str,
        key: EtagKey,
        data: str,
        expires: float,
        *,
        event: str | None = None,
        type: str | None = None,
    ) -> None:
        self.channel = channel
        self.key = key
        self.etag = format_etag(key)
        self.data = data
        self.expires = expires
        self.event = event  # v1.1: the push's event name, if it gave one
        self.type = type  # v1.1: the push's content type, if it kept one
        self._cache: dict[str, Any] = {}

    @property
    def empty(self) -> bool:
        return self.data == ""

    @property
    def size(self) -> int:
        """The payload's length in UTF-8 bytes: what limits on memory count."""
        data = self.data
        if data.isascii():
            return len(data)
        return self.memo("size", _utf8_size)  # type: ignore[no-any-return]

    def encoded(self, kind: str) -> Any:
        """This message encoded for a transport (``sse``, ``sse_data``, ``ws``), made once."""
        try:
            return self._cache[kind]
        except KeyError:
            value = self._cache[kind] = ENCODERS[kind](self)
            return value

    def memo(self, kind: str, make: Callable[[Message], Any]) -> Any:
        """Like ``encoded``, for an encoding that its transport makes."""
        try:
            return self._cache[kind]
        except KeyError:
            value = self._cache[kind] = make(self)
            return value

    def as_json(self) -> dict[str, str]:
        """The message object of long-poll, JSONP and ``?format=json`` SSE."""
        body = {"etag": self.etag, "data": self.data}
        if self.event is not None:
            body["event"] = self.event
        if self.type is not None:
            body["type"] = self.type
        return body

    def __repr__(self) -> str:
        return f"Message({self.channel!r}, {self.etag!r}, {len(self.data)} chars)"


def _utf8_size(msg: Message) -> int:
    return len(msg.data.encode("utf-8", "surrogatepass"))


def sse_data_lines(data: str) -> bytes:
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "".join(f"data: {line}\n" for line in lines).encode()


def _sse_single(msg: Message) -> dict[str, Any]:
    body = b"id: " + msg.etag.encode() + b"\n" + sse_data_lines(msg.data) + b"\n"
    if msg.event is not None:
        body = b"event: " + msg.event.encode() + b"\n" + body
    return {"type": "http.response.body", "body": body, "more_body": True}


def _ws_frame(msg: Message) -> dict[str, Any]:
    # with the frame's bytes, shared by every WebSocket subscriber (wsframe.py)
    return Outgoing(json.dumps({"channel": msg.channel, **msg.as_json()}, ensure_ascii=False))


def _sse_data(msg: Message) -> bytes:
    return sse_data_lines(msg.data)


ENCODERS: dict[str, Any] = {
    "sse": _sse_single,
    "sse_data": _sse_data,
    "ws": _ws_frame,
}


@dataclass
class History:
    """What a subscriber gets first: retained messages after its etag."""

    messages: list[Message]
    missed: bool
    last_etag: str  # newest etag of the channel, "0" when it does not exist
    exists: bool
