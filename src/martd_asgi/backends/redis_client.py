"""Reaching Redis: a redis-py client from martd's URL, and scripts run on it.

``connect`` reads the URL (``redis://``, ``rediss://``, ``unix://``, with
martd's own ``prefix=``, ``cluster=1``, ``sentinel=NAME`` options). ``Scripts``
runs the Lua scripts of ``redis_lua``: on a single Redis (or Sentinel's master)
the command is packed here and sent on the pipelined connection of
``redis_line`` (or a pooled one, without hiredis); on Cluster through redis-py,
which routes each by its slot. Either way, Redis being away or refusing comes
back as ``Unavailable`` (503), never silently.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc

from ..errors import Unavailable
from ..logs import redact
from . import YES, check_url
from .redis_line import AVAILABLE as LINE_AVAILABLE
from .redis_line import Line, pack

log = logging.getLogger("martd.redis")

# Errors that mean "Redis is not there right now": answered 503, retried later.
DOWN = (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, OSError)

POOL_SIZE = 64
POOL_WAIT = 5.0


def connect(url: str, options: dict[str, Any]) -> tuple[Any, str, list[Any]]:
    """A redis-py asyncio client for ``url``, the key prefix it asks for, and
    the further clients to close with it (Sentinel's)."""
    try:
        check_url(url)
        return _connect(url, options)
    except ValueError as exc:  # ours, or redis-py's (a port that is not a number, ...)
        message = str(exc)
        if not message.startswith("backend:"):
            message = f"backend: {message}"
        raise ValueError(message) from None


def _connect(url: str, options: dict[str, Any]) -> tuple[Any, str, list[Any]]:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    prefix = query.pop("prefix", "martd")
    cluster = query.pop("cluster", "").lower() in YES
    master = query.pop("sentinel", None)
    more = [h for h in query.pop("sentinels", "").split(",") if h]
    plain = urlunsplit(parts._replace(query=urlencode(query)))
    if parts.scheme == "unix" and not parts.netloc:
        plain = "unix://" + plain.removeprefix("unix:")  # urlunsplit drops the empty host
    options = {"decode_responses": True, **options}
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        if not hasattr(RedisCluster, "pubsub"):
            raise ValueError(
                "backend: Redis Cluster needs redis-py 8 or later (pip install -U redis)"
            )
        return RedisCluster.from_url(plain, **options), prefix, []
    if master:
        from redis.asyncio.sentinel import Sentinel

        hosts = [(parts.hostname or "127.0.0.1", parts.port or 26379)]
        hosts += [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in more]
        auth = {"username": parts.username, "password": parts.password}
        tls: dict[str, Any] = {"ssl": True} if parts.scheme == "rediss" else {}
        timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")}
        sentinel = Sentinel(hosts, sentinel_kwargs={**timeouts, **tls}, **tls)  # type: ignore[no-untyped-call,unused-ignore]
        db = int(parts.path.strip("/") or 0)
        client = sentinel.master_for(master, **{"db": db, **auth, **options})
        return client, prefix, list(sentinel.sentinels)
    # A burst of subscribers waits for a pooled connection instead of failing
    # (redis-py's default pool raises once its connections are all in use).
    pool = aioredis.BlockingConnectionPool.from_url(
        plain, max_connections=POOL_SIZE, timeout=POOL_WAIT, **options
    )
    return aioredis.Redis.from_pool(pool), prefix, []  # closes the pool with the client


class Scripts:
    """Runs registered scripts (``client.register_script``) on ``client``."""

    def __init__(self, client: Any, *, cluster: bool, timeout: float) -> None:
        self.client = client
        self.cluster = cluster
        # Scripts on one pipelined connection (a single Redis or Sentinel's master;
        # Cluster routes each by its slot through redis-py).
        pipelined = LINE_AVAILABLE and not cluster
        self.line = Line(client.connection_pool, timeout) if pipelined else None

    async def __call__(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            if self.cluster:
                return await script(keys=keys, args=args)
            return await self._evalsha(script, keys, args)
        except DOWN as exc:
            raise Unavailable("backend: Redis cannot be reached; try again", retry_after=1) from exc
        except rexc.ResponseError as exc:
            # WRONGTYPE, OOM, a failing script: Redis answered, but cannot do it now.
            log.warning("redis refused a script on %s: %s", keys[0], brief(exc))
            raise Unavailable(
                "backend: Redis refused the operation; try again", retry_after=1
            ) from exc

    async def _evalsha(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """A script on a pooled connection of a single Redis (or Sentinel's master):
        the command packed here, sent and answered on the connection, without
        the client's layers around each command (a third of a push's CPU).
        With hiredis, on the pipelined connection of ``redis_line``."""
        packed = pack("EVALSHA", script.sha, len(keys), *keys, *args)
        line = self.line
        if line is not None:
            for attempt in (1, 2):
                try:
                    return await line.call(packed)
                except rexc.NoScriptError:
                    # Not run: Redis restarted (or its scripts were flushed). Load it, again.
                    if attempt == 2:
                        raise
                await self.client.script_load(script.script)
        pool = self.client.connection_pool
        for attempt in (1, 2):
            conn = await pool.get_connection(*_NAMED)
            try:
                await conn.send_packed_command(packed)
                return await conn.read_response()
            except rexc.NoScriptError:
                # Not run: Redis restarted (or its scripts were flushed). Load it, again.
                if attempt == 2:
                    raise
            except rexc.ResponseError:
                raise
            except BaseException:
                # A reply may still be on its way: the connection cannot be reused.
                await conn.disconnect()
                raise
            finally:
                await pool.release(conn)
            await self.client.script_load(script.script)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self.line is not None:
            await self.line.aclose()


def brief(exc: BaseException) -> str:
    """An error for a log line: its kind and first line, without secrets."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return redact(f"{type(exc).__name__}: {text}")


def _named() -> tuple[str, ...]:
    """What a connection pool's get_connection() needs: redis-py before 5.3 a command's
    name (any), since then nothing (and a name is deprecated)."""
    param = inspect.signature(aioredis.ConnectionPool.get_connection).parameters.get("command_name")
    return ("EVALSHA",) if param is not None and param.default is param.empty else ()


_NAMED = _named()
