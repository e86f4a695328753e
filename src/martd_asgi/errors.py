"""Errors as values: each condition is one small class with its HTTP status.

    MartdError                  .status, .message (and .body, the answer, in the client)
     ├── BadRequest        400  malformed input; the message names the field
     ├── Unauthorized      401  a grant is needed and none (or an invalid one) was given
     ├── Forbidden         403  not a server, wrong key, attribute change refused
     ├── NotFound          404  no such channel or path
     ├── MethodNotAllowed  405
     ├── Conflict          409  one2one channel held by another client
     ├── Gone              410  the channel was deleted
     ├── PayloadTooLarge   413
     ├── Unprocessable     422  an Idempotency-Key reused for a different push
     ├── TooManyRequests   429  rate or connection limit
     ├── Unavailable       503  the backend cannot be reached
     └── TransportError         (client only, ``status`` None) martd could not be reached

The HTTP layer turns any of them into ``{"error": message, ...extra}`` with
the status, in one place (``transports/common.py``). The Python client
(``client.py``) raises the same classes for martd's answers, so one
``except martd_asgi.BadRequest`` catches a refusal whether it came over HTTP or
from ``MartdApp.publish`` in process.

Starting a server (``martd_asgi.serve``) has errors of its own, not HTTP answers;
``martd serve`` turns them into one line on stderr:

    ServeError
     ├── SettingError      a setting martd cannot serve with; ``option`` names it
     └── StartError        the port is taken, no certificate, uvicorn did not start
"""

from __future__ import annotations

from typing import Any


class MartdError(Exception):
    """An error martd answers with ``status``; its ``message`` names the field at fault.

    The same classes are the Python client's (``martd_asgi.BadRequest`` is this
    module's): there ``status`` is the status martd answered and ``body`` its
    JSON answer. ``extra`` holds what the answer carries besides the message.
    """

    status: int | None = 500

    def __init__(
        self, message: str, *, status: int | None = None, body: Any = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra
        if status is not None:
            self.status = status
        self.body = body

    def as_json(self) -> dict[str, Any]:
        """The JSON answer: ``{"error": message, ...extra}``."""
        extra = {k: v for k, v in self.extra.items() if k not in _HEADERS}
        return {"error": self.message, **extra}

    def headers(self) -> list[tuple[bytes, bytes]]:
        """What travels as HTTP headers rather than in the body (Retry-After, Allow)."""
        return [
            (_HEADERS[name], str(value).encode())
            for name, value in self.extra.items()
            if name in _HEADERS
        ]


_HEADERS = {"retry_after": b"retry-after", "allow": b"allow"}


class MethodNotAllowed(MartdError):
    status = 405


class BadRequest(MartdError):
    status = 400


class Unauthorized(MartdError):
    status = 401


class Forbidden(MartdError):
    status = 403


class NotFound(MartdError):
    status = 404


class Conflict(MartdError):
    status = 409


class Gone(MartdError):
    status = 410


class PayloadTooLarge(MartdError):
    status = 413


class Unprocessable(MartdError):
    status = 422


class TooManyRequests(MartdError):
    status = 429


class Unavailable(MartdError):
    status = 503


class ServeError(Exception):
    """martd cannot serve as asked; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SettingError(ServeError, ValueError):
    """A setting martd cannot serve with.

    ``option`` is the ``serve()`` keyword at fault (``"port"``, ``"upstream"``), or
    None when the fault is in a combination of settings or in a ``MARTD_*`` variable.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class StartError(ServeError, RuntimeError):
    """martd could not start: the address is in use, the certificate cannot be made,
    or uvicorn stopped before it served (``logged``: uvicorn's log said why already)."""

    def __init__(self, message: str, logged: bool = False) -> None:
        super().__init__(message)
        self.logged = logged
