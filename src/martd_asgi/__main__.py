"""``python -m martd_asgi``: the ``martd`` command."""

from .cli import main

main()
