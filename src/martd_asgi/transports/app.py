"""What the transports use of the application: ``App``, a narrow view of ``MartdApp``.

The endpoints under ``transports/`` take the app as their first argument. This
says which of its parts they reach (read, never replace), so that a reader and
mypy can tell what a transport depends on without reading ``application.py``.
``MartdApp`` is the one implementation; ``signals.Closing`` and
``metrics.Observed`` do the same for their modules.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..auth import Authority
    from ..authhook import AuthHook
    from ..backends.base import Backend
    from ..config import Settings
    from ..errors import MartdError
    from ..hub import Hub
    from ..limits import Limits
    from ..types import Send
    from .common import Request


class Refusals(Protocol):
    def refused(self, error: MartdError) -> None:
        """Count a refusal answered outside ``App.refuse`` (a WebSocket frame's)."""


class App(Protocol):
    @property
    def settings(self) -> Settings: ...
    @property
    def authority(self) -> Authority: ...
    @property
    def hook(self) -> AuthHook | None: ...
    @property
    def backend(self) -> Backend: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def log(self) -> logging.Logger: ...
    @property
    def counters(self) -> dict[str, int]:
        """``published`` and ``published_bytes``, bumped by every push."""

    @property
    def metrics(self) -> Refusals: ...
    @property
    def closing(self) -> bool:
        """True once shutdown began: new subscriptions are refused."""

    async def refuse(self, request: Request, send: Send, error: MartdError) -> None:
        """Answer ``error`` on whatever transport ``request`` came by, and count it."""

    def require_server(self, request: Request, channel: str | None = None) -> None:
        """Raise ``Forbidden`` unless the requester is a server (for ``channel``)."""
