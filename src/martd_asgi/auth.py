"""Who is a server: the address allow-list, trusted proxies, the bearer secret.

Pure functions over a request's scope and headers. Signed tokens (grants per
channel) plug in through ``Authority.grants``.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from .config import Network, Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_ip(text: str) -> Address | None:
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


def forwarded_chain(headers: Mapping[str, str]) -> list[str]:
    """Addresses a request passed through, nearest last (RFC 7239 first, then XFF)."""
    if "forwarded" in headers:
        chain = []
        for element in headers["forwarded"].split(","):
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.lower() == "for":
                    chain.append(value)
        return chain
    if "x-forwarded-for" in headers:
        return [part for part in headers["x-forwarded-for"].split(",") if part.strip()]
    return []


def client_address(
    scope: Mapping[str, Any], headers: Mapping[str, str], trusted: Sequence[Network]
) -> Address | None:
    """The client's address: the peer, or what trusted proxies say the peer was.

    Walks the forwarded chain from the nearest hop and stops at the first hop
    that is not a trusted proxy, so a header the client wrote itself is never
    believed.
    """
    peer = scope.get("client")
    address = _parse_ip(peer[0]) if peer else None
    if address is None:
        return None
    if not trusted:
        # A server in front of martd (uvicorn trusts 127.0.0.1 by default) may
        # already have replaced the peer with a forwarded address. martd trusts
        # no proxy unless told to, so such an address proves nothing.
        chain = forwarded_chain(headers)
        if chain and any(_parse_ip(hop) == address for hop in chain):
            return None
        return address
    if not _within(address, trusted):
        return address
    for hop in reversed(forwarded_chain(headers)):
        hop_address = _parse_ip(hop)
        if hop_address is None:
            return address  # an unreadable hop: trust nothing beyond it
        address = hop_address
        if not _within(address, trusted):
            return address
    return address


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authority:
    """Decides, per request, whether it is a server (for a channel)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

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
        if address is not None and _within(address, self.settings.allow):
            return True
        if self.has_secret(headers):
            return True
        if channel is not None:
            return self.grants(scope, headers, query, "publish", channel)
        return False

    def grants(
        self,
        scope: Mapping[str, Any],
        headers: Mapping[str, str],
        query: Mapping[str, str],
        action: str,
        channel: str,
    ) -> bool:
        """Whether a signed token grants ``action`` on ``channel`` (see tokens)."""
        return False

    def check_subscribe(
        self,
        scope: Mapping[str, Any],
        headers: Mapping[str, str],
        query: Mapping[str, str],
        channels: Sequence[str],
    ) -> None:
        """Raise Unauthorized / Forbidden when a private channel is not granted."""
        return None
