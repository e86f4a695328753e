"""The site's auth hook (``MARTD_AUTH_URL``): the site says who may listen.

A subscription to a private channel that carries no valid token makes martd
``POST`` the subscriber's ``Cookie`` and ``Authorization`` headers to the hook
with ``{"channels": [...], "cid": ID}``. The site answers ``200`` with grants
(``{"subscribe": [...], "publish": [...], "user": U, "ttl": S}``, the same
patterns as a token's) or ``401`` / ``403``, which martd passes on. Anything
else (no answer within ``MARTD_AUTH_TIMEOUT``, a refused connection, a ``5xx``,
a redirect, a body that is not such an object) is ``503``: never access.

Answers are kept per credentials, under a keyed digest of the two headers
(never the values), for the ``ttl`` the site gave (60 s by default, at most an
hour), in a bounded LRU. A refusal is kept for a few seconds for the channels
it was about, so a crowd of anonymous visitors costs the site one call each
few seconds. Identical asks in flight at once share one request.

Cookies are not passed on for a request that the browser marks cross-site
(see ``auth.cross_site``): another site's page must not listen with a
visitor's session, which a WebSocket (no CORS) would otherwise allow.

Errors::

    Unauthorized (401)   the site answered 401
    Forbidden    (403)   the site answered 403, or its grants leave a channel out
    Unavailable  (503)   the hook failed; the message says how, never with credentials
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from .auth import cross_site
from .errors import Forbidden, MartdError, Unauthorized, Unavailable
from .tokens import Grants, User, patterns

if TYPE_CHECKING:
    from .auth import Authority
    from .config import Settings

log = logging.getLogger("martd")

DEFAULT_TTL = 60.0
MAX_TTL = 3600.0
REFUSAL_TTL = 5.0
MAX_ANSWER = 64 * 1024
CACHE_SIZE = 10_000


class _Abandoned(Exception):
    """The request that others waited on was cancelled: one of them asks again."""


Answer = Grants | MartdError


class AuthHook:
    """Asks the site, through one HTTP client shared by the whole app."""

    def __init__(self, url: str, *, timeout: float = 5.0, cache_size: int = CACHE_SIZE) -> None:
        self.url = url
        url_parts = httpx.URL(url)
        self.shown = str(url_parts.copy_with(username=None, password=None, query=None))
        self.timeout = timeout
        self.cache_size = cache_size
        self._client: httpx.AsyncClient | None = None
        self._key = secrets.token_bytes(32)  # digests mean nothing outside this process
        self._grants: OrderedDict[bytes, tuple[float, Grants]] = OrderedDict()
        self._refusals: OrderedDict[tuple[bytes, tuple[str, ...]], tuple[float, MartdError]] = (
            OrderedDict()
        )
        self._pending: dict[tuple[bytes, tuple[str, ...]], asyncio.Future[Answer]] = {}
        self.counters = {"asked": 0, "cached": 0, "joined": 0, "granted": 0, "refused": 0}
        self.failed = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthHook | None:
        """The hook ``MARTD_AUTH_URL`` names, if any; a bare path is an error here."""
        url = settings.auth_url
        if url is None:
            return None
        if url.startswith("/"):
            raise ValueError(
                f"auth_url (MARTD_AUTH_URL): {url[:100]!r} is a path, which only martd serve"
                " --upstream can resolve; give a full http:// or https:// URL"
            )
        return cls(url, timeout=settings.auth_timeout)

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                follow_redirects=False,
                trust_env=False,  # no proxy from the environment between martd and its site
                headers={"user-agent": "martd-auth-hook", "accept": "application/json"},
            )

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        self._grants.clear()
        self._refusals.clear()

    # ------------------------------------------------------------------ asking

    def digest(self, cookie: str, authorization: str) -> bytes:
        h = hashlib.blake2b(key=self._key, digest_size=20)
        for part in (cookie, authorization):
            raw = part.encode("latin-1", "replace")
            h.update(len(raw).to_bytes(4, "big"))
            h.update(raw)
        return h.digest()

    async def grants(
        self, cookie: str, authorization: str, channels: Sequence[str], cid: str | None
    ) -> Grants:
        """The site's grants for these credentials; raises the site's refusal or 503."""
        key = self.digest(cookie, authorization)
        ask_key = (key, tuple(channels))
        while True:
            now = time.monotonic()
            known = self._cached(key, ask_key, now)
            if known is not None:
                self.counters["cached"] += 1
                return _result(known)
            pending = self._pending.get(ask_key)
            if pending is not None:
                self.counters["joined"] += 1
                try:
                    return _result(await asyncio.shield(pending))
                except _Abandoned:
                    continue
            return await self._lead(key, ask_key, cookie, authorization, channels, cid)

    def _cached(
        self, key: bytes, ask_key: tuple[bytes, tuple[str, ...]], now: float
    ) -> Answer | None:
        found = self._grants.get(key)
        if found is not None:
            if found[0] > now:
                self._grants.move_to_end(key)
                return found[1]
            del self._grants[key]
        refused = self._refusals.get(ask_key)
        if refused is not None:
            if refused[0] > now:
                return refused[1]
            del self._refusals[ask_key]
        return None

    async def _lead(
        self,
        key: bytes,
        ask_key: tuple[bytes, tuple[str, ...]],
        cookie: str,
        authorization: str,
        channels: Sequence[str],
        cid: str | None,
    ) -> Grants:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self._pending[ask_key] = future
        try:
            answer, ttl = await self._ask(cookie, authorization, channels, cid)
        except BaseException:
            future.set_exception(_Abandoned())
            raise
        finally:
            del self._pending[ask_key]
        if ttl > 0:
            until = time.monotonic() + ttl
            if isinstance(answer, Grants):
                self._remember(self._grants, key, (until, answer))
            elif not isinstance(answer, Unavailable):
                self._remember(self._refusals, ask_key, (until, answer))
        future.set_result(answer)
        return _result(answer)

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    async def _ask(
        self, cookie: str, authorization: str, channels: Sequence[str], cid: str | None
    ) -> tuple[Answer, float]:
        """One request to the site: its answer, and for how long to keep it."""
        self.start()
        assert self._client is not None
        headers = {}
        if cookie:
            headers["cookie"] = cookie
        if authorization:
            headers["authorization"] = authorization
        self.counters["asked"] += 1
        try:
            with anyio.fail_after(self.timeout):
                async with self._client.stream(
                    "POST",
                    self.url,
                    json={"channels": list(channels), "cid": cid},
                    headers=headers,
                ) as response:
                    status = response.status_code
                    body = await _read(response) if status == 200 else b""
        except TimeoutError:
            return self._failure(f"no answer within {self.timeout:g} s"), 0
        except httpx.ConnectError:
            return self._failure("cannot be reached"), 0
        except httpx.HTTPError as exc:
            return self._failure(f"the connection failed ({type(exc).__name__})"), 0
        except _TooLarge:
            return self._failure(f"answered more than {MAX_ANSWER} bytes"), 0
        if status == 401:
            self.counters["refused"] += 1
            return Unauthorized("auth: the site answered 401: log in first"), REFUSAL_TTL
        if status == 403:
            self.counters["refused"] += 1
            return Forbidden("auth: the site answered 403: not allowed"), REFUSAL_TTL
        if status != 200:
            return self._failure(f"answered {status}"), 0
        try:
            grants, ttl = parse_answer(body)
        except ValueError as exc:
            return self._failure(f"malformed answer ({exc})"), 0
        self.counters["granted"] += 1
        return grants, ttl

    def _failure(self, how: str) -> Unavailable:
        self.failed += 1
        log.warning("auth hook %s %s", self.shown, how)
        return Unavailable(
            f"auth: the site's auth hook {how}; no access until it answers", retry_after=2
        )


class _TooLarge(Exception):
    pass


async def _read(response: httpx.Response) -> bytes:
    chunks = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > MAX_ANSWER:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _retrieved(future: asyncio.Future[Answer]) -> None:
    # A failed ask that nobody else waited on is not an "unretrieved exception".
    if not future.cancelled():
        future.exception()


def _result(answer: Answer) -> Grants:
    if isinstance(answer, MartdError):
        raise type(answer)(answer.message, **answer.extra)
    return answer


def parse_answer(body: bytes) -> tuple[Grants, float]:
    """The grants and ttl of a ``200`` answer; ``ValueError`` naming what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    lists = {}
    for field in ("subscribe", "publish"):
        value = data.get(field, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{field} must be a list of channel patterns")
        try:
            lists[field] = patterns(value)
        except ValueError:
            raise ValueError(f"{field} lists something that is not a channel pattern") from None
    user: User = data.get("user")
    if user is not None and (isinstance(user, bool) or not isinstance(user, str | int)):
        raise ValueError("user must be a string, a number or null")
    ttl = data.get("ttl", DEFAULT_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise ValueError("ttl must be a number of seconds")
    if ttl < 0:
        raise ValueError("ttl must not be negative")
    return Grants(lists["publish"], lists["subscribe"], None, user), min(float(ttl), MAX_TTL)


def credentials(
    scope: Mapping[str, Any], headers: Mapping[str, str], *, cookies: bool
) -> tuple[str, str]:
    """The ``Cookie`` (unless ``cookies`` is false) and ``Authorization`` to pass on.

    Several ``Cookie`` headers (HTTP/2 splits them) are joined with ``; ``.
    """
    cookie = ""
    if cookies:
        found = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"cookie"]
        cookie = "; ".join(found)
    return cookie, headers.get("authorization", "")


async def check_subscribe(
    authority: Authority,
    hook: AuthHook | None,
    scope: Mapping[str, Any],
    headers: Mapping[str, str],
    query: Mapping[str, str],
    channels: Sequence[str],
    cid: str | None,
) -> Grants | None:
    """Tokens first; without a valid one, the hook (when there is one) decides.

    Returns the grants that admitted the private channels (their ``user`` is who
    subscribes), ``None`` when none is private or the request is a server.
    """
    try:
        return authority.check_subscribe(scope, headers, query, channels)
    except Unauthorized:
        if hook is None:
            raise
    private = [channel for channel in channels if authority.is_private(channel)]
    cookies = not cross_site(headers, authority.cookie_origins)
    cookie, authorization = credentials(scope, headers, cookies=cookies)
    try:
        found = await hook.grants(cookie, authorization, private, cid)
    except (Unauthorized, Forbidden) as refused:
        refused.extra.setdefault("channel", private[0])
        raise
    for channel in private:
        if not found.may_subscribe(channel):
            raise Forbidden(
                f"auth: the site does not grant subscribe on {channel!r}", channel=channel
            )
    return found


async def may_publish(
    authority: Authority,
    hook: AuthHook,
    scope: Mapping[str, Any],
    headers: Mapping[str, str],
    channel: str,
    cid: str | None,
) -> bool:
    """Whether the site grants this request ``publish`` on ``channel``.

    Asked only for a request that carries credentials (a browser's push); raises
    the hook's refusal or failure.
    """
    cookies = not cross_site(headers, authority.cookie_origins)
    cookie, authorization = credentials(scope, headers, cookies=cookies)
    if not cookie and not authorization:
        return False
    return (await hook.grants(cookie, authorization, [channel], cid)).may_publish(channel)


__all__ = ["AuthHook", "check_subscribe", "credentials", "may_publish", "parse_answer"]
