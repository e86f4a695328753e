"""The site's one martd app: served under /martd/ by asgi.py, published to by views.

Each user has a private channel, ``user:<id>``: the ``user`` namespace makes
every such channel private, and martd asks this site who may listen (the
``martd_auth`` view, at ``MARTD_AUTH_URL``) with the visitor's own session
cookie. Nobody mints a token.
"""

import json
import os

from martd_asgi import create_app

# MARTD_* variables win; these are the example's defaults.
os.environ.setdefault("MARTD_AUTH_URL", "http://127.0.0.1:8000/martd-auth")
os.environ.setdefault("MARTD_NAMESPACES", json.dumps({"user": {"private": True, "size": 50}}))

# The site publishes in process, so no address needs server rights. With the
# default allow-list (loopback) your own browser, on 127.0.0.1 in development,
# would be a server and read every channel, private ones included.
martd_app = create_app(**({} if os.environ.get("MARTD_ALLOW") else {"allow": ()}))


def user_channel(user_id: int) -> str:
    return f"user:{user_id}"
