"""Settings: one frozen dataclass, filled from ``MARTD_*`` variables and keywords.

Every field is documented in ``FIELDS`` so that the configuration reference in
docs/ is generated from this module and cannot drift.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .backends import check_url as check_backend_url
from .namespaces import EMPTY, Namespaces
from .namespaces import parse as parse_namespaces

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# name -> (environment variable, help text)
FIELDS: dict[str, tuple[str, str]] = {
    "backend": ("MARTD_BACKEND", "`memory`, or a `redis://` / `rediss://` / `unix://` URL"),
    "allow": ("MARTD_ALLOW", "comma-separated addresses / CIDR blocks whose requests are servers"),
    "trusted_proxies": (
        "MARTD_TRUSTED_PROXIES",
        "addresses / CIDR blocks whose `X-Forwarded-For` / `Forwarded` are believed",
    ),
    "secret": ("MARTD_SECRET", "server secret for `Authorization: Bearer`; also signs tokens"),
    "token_secret": (
        "MARTD_TOKEN_SECRET",
        "signs and verifies tokens instead of `MARTD_SECRET` (which is the default)",
    ),
    "private": (
        "MARTD_PRIVATE",
        "comma-separated channel-name patterns that need a subscribe grant",
    ),
    "cors_origins": ("MARTD_CORS_ORIGINS", "origins allowed from another origin (`*` for any)"),
    "poll_timeout": ("MARTD_POLL_TIMEOUT", "seconds a long-poll waits at most"),
    "ping": ("MARTD_PING", "seconds between keep-alives on streams"),
    "max_payload": ("MARTD_MAX_PAYLOAD", "largest payload in bytes"),
    "max_channels": ("MARTD_MAX_CHANNELS", "channels in one subscription"),
    "hold": ("MARTD_HOLD", "seconds a one2one hold outlives its last connection"),
    "demo": ("MARTD_DEMO", "`1` serves `/demo`, `0` does not"),
    "dashboard": (
        "MARTD_DASHBOARD",
        "`1` serves `/dashboard`, a live picture of this process, to servers (like `/stats`);"
        " `0` does not",
    ),
    "sub_buffer_messages": (
        "MARTD_SUB_BUFFER_MESSAGES",
        "messages a subscriber may fall behind before it is disconnected",
    ),
    "sub_buffer_bytes": (
        "MARTD_SUB_BUFFER_BYTES",
        "bytes a subscriber may fall behind before it is disconnected",
    ),
    "sub_stall": (
        "MARTD_SUB_STALL",
        "seconds a subscriber's connection may stay blocked before it is disconnected",
    ),
    "sub_sndbuf": (
        "MARTD_SUB_SNDBUF",
        "bytes of kernel send buffer for each stream connection (`0`: the kernel's own sizing)",
    ),
    "grace": ("MARTD_GRACE", "seconds given to open connections to close on shutdown"),
    "gc_tune": (
        "MARTD_GC_TUNE",
        "`1`: when martd is the server's app, freeze start-up objects and collect garbage"
        " less often (`0` leaves the collector alone; a host app's is never touched)",
    ),
    "gc_interval": (
        "MARTD_GC_INTERVAL",
        "seconds between full garbage collections (and returning free heap to the system) when"
        " martd tunes the collector (`0`: never)",
    ),
    "max_channels_total": (
        "MARTD_MAX_CHANNELS_TOTAL",
        "channels one process stores or has subscribers for (`0`: no limit)",
    ),
    "max_subscribers": (
        "MARTD_MAX_SUBSCRIBERS",
        "subscribers of one channel in one process (`0`: no limit)",
    ),
    "max_connections_per_address": (
        "MARTD_MAX_CONNECTIONS_PER_ADDRESS",
        "open subscriptions from one client address; servers are exempt (`0`: no limit)",
    ),
    "max_channels_per_address": (
        "MARTD_MAX_CHANNELS_PER_ADDRESS",
        "channels one client address may be subscribed to at once, each counted once however"
        " many of its subscriptions name it; servers are exempt (`0`: no limit)",
    ),
    "push_rate": (
        "MARTD_PUSH_RATE",
        "pushes per second for one key-holder on one channel (`0`: no limit)",
    ),
    "push_burst": (
        "MARTD_PUSH_BURST",
        "pushes a key-holder may make at once before the rate applies",
    ),
    "max_retained_bytes": (
        "MARTD_MAX_RETAINED_BYTES",
        "memory backend: bytes of retained messages; the oldest of the largest channels go first"
        " (`0`: no limit)",
    ),
    "log_format": ("MARTD_LOG_FORMAT", "`text`, or `json` for one JSON object per log line"),
    "lease": (
        "MARTD_LEASE",
        "Redis backend: seconds a process's subscribers and presence stay counted without"
        " renewal; a crashed process's clients leave within it",
    ),
    "presence_rate": (
        "MARTD_PRESENCE_RATE",
        "frames per second that one channel's join/leave events may cost in one process"
        " (each event costs one frame per subscriber told)",
    ),
    "namespaces": (
        "MARTD_NAMESPACES",
        "a JSON object, or the path of a JSON file, mapping a namespace NS to settings for every"
        " channel named `NS:...`: `size`, `life`, `one2one`, `presence` (defaults for what a"
        " push omits), `private` (instead of `MARTD_PRIVATE`), `max_subscribers` (per channel,"
        " instead of `MARTD_MAX_SUBSCRIBERS`)",
    ),
    "auth_url": (
        "MARTD_AUTH_URL",
        "the site's auth hook: martd POSTs a private channel's subscriber's `Cookie` and"
        " `Authorization` there when it has no valid token (a path like `/martd-auth` means"
        " that path on `martd serve --upstream`)",
    ),
    "auth_timeout": ("MARTD_AUTH_TIMEOUT", "seconds martd waits for the auth hook (then `503`)"),
    "idempotency_ttl": (
        "MARTD_IDEMPOTENCY_TTL",
        "seconds an `Idempotency-Key` is remembered per channel (`0`: keys are checked, not"
        " remembered)",
    ),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    backend: str = dataclasses.field(default="memory", repr=False)  # may hold a password
    allow: tuple[Network, ...] = (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    trusted_proxies: tuple[Network, ...] = ()
    secret: str | None = dataclasses.field(default=None, repr=False)
    token_secret: str | None = dataclasses.field(default=None, repr=False)
    private: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    poll_timeout: float = 30.0
    ping: float = 15.0
    max_payload: int = 65536
    max_channels: int = 64
    hold: float = 30.0
    demo: bool = True
    dashboard: bool = True
    sub_buffer_messages: int = 1000
    sub_buffer_bytes: int = 4 * 1024 * 1024
    sub_stall: float = 30.0
    grace: float = 4.0
    gc_tune: bool = True
    gc_interval: float = 60.0
    sub_sndbuf: int = 0
    max_channels_total: int = 100_000
    max_subscribers: int = 0
    max_connections_per_address: int = 1000
    max_channels_per_address: int = 1000
    push_rate: float = 20.0
    push_burst: int = 40
    max_retained_bytes: int = 256 * 1024 * 1024
    log_format: str = "text"
    lease: float = 30.0
    presence_rate: float = 5_000.0
    namespaces: Namespaces = EMPTY
    auth_url: str | None = dataclasses.field(default=None, repr=False)  # may hold a password
    auth_timeout: float = 5.0
    idempotency_ttl: float = 600.0

    @property
    def signing_secret(self) -> str | None:
        """The secret that signs tokens: ``token_secret``, else ``secret``."""
        return self.token_secret or self.secret

    def __post_init__(self) -> None:
        for name, low in (
            ("poll_timeout", 1),
            ("ping", 0.05),
            ("max_payload", 1),
            ("max_channels", 1),
            ("hold", 0),
            ("sub_buffer_messages", 1),
            ("sub_buffer_bytes", 1),
            ("sub_stall", 0.05),
            ("grace", 0),
            ("gc_interval", 0),
            ("sub_sndbuf", 0),
            ("max_channels_total", 0),
            ("max_subscribers", 0),
            ("max_connections_per_address", 0),
            ("max_channels_per_address", 0),
            ("push_rate", 0),
            ("push_burst", 1),
            ("max_retained_bytes", 0),
            ("lease", 0.3),
            ("presence_rate", 1),
            ("auth_timeout", 0.05),
            ("idempotency_ttl", 0),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{name} ({FIELDS[name][0]}): must be at least {low}")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format (MARTD_LOG_FORMAT): must be 'text' or 'json'")
        try:
            check_backend_url(self.backend)
        except ValueError as exc:
            raise ValueError(f"backend (MARTD_BACKEND): {exc}") from None

        if self.auth_url is not None:
            check_auth_url(self.auth_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``MARTD_*`` variables, then ``overrides`` (keyword form) on top."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (var, _) in FIELDS.items():
            raw = env.get(var)
            if raw is not None and raw.strip() != "":
                values[name] = _coerce(name, raw, var)
        for name, value in overrides.items():
            if name not in FIELDS:
                raise TypeError(f"unknown setting {name!r}")
            values[name] = _coerce(name, value, name)
        return cls(**values)


def _split(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part).strip() for part in value]


def check_auth_url(url: str) -> None:
    """A full http(s) URL, or a path (resolved against ``martd serve --upstream``)."""
    if url.startswith("/") and not url.startswith("//"):
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "auth_url (MARTD_AUTH_URL): must be an http:// or https:// URL, or a path"
            " starting with / on martd serve --upstream"
        )


def _coerce(name: str, value: Any, label: str) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(Settings)}[name]
    if name == "namespaces":
        return parse_namespaces(value, label)
    try:
        if name in ("allow", "trusted_proxies"):
            return tuple(ipaddress.ip_network(part, strict=False) for part in _split(value))
        if name in ("private", "cors_origins"):
            return tuple(_split(value))
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if name in ("secret", "token_secret", "auth_url") and value is not None:
            return str(value) or None
        return None if value is None else str(value)
    except ValueError:
        raise ValueError(f"{label}: invalid value for {name}") from None
