"""A plain Flask (WSGI) app that publishes to a separately run martd over HTTP.

A WSGI app cannot hold martd in process, so martd runs on its own and the
app pushes with martd_asgi.Client. Run both (from the repository root):

    .venv/bin/martd serve --upstream http://127.0.0.1:5000     # martd on :8000 at /martd, the rest to Flask
    .venv/bin/flask --app examples/wsgi_flask/app.py run        # Flask on :5000

then open http://127.0.0.1:8000/: the page comes from Flask through martd,
so /martd/client.js is on the page's own origin. Behind nginx, deploy/nginx.conf
does the same with `location /` pointed at Flask.

MARTD_URL is where this app reaches martd; with no server address in
MARTD_ALLOW, set MARTD_SECRET on both sides.
"""

from __future__ import annotations

import json
import os

from flask import Flask, request

from martd_asgi import Client

martd = Client(
    os.environ.get("MARTD_URL", "http://127.0.0.1:8000/martd"),
    secret=os.environ.get("MARTD_SECRET") or None,
)
app = Flask(__name__)

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Flask + martd</title>
<h1>News</h1>
<ul id="news"></ul>
<form id="form"><input name="text" value="hello" autofocus> <button>Publish</button></form>
<script src="/martd/client.js"></script>
<script>
martd.sub("news", function (data) {
  var item = document.createElement("li");
  item.textContent = JSON.parse(data).text;
  document.getElementById("news").appendChild(item);
});
document.getElementById("form").onsubmit = function (event) {
  event.preventDefault();
  fetch("notify", {method: "POST", body: new FormData(this)});
};
</script>
"""


@app.get("/")
def index() -> str:
    return PAGE


@app.post("/notify")
def notify() -> dict[str, str]:
    """Publish the posted text on "news"; every open page shows it."""
    text = request.form.get("text") or request.get_data(as_text=True)
    answer = martd.publish("news", json.dumps({"text": text}), size=50)
    return {"channel": "news", "etag": answer.etag}
