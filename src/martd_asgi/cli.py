"""The ``martd`` command: ``serve``, ``pub``, ``sub`` and ``token``.

``martd serve`` maps 1:1 onto ``martd_asgi.serve.serve(**kwargs)``, which builds a
uvicorn ``Config`` (``build_config``) and runs it; every option is also a ``MARTD_*``
environment variable. Errors end the command with one line on stderr and a
non-zero status (2 for bad usage, 1 otherwise, 130 for Ctrl-C), never a traceback.
``pub``, ``sub`` and ``token`` are in ``cli_client.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from .cli_client import Failure, pub_command, sub_command, token_command
from .serve import LOG_LEVELS, build_app, build_config, serve

__all__ = ["build_app", "build_config", "cli", "main", "serve"]


# ------------------------------------------------------------------ serve


def _serve(**options: Any) -> None:
    """``serve(**options)``, its errors as the command's: bad usage (2) or one line (1)."""
    from .errors import SettingError, StartError

    try:
        serve(**options)
    except SettingError as exc:
        if exc.option:
            hint = "--" + exc.option.replace("_", "-")
            raise click.BadParameter(exc.message, param_hint=hint) from None
        raise click.UsageError(exc.message) from None
    except StartError as exc:
        if exc.logged:  # uvicorn said why
            raise click.exceptions.Exit(1) from None
        raise Failure(exc.message) from None


class _Port(click.ParamType):  # type: ignore[type-arg,unused-ignore]  # generic from click 8.3
    name = "port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            port = int(value)
        except (TypeError, ValueError):
            port = -1
        if not 0 <= port <= 65535:
            self.fail(f"{value!r} is not a port number (0 to 65535)", param, ctx)
        return port


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="martd_asgi", prog_name="martd")
def cli() -> None:
    """martd: a push server for the web.

    \b
      martd serve                      serve martd at http://127.0.0.1:8000/martd/
      martd serve --upstream URL       ... and send every other path to your site
      martd pub CHANNEL DATA           push a message
      martd sub CHANNEL                print messages as they arrive
      martd token --publish 'user.*'   mint a signed token
    """


@cli.command("serve")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="MARTD_HOST",
    help="Address to listen on (0.0.0.0 for every interface). [env MARTD_HOST]",
)
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=_Port(),
    envvar="MARTD_PORT",
    help="Port to listen on. [env MARTD_PORT]",
)
@click.option(
    "--upstream",
    metavar="URL",
    envvar="MARTD_UPSTREAM",
    help="Your site (e.g. http://127.0.0.1:3000): every request outside --prefix, "
    "WebSockets included, is proxied there, streamed both ways. Without it, / "
    "redirects to the demo page. [env MARTD_UPSTREAM]",
)
@click.option(
    "--prefix",
    default="/martd",
    show_default=True,
    envvar="MARTD_PREFIX",
    help="Path where martd answers (/pub, /sub, /client.js, ... below it). [env MARTD_PREFIX]",
)
@click.option(
    "--backend",
    metavar="URL",
    envvar="MARTD_BACKEND",
    help="'memory' (default) or a redis:// / rediss:// / unix:// URL; needed for --workers "
    "above 1. [env MARTD_BACKEND]",
)
@click.option(
    "--ssl",
    is_flag=True,
    envvar="MARTD_SSL",
    help="Serve HTTPS with a self-signed development certificate for localhost, "
    "made once and kept in your cache directory; prints how to trust it. "
    "[env MARTD_SSL]",
)
@click.option(
    "--certfile",
    type=click.Path(exists=True, dir_okay=False),
    envvar="MARTD_CERTFILE",
    help="Serve HTTPS with this certificate (chain) file. [env MARTD_CERTFILE]",
)
@click.option(
    "--keyfile",
    type=click.Path(exists=True, dir_okay=False),
    envvar="MARTD_KEYFILE",
    help="The private key of --certfile. [env MARTD_KEYFILE]",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=int,
    envvar="MARTD_WORKERS",
    help="Processes; above 1 needs --backend redis://... [env MARTD_WORKERS]",
)
@click.option(
    "--upstream-timeout",
    default=30.0,
    show_default=True,
    type=float,
    envvar="MARTD_UPSTREAM_TIMEOUT",
    help="Seconds to wait for the upstream's answer to begin (then 504). "
    "[env MARTD_UPSTREAM_TIMEOUT]",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    envvar="MARTD_LOG_LEVEL",
    help="[env MARTD_LOG_LEVEL]",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    envvar="MARTD_ACCESS_LOG",
    help="Log every request (secrets redacted). [env MARTD_ACCESS_LOG]",
)
def serve_command(**kwargs: Any) -> None:
    """Serve martd, and proxy everything else to your site.

    The other settings (MARTD_ALLOW, MARTD_SECRET, MARTD_PRIVATE, MARTD_CORS_ORIGINS,
    MARTD_POLL_TIMEOUT, ...) are read from the environment, as for `uvicorn martd_asgi:app`.
    """
    kwargs["log_level"] = kwargs["log_level"].lower()
    _serve(**kwargs)


cli.add_command(pub_command)
cli.add_command(sub_command)
cli.add_command(token_command)


# ------------------------------------------------------------------ entry


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``martd`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # Bare `martd` is someone finding their way: the help, not an error.
        result = cli.main(args=args or ["--help"], prog_name="martd", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "martd"
        click.echo(f"{where}: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"martd: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (`martd sub ... | head -1`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as exc:
        click.echo(f"martd: unexpected error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
