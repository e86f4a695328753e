"""The ASGI shapes every module speaks, named once (as Starlette's ``types``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]  # one ASGI event, received or sent
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Why the server ends a subscription: the process stops, a one-shot request
# reached its deadline, or the subscriber could not keep up (it resumes by etag).
CloseReason = Literal["shutdown", "timeout", "slow"]
