"""A page that subscribes to "news", and a view that publishes on it."""

import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.views.decorators.http import require_POST

from .push import martd_app

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
