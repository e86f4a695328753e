"""A page that subscribes to "news", and a view that publishes on it; a login,
and an inbox page on the user's private channel, which martd lets only that
user read because the ``martd_auth`` view says so."""

import json

from asgiref.sync import sync_to_async
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.middleware.csrf import get_token
from django.utils.html import escape
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .push import martd_app, user_channel

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Django + martd</title>
<h1>News</h1>
<ul id="news"></ul>
<form id="form">
  <input type="hidden" name="csrfmiddlewaretoken" value="{token}">
  <input name="text" value="hello" autofocus> <button>Publish</button>
</form>
<script src="/martd/client.js"></script>
<script>
martd.sub("news", function (data) {{
  var item = document.createElement("li");
  item.textContent = JSON.parse(data).text;
  document.getElementById("news").appendChild(item);
}});
document.getElementById("form").onsubmit = function (event) {{
  event.preventDefault();
  fetch("/notify", {{method: "POST", body: new FormData(this)}});
}};
</script>
"""


async def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE.format(token=get_token(request)))


@require_POST
async def notify(request: HttpRequest) -> JsonResponse:
    """Publish the posted text on "news"; every open page shows it.

    In process, because martd runs in this same ASGI application. A view that
    runs under WSGI would publish over HTTP instead, with martd_asgi.Client.
    """
    text = request.POST.get("text", "")
    etag = await martd_app.publish("news", json.dumps({"text": text}), size=50)
    return JsonResponse({"channel": "news", "etag": etag})


# ------------------------------------------------------- a login and an inbox

LOGIN_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Log in</title>
<h1>Log in</h1>
<p id="errors">{errors}</p>
<form method="post" action="/login">
  <input type="hidden" name="csrfmiddlewaretoken" value="{token}">
  <input name="username" placeholder="user name" autofocus>
  <input name="password" type="password" placeholder="password">
  <button>Log in</button>
</form>
"""

INBOX_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Notes for {name}</title>
<h1>Notes for {name}</h1>
<p id="status"></p>
<ul id="notes"></ul>
<form id="form">
  <input type="hidden" name="csrfmiddlewaretoken" value="{token}">
  <input name="text" value="a note to myself"> <button>Send</button>
</form>
<script src="/martd/client.js"></script>
<script>
martd.on("error", function (detail) {{
  document.getElementById("status").textContent = detail.status + " " + detail.error;
}});
martd.sub({channel}, function (data) {{
  var item = document.createElement("li");
  item.textContent = JSON.parse(data).text;
  document.getElementById("notes").appendChild(item);
}});
document.getElementById("form").onsubmit = function (event) {{
  event.preventDefault();
  fetch("/note", {{method: "POST", body: new FormData(this)}});
}};
</script>
"""


def login_page(request: HttpRequest) -> HttpResponse:
    """Django's own session login: a session cookie is all the browser holds."""
    form = AuthenticationForm(request, data=request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        login(request, form.get_user())
        return HttpResponseRedirect("/inbox")
    errors = " ".join(escape(error) for error in form.non_field_errors())
    return HttpResponse(LOGIN_PAGE.format(token=get_token(request), errors=errors))


@login_required
def inbox(request: HttpRequest) -> HttpResponse:
    """Subscribes to the user's private channel, like any other channel."""
    channel = json.dumps(user_channel(request.user.pk))
    name = escape(request.user.get_username())
    return HttpResponse(INBOX_PAGE.format(token=get_token(request), name=name, channel=channel))


@sync_to_async
def _user_id(request: HttpRequest) -> int | None:
    return request.user.pk if request.user.is_authenticated else None


@require_POST
async def note(request: HttpRequest) -> JsonResponse:
    """Publish the posted text on the user's own channel: only their pages show it."""
    user_id = await _user_id(request)
    if user_id is None:
        return JsonResponse({"error": "log in first"}, status=401)
    channel = user_channel(user_id)
    etag = await martd_app.publish(channel, json.dumps({"text": request.POST.get("text", "")}))
    return JsonResponse({"channel": channel, "etag": etag})


# martd calls this itself, server to server, with the browser's Cookie header; it
# changes nothing, so it needs no CSRF token (and martd has none to send).
@csrf_exempt
@require_POST
def martd_auth(request: HttpRequest) -> JsonResponse:
    """martd's auth hook (MARTD_AUTH_URL): who may listen to the private channels.

    A logged-in user may read their own channel; martd keeps the answer for
    ``ttl`` seconds per session and answers 403 for anyone else's channel. No
    session: 401, which martd passes on.
    """
    if not request.user.is_authenticated:
        return JsonResponse({"error": "log in first"}, status=401)
    return JsonResponse(
        {
            "subscribe": [user_channel(request.user.pk)],
            "publish": [],
            "user": request.user.get_username(),
            "ttl": 60,
        }
    )
