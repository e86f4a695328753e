"""Who is a server: the address allow-list, trusted proxies, the bearer secret, tokens.

Pure functions over a request's scope and headers. A request is a server for
every channel by its address or the secret, and for the channels a signed
token's ``publish`` grant names (see ``tokens``). Private channels
(``MARTD_PRIVATE``) need a ``subscribe`` grant, or a server.

A token comes in ``Authorization: Bearer`` (unless that is the secret), in
``?token=`` (EventSource, JSONP and WebSocket cannot send headers) or in the
``martd_auth`` cookie; the grants of every valid one count. The cookie is sent
by browsers on their own, so it is not believed on a request that the browser
marks cross-site (``Sec-Fetch-Site``) unless its ``Origin`` is one of
``MARTD_CORS_ORIGINS``: another site cannot push or read with a visitor's cookie.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from .config import Network, Settings
from .errors import Forbidden, Unauthorized
from .tokens import (
    LEEWAY,
    MIN_SECRET_BYTES,
    Grants,
    InvalidToken,
    User,
    patterns,
    verify_token,
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)
def _parse_ip(text: str) -> Address | None:
    # cached: every request reads its peer's address, and clients come back
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6]:port
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in net for net in networks)


def _forwarded_for(value: str) -> list[str]:
    chain = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, hop = pair.strip().partition("=")
            if name.lower() == "for":
                chain.append(hop)
    return chain


def forwarded_chains(headers: Mapping[str, str]) -> list[list[str]]:
    """The chains of addresses a request passed through, nearest last: one from
    ``Forwarded`` (RFC 7239) and one from ``X-Forwarded-For``, for those present."""
    chains = []
    if "forwarded" in headers:
        chains.append(_forwarded_for(headers["forwarded"]))
    if "x-forwarded-for" in headers:
        chains.append([hop for hop in headers["x-forwarded-for"].split(",") if hop.strip()])
    return chains


def _walk(peer: Address, chain: list[str], trusted: Sequence[Network]) -> Address | None:
    address = peer
    for hop in reversed(chain):
        hop_address = _parse_ip(hop)
        if hop_address is None:
            return None  # an unreadable hop ("unknown", garbage): no address rights
        address = hop_address
        if not _within(address, trusted):
            return address
    return address


def client_address(
    scope: Mapping[str, Any], headers: Mapping[str, str], trusted: Sequence[Network]
) -> Address | None:
    """The client's address: the peer, or what trusted proxies say the peer was.

    Walks each forwarded chain from the nearest hop and stops at the first hop
    that is not a trusted proxy, so a header the client wrote itself is never
    believed. ``None`` (no address rights) when a hop cannot be read, or when
    ``Forwarded`` and ``X-Forwarded-For`` disagree: a proxy writes one of them,
    and the other may be the client's own.
    """
    peer = scope.get("client")
    address = _parse_ip(peer[0]) if peer else None
    if address is None:
        return None
    chains = forwarded_chains(headers)
    if not trusted:
        # A server in front of martd (uvicorn trusts 127.0.0.1 by default) may
        # already have replaced the peer with a forwarded address. martd trusts
        # no proxy unless told to, so such an address proves nothing.
        if any(_parse_ip(hop) == address for chain in chains for hop in chain):
            return None
        return address
    if not _within(address, trusted) or not chains:
        return address
    found = {_walk(address, chain, trusted) for chain in chains}
    return found.pop() if len(found) == 1 else None


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


COOKIE = "martd_auth"


def cookies(headers: Mapping[str, str], name: str = COOKIE) -> list[str]:
    """The values of a cookie in the ``Cookie`` header (several paths may each set one)."""
    raw = headers.get("cookie")
    if not raw:
        return []
    found = []
    for part in raw.replace(",", ";").split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value:
                found.append(value)
    return found


def cross_site(headers: Mapping[str, str], origins: frozenset[str]) -> bool:
    """Whether this request comes from another site not listed for CORS.

    The browser says so with ``Sec-Fetch-Site``; where it does not send that, an
    ``Origin`` whose host differs from the request's ``Host`` says the same.
    """
    origin = headers.get("origin", "").rstrip("/")
    if origin in origins:
        return False
    site = headers.get("sec-fetch-site", "")
    if site:
        return site == "cross-site"
    if not origin or origin == "null":
        return bool(origin)
    host = origin.partition("://")[2]
    return host.lower() != headers.get("host", "").lower()


class Authority:
    """Decides, per request, whether it is a server (for a channel)."""

    CACHE = 1024

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.private = patterns(settings.private)
        self.cookie_origins = frozenset(
            origin.rstrip("/") for origin in settings.cors_origins if origin != "*"
        )
        self._cache: OrderedDict[str, Grants] = OrderedDict()
        self._allowed: dict[Address, bool] = {}  # by address: within settings.allow
        self.any_private_namespace = any(ns.private for ns in settings.namespaces.values())
        signing = settings.signing_secret
        if signing is not None and len(signing.encode()) < MIN_SECRET_BYTES:
            logging.getLogger("martd").warning(
                "the secret that signs tokens is shorter than %d bytes: tokens are easier to"
                " forge; set MARTD_TOKEN_SECRET or MARTD_SECRET to a longer random string",
                MIN_SECRET_BYTES,
            )

    def address(self, scope: Mapping[str, Any], headers: Mapping[str, str]) -> Address | None:
        return client_address(scope, headers, self.settings.trusted_proxies)

    def has_secret(self, headers: Mapping[str, str]) -> bool:
        secret = self.settings.secret
        token = bearer(headers)
        if secret is None or token is None:
            return False
        return hmac.compare_digest(token.encode(), secret.encode())

    def is_server(
        self,
        scope: Mapping[str, Any],
        headers: Mapping[str, str],
        query: Mapping[str, str],
        channel: str | None = None,
    ) -> bool:
        """A server by address or secret (any channel), or by a grant for ``channel``."""
        address = self.address(scope, headers)
        if address is not None:
            allowed = self._allowed.get(address)
            if allowed is None:
                if len(self._allowed) >= 4096:
                    self._allowed.clear()
                allowed = self._allowed[address] = _within(address, self.settings.allow)
            if allowed:
                return True
        if self.has_secret(headers):
            return True
        if channel is not None:
            return self.grants(scope, headers, query, "publish", channel)
        return False

    def verify(self, token: str) -> Grants:
        """A token's grants, verified once and then remembered until it expires."""
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires is None or time.time() <= cached.expires + LEEWAY:
                self._cache.move_to_end(token)
                return cached
            del self._cache[token]
        signing = self.settings.signing_secret
        if signing is None:
            raise InvalidToken("token: tokens are not enabled on this server (no secret)")
        found = verify_token(signing, token)
        self._cache[token] = found
        if len(self._cache) > self.CACHE:
            self._cache.popitem(last=False)
        return found

    def tokens(self, headers: Mapping[str, str], query: Mapping[str, str]) -> list[str]:
        """Every token the request carries: bearer (unless the secret), ``?token=``, cookie."""
        found = []
        given = bearer(headers)
        if given is not None and not self.has_secret(headers):
            found.append(given)
        if query.get("token"):
            found.append(query["token"])
        if "cookie" in headers and not cross_site(headers, self.cookie_origins):
            found.extend(cookies(headers)[:4])
        return found

    def token_grants(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Grants | None:
        """The grants of every valid token together; ``None`` when there is no token.

        Raises ``InvalidToken`` when there are tokens and none of them is valid.
        """
        found = self.tokens(headers, query)
        if not found:
            return None
        grants: Grants | None = None
        error: InvalidToken | None = None
        for token in found:
            try:
                valid = self.verify(token)
            except InvalidToken as exc:
                error = error or exc
                continue
            grants = valid if grants is None else grants | valid
        if grants is None:
            assert error is not None
            raise error
        return grants

    def grants(
        self,
        scope: Mapping[str, Any],
        headers: Mapping[str, str],
        query: Mapping[str, str],
        action: str,
        channel: str,
    ) -> bool:
        """Whether a valid signed token grants ``action`` (publish, subscribe) on ``channel``."""
        try:
            found = self.token_grants(headers, query)
        except InvalidToken:
            return False
        if found is None:
            return False
        if action == "publish":
            return found.may_publish(channel)
        if action == "subscribe":
            return found.may_subscribe(channel)
        return False

    def user(self, headers: Mapping[str, str], query: Mapping[str, str]) -> User:
        """Who the request's valid tokens say their bearer is (``sub``), if they do."""
        try:
            found = self.token_grants(headers, query)
        except InvalidToken:
            return None
        return None if found is None else found.user

    def is_private(self, channel: str) -> bool:
        namespace = self.settings.namespaces.of(channel)
        if namespace is not None and namespace.private is not None:
            return namespace.private
        return any(pattern.matches(channel) for pattern in self.private)

    def check_subscribe(
        self,
        scope: Mapping[str, Any],
        headers: Mapping[str, str],
        query: Mapping[str, str],
        channels: Sequence[str],
    ) -> Grants | None:
        """Raise Unauthorized / Forbidden when a private channel is not granted.

        Returns the grants of the token that granted them (``None`` when no
        channel is private or the request is a server). ``Unauthorized`` means
        exactly that the request has no valid token.
        """
        if not self.private and not self.any_private_namespace:
            return None
        private = [channel for channel in channels if self.is_private(channel)]
        if not private or self.is_server(scope, headers, query):
            return None
        found = self.token_grants(headers, query)
        if found is None:
            raise Unauthorized(
                f"token: {private[0]!r} is private; subscribing needs a token that grants it"
                " (Authorization: Bearer, the martd_auth cookie or ?token=)",
                channel=private[0],
            )
        for channel in private:
            if not found.may_subscribe(channel):
                raise Forbidden(f"token: does not grant subscribe on {channel!r}", channel=channel)
        return found
