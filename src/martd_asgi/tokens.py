"""Signed tokens: HS256 JWTs that grant ``publish`` and ``subscribe`` on channels.

The claims are ``{"martd": {"publish": [...], "subscribe": [...]}, "exp": ...}``;
each entry is a channel name or a pattern where ``*`` matches any run of
characters (none included). Only HS256 is accepted: a token that names any other
algorithm, ``none`` included, is invalid. ``exp`` is honoured with a leeway of
a few seconds for clocks that disagree; a token minted with ``ttl=None`` has no
``exp`` and never expires, so treat it like the secret itself.

Errors::

    Unauthorized (401)
     └── InvalidToken     malformed, wrong signature or algorithm, expired
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from .errors import Unauthorized

ALGORITHM = "HS256"
CLAIM = "martd"
LEEWAY = 5.0
MAX_PATTERN = 256
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
_PATTERN_RE = re.compile(r"[A-Za-z0-9_.:@~*\-]{1,256}\Z")

__all__ = [
    "ALGORITHM",
    "Grants",
    "InvalidToken",
    "Pattern",
    "mint_token",
    "verify_token",
]


class InvalidToken(Unauthorized):
    """A token that cannot be believed. The message never quotes the token."""


class Pattern:
    """A channel name, or a glob where ``*`` matches any run of characters.

    Matching splits the pattern on ``*`` and finds the pieces left to right, so
    it takes time linear in the name per piece, whatever the pattern: no regular
    expression, no backtracking, and ``.`` or ``:`` mean only themselves.
    """

    __slots__ = ("_pieces", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not _PATTERN_RE.match(text):
            raise ValueError(
                f"pattern {str(text)[:40]!r}: 1 to {MAX_PATTERN} characters of "
                "A-Z a-z 0-9 _ . : @ ~ - and *"
            )
        self.text = text
        self._pieces = text.split("*")

    def matches(self, name: str) -> bool:
        pieces = self._pieces
        if len(pieces) == 1:
            return name == pieces[0]
        first, last = pieces[0], pieces[-1]
        if len(name) < len(first) + len(last):
            return False
        if not name.startswith(first) or not name.endswith(last):
            return False
        at, end = len(first), len(name) - len(last)
        for piece in pieces[1:-1]:
            if not piece:
                continue
            found = name.find(piece, at, end)
            if found < 0:
                return False
            at = found + len(piece)
        return True

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


def patterns(entries: Iterable[str]) -> tuple[Pattern, ...]:
    return tuple(Pattern(entry) for entry in entries)


def any_match(found: Sequence[Pattern], name: str) -> bool:
    return any(pattern.matches(name) for pattern in found)


User = str | int | None


@dataclass(frozen=True)
class Grants:
    """What a verified token (or the site's auth hook) allows. A server for a
    channel may also subscribe to it. ``user`` is who the grants are for: a
    token's ``sub`` claim, or the ``user`` the auth hook answered."""

    publish: tuple[Pattern, ...] = ()
    subscribe: tuple[Pattern, ...] = ()
    expires: float | None = None
    user: User = None

    def may_publish(self, channel: str) -> bool:
        return any_match(self.publish, channel)

    def may_subscribe(self, channel: str) -> bool:
        return any_match(self.subscribe, channel) or any_match(self.publish, channel)

    def __or__(self, other: Grants) -> Grants:
        ends = [e for e in (self.expires, other.expires) if e is not None]
        return Grants(
            self.publish + other.publish,
            self.subscribe + other.subscribe,
            min(ends) if ends else None,
            self.user if self.user is not None else other.user,
        )


def _entries(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    entries = list(value)
    for entry in entries:
        Pattern(entry)  # raises ValueError naming the bad entry
    return entries


@contextlib.contextmanager
def _short_keys_allowed(secret: str) -> Iterator[None]:
    # PyJWT warns on every use of a short key; the server says so once at startup.
    if len(secret.encode()) >= MIN_SECRET_BYTES:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        yield


def mint_token(
    secret: str,
    *,
    publish: Sequence[str] = (),
    subscribe: Sequence[str] = (),
    ttl: float | None = 3600,
    **claims: Any,
) -> str:
    """A signed token granting ``publish`` / ``subscribe`` on these names or patterns.

    ``ttl`` is seconds from now until it expires (``None``: never). Other keyword
    arguments become claims of their own (``sub="user-42"``); an ``exp`` given
    there wins over ``ttl``.
    """
    if not isinstance(secret, str) or not secret:
        raise ValueError("secret: a token needs a non-empty secret")
    if CLAIM in claims:
        raise TypeError(f"{CLAIM}: give publish= and subscribe= instead")
    payload: dict[str, Any] = dict(claims)
    payload[CLAIM] = {
        "publish": _entries(publish),
        "subscribe": _entries(subscribe),
    }
    now = time.time()
    payload.setdefault("iat", int(now))
    if ttl is not None and "exp" not in payload:
        if not ttl > 0:
            raise ValueError("ttl: seconds until the token expires, more than 0 (or None)")
        payload["exp"] = int(now + ttl + 0.999)
    with _short_keys_allowed(secret):
        return jwt.encode(payload, secret, algorithm=ALGORITHM)


def _decode(secret: str, token: str) -> dict[str, Any]:
    with _short_keys_allowed(secret):
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=[ALGORITHM], leeway=LEEWAY, options={"verify_exp": True}
        )
    return claims


def verify_token(secret: str, token: str) -> Grants:
    """The grants of a token signed with ``secret``; ``InvalidToken`` otherwise."""
    if not secret:
        raise InvalidToken("token: tokens are not enabled on this server (no secret)")
    if not isinstance(token, str) or not token or len(token) > 8192:
        raise InvalidToken("token: malformed")
    try:
        claims = _decode(secret, token)
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token: expired") from None
    except jwt.InvalidAlgorithmError:
        raise InvalidToken(f"token: signed with another algorithm than {ALGORITHM}") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken("token: signature does not match") from None
    except jwt.ImmatureSignatureError:
        raise InvalidToken("token: not valid yet") from None
    except jwt.InvalidTokenError:
        raise InvalidToken("token: malformed") from None
    grant = claims.get(CLAIM, {})
    if not isinstance(grant, dict):
        raise InvalidToken(f"token: the {CLAIM} claim must be an object")
    try:
        publish = patterns(_entries(grant.get("publish", ())))
        subscribe = patterns(_entries(grant.get("subscribe", ())))
    except (TypeError, ValueError):
        raise InvalidToken(
            f"token: the {CLAIM} claim lists something that is not a pattern"
        ) from None
    exp = claims.get("exp")
    sub = claims.get("sub")
    return Grants(
        publish,
        subscribe,
        float(exp) if isinstance(exp, (int, float)) else None,
        sub if isinstance(sub, str | int) and not isinstance(sub, bool) else None,
    )
